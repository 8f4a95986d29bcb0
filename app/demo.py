"""`headlab demo`: run every analysis on the embedded models into one runs folder, then
serve the dashboard over it. A step that fails is reported and the others still run.

The steps are ordinary `headlab` command lines, so the demo shows exactly what a user would
type; all of them together take a few minutes on two CPU cores.
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

TEXTS = ["The cat sat on the mat because it was tired.", "Paris is the capital and largest city of France."]

# (what it shows, headlab arguments without --out and --quiet)
STEPS: list[tuple[str, list[str]]] = [
    ("head detectors, induction model", ["heads", "zoo/induction-2l"]),
    ("head detectors, IOI model", ["heads", "zoo/ioi-small"]),
    ("head detectors, MiniLM", ["heads", "minilm"]),
    ("attention patterns and QK/OV, induction model", ["patterns", "zoo/induction-2l"]),
    ("attention patterns and QK/OV, IOI model",
     ["patterns", "zoo/ioi-small", "--text", "When Mary and John went to the store, John gave a drink to"]),
    ("attention patterns and QK/OV, MiniLM", ["patterns", "minilm", *[arg for text in TEXTS for arg in ("--text", text)]]),
    ("patching every head's output (IOI)", ["patch", "zoo/ioi-small", "--task", "ioi", "--component", "z", "--n", "16"]),
    ("patching the residual stream per position (IOI)",
     ["patch", "zoo/ioi-small", "--task", "ioi", "--component", "resid_pre", "--per-position", "--n", "16",
      "--template", "when-went"]),
    ("patching every head's output (induction)",
     ["patch", "zoo/induction-2l", "--task", "induction", "--component", "z", "--n", "16"]),
    ("MAPS relation scores", ["maps", "minilm", "--salient", "5.7", "2.1"]),
    ("MAPS copying scores, validated dynamically and by ablation (induction model)",
     ["maps", "zoo/induction-2l", "--vocab-copying", "--validate", "--template", "t5 t9 {}", "--causal", "4",
      "--causal-template", "t1 t2 {} t3 t4 t1 t2", "--n-random", "5"]),
    ("attention rollout", ["rollout", "minilm", *[arg for text in TEXTS for arg in ("--text", text)]]),
    ("attention flow", ["flow", "minilm", "--text", TEXTS[0]]),
    ("attention sinks, MiniLM", ["sinks", "minilm"]),
    ("attention sinks, IOI model", ["sinks", "zoo/ioi-small"]),
    ("head pruning (IOI)", ["prune", "zoo/ioi-small", "--task", "ioi", "--n", "32"]),
    ("head pruning (sentence pairs, MiniLM)", ["prune", "minilm", "--task", "sentence-pairs", "--orders", "once", "random"]),
]


def run_steps(out: str | Path, steps: list[tuple[str, list[str]]] = STEPS) -> list[tuple[str, str, float]]:
    """Run each step as `headlab ARGS --out OUT --quiet`; returns (step, "ok" or the error,
    seconds) per step. Never raises for a failing step."""
    from interp.cli import main

    report = []
    for what, args in steps:
        command = [*args, "--out", str(out), "--quiet"]
        print(f"==> headlab {' '.join(command)}", flush=True)
        start = time.perf_counter()
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                code = main(command)
            status = "ok" if code == 0 else f"exit status {code}"
        except SystemExit as stop:  # argparse's way out, e.g. for a command that does not exist
            status = f"exit status {stop.code}"
        except Exception as error:  # noqa: BLE001 - report it and go on with the next step
            status = f"{type(error).__name__}: {error}"
        seconds = time.perf_counter() - start
        if status != "ok":
            lines = [line.strip() for line in errors.getvalue().splitlines() if line.strip()]
            print("\n".join(lines[-5:]), flush=True)
            status += f" ({lines[-1]})" if lines else ""
        report.append((what, status, seconds))
    return report


def demo(out: str | Path = "runs", serve: bool = True, host: str = "127.0.0.1", port: int = 8050) -> int:
    """Run the demo steps into `out`, print a summary, then (with `serve`) serve the
    dashboard. Returns the number of failed steps."""
    start = time.perf_counter()
    report = run_steps(out)
    print(f"\ndemo: {len(report)} steps in {time.perf_counter() - start:.0f} s, results in {Path(out).resolve()}")
    for what, status, seconds in report:
        print(f"  {'ok  ' if status == 'ok' else 'FAIL'} {seconds:6.1f} s  {what}" + ("" if status == "ok" else f": {status}"))
    failed = sum(status != "ok" for _, status, _ in report)
    if serve:
        from app.server import serve as serve_dashboard

        serve_dashboard(out, host=host, port=port)
    return failed
