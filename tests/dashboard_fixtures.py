"""Fixtures of the dashboard tests (a pytest plugin: `pytest_plugins = ["tests.dashboard_fixtures"]`).

- `dashboard_runs`: a runs folder filled by the real analyses on the zoo models (heads,
  patching three ways, sinks, rollout, flow, MAPS with a name-copying relation, pruning),
  one bundle of stored per-head attention patterns with QK/OV norms, and three damaged
  copies: meta.json garbled, a listed file removed, a table's bytes zeroed (size kept).
- `dashboard_url`: `headlab dashboard RUNS --port 0` started as a subprocess; its URL.
- `browser`: Debian's chromium driven by Playwright (skips when it cannot be had).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INDUCTION_PROMPTS = ["t5 t9 t12 t3 t40 t5 t9 t12 t3", "t1 t2 t3 t4 t1 t2 t3"]
BROKEN = {"broken-meta": "meta.json", "broken-missing": "tables/scores.parquet", "broken-table": "tables/scores.parquet"}


def _analyses(runs: Path) -> None:
    from analyses.flow import attention_flow
    from analyses.head_patterns import head_patterns
    from analyses.heads import detect_heads
    from analyses.maps import maps_scores
    from analyses.pruning import pruning_curve
    from analyses.rollout import attention_rollout
    from analyses.sinks import sink_analysis
    from circuits.tasks import ioi_task
    from interp import load_model
    from interp.patching import patch
    from circuits.tasks.ioi_data import NAMES

    induction = load_model("zoo/induction-2l", device="cpu")
    ioi = load_model("zoo/ioi-small", device="cpu")
    detect_heads(induction, n_sequences=16, progress=False).save(runs)
    detect_heads(ioi, n_sequences=16, progress=False).save(runs)
    task = ioi_task(ioi, n=8, template="when-went")
    patch(ioi, task, "z", progress=False).save(runs)
    patch(ioi, task, "resid_pre", per_position=True, progress=False).save(runs)
    patch(ioi, task, "z", per_position=True, progress=False).save(runs)
    sink_analysis(ioi, task.clean_prompts).save(runs)
    attention_rollout(induction, INDUCTION_PROMPTS).save(runs)
    attention_flow(induction, INDUCTION_PROMPTS, progress=False).save(runs)
    maps_scores(ioi, {"name_copying": [(name, name) for name in NAMES]}, salient_heads=[(0, 2)],
                progress=False).save(runs)
    pruning_curve(ioi, task, step=0.25, n_random=2).save(runs)
    head_patterns(induction, INDUCTION_PROMPTS).save(runs, name="patterns-zoo_induction-2l")
    _circuit_and_sae(ioi, task, runs)
    _legacy(runs)


def _circuit_and_sae(ioi, task, runs: Path) -> None:
    """A circuit of the IOI task (EAP, with its faithfulness curve) and the feature tables of
    an (untrained, seeded) attention SAE on z(0) of zoo/ioi-small."""
    from analyses.sae import make_sae
    from analyses.sae.features import feature_tables
    from circuits.specs import CircuitConfig
    from interp.results.registry import run_analysis

    run_analysis("circuit", ioi, CircuitConfig(method="eap", top_n=40, n_resamples=20), task, progress=False).save(runs)
    width = ioi.cfg.n_heads * ioi.cfg.d_head
    sae = make_sae("topk", d_in=width, d_sae=48, k=4, seed=0)
    feature_tables(ioi, sae, task.clean_prompts, site="z(0)", n_top_contexts=4, progress=False).save(runs)


def _legacy(runs: Path) -> None:
    """A bundle of an analysis this version does not register, with a stored figure (as older
    versions wrote them): its page shows the stored figure and its table as they are."""
    import pandas as pd
    import plotly.graph_objects as go

    from interp.results import write_bundle

    frame = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "value": [0.1, 0.7, 0.4, 0.2]})
    figure = go.Figure(go.Bar(x=["L0H0", "L0H1", "L1H0", "L1H1"], y=frame["value"], name="legacy"))
    write_bundle(runs, {"analysis": "legacy-scan", "model": "zoo/ioi-small", "parameters": {}, "seed": None},
                 tables={"values": frame}, figures={"bars": figure}, name="legacy-scan-zoo_ioi-small")


def _damage(runs: Path) -> None:
    """Three broken copies of a heads bundle: garbled meta.json, a listed file deleted, and a
    table whose bytes are zeroed with its size kept (so only loading it fails)."""
    from interp.results import list_bundles

    source = next(e.path for e in list_bundles(runs) if e.ok and e.bundle.meta["analysis"] == "heads"
                  and e.bundle.meta["model"] == "zoo/ioi-small")
    for name, part in BROKEN.items():
        shutil.copytree(source, runs / name)
        target = runs / name / part
        if name == "broken-meta":
            target.write_text(target.read_text()[:40], encoding="utf-8")
        elif name == "broken-missing":
            target.unlink()
        else:
            target.write_bytes(b"\0" * target.stat().st_size)


@pytest.fixture(scope="session")
def dashboard_runs(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("dashboard") / "runs"
    _analyses(runs)
    _damage(runs)
    (runs.parent / "secret.txt").write_text("SECRET-OUTSIDE-RUNS\n")
    return runs


@contextlib.contextmanager
def serving(runs: Path):
    """(URL, process) of `headlab dashboard RUNS --port 0` over `runs`, a separate process (so
    that what it imports can be checked, and the tests' own imports do not count)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "dashboard", str(runs), "--port", "0"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=60)
    except queue.Empty:
        process.kill()
        pytest.fail("headlab dashboard printed no URL within 60 s")
    url = line.split(" at ", 1)[1].split()[0].rstrip("/")
    assert url.startswith("http://127.0.0.1:"), line
    try:
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def dashboard_server(dashboard_runs):
    with serving(dashboard_runs) as server:
        yield server


@pytest.fixture(scope="session")
def dashboard_url(dashboard_server) -> str:
    return dashboard_server[0]


def _chromium_available() -> str | None:
    """None when chromium is there (installed now with apt-get if we are root), else why not."""
    if Path(CHROMIUM).exists():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and cannot be installed (not root or no apt-get): `apt-get install chromium`"
    done = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        done = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, text=True)
    return None if Path(CHROMIUM).exists() else f"apt-get install chromium failed: {done.stderr[-500:]}"


@pytest.fixture(scope="session")
def browser():
    why = _chromium_available()
    if why:
        pytest.skip(why)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    yield tab
    context.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    folder = ROOT / "test-artifacts" / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
