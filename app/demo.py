"""`headlab demo`: run the demo steps of every registered analysis on the embedded models into
one runs folder, then serve the dashboard over it. A step that fails is reported and the
others still run.

The steps are the registrations' `demo` lists (`app.registry`), run as ordinary `headlab`
command lines, so the demo shows exactly what a user would type; together they take a few
minutes on two CPU cores.
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

from app.registry import analyses


def demo_steps() -> list[tuple[str, list[str]]]:
    """(what it shows, headlab arguments without --out and --quiet) of every demo step."""
    return [(step.what, [*analysis.command, *step.args]) for analysis in analyses() for step in analysis.demo]


def run_steps(out: str | Path, steps: list[tuple[str, list[str]]] | None = None) -> list[tuple[str, str, float]]:
    """Run each step (default: `demo_steps()`) as `headlab ARGS --out OUT --quiet`; returns
    (step, "ok" or the error, seconds) per step. Never raises for a failing step."""
    from app.cli import main

    report = []
    for what, args in demo_steps() if steps is None else steps:
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
