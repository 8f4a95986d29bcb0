"""Sharded sweeps over two processes of this machine (torch.distributed's elastic launcher and
gloo) against the same sweep in one process; a worker killed mid-run."""

import os
import signal
import threading
import time

import psutil
import pytest
import torch

from circuits.tasks import ioi_task
from interp import load_model
from interp.distributed import WorkerFailed, run_sharded
from interp.patching import patch
from interp.patching.edges import eap, edge_patch


@pytest.fixture(scope="module")
def ioi():
    model = load_model("zoo/ioi-small", device="cpu")
    return model, ioi_task(model, n=6, split="test", seed=7)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_patching_sweep_over_two_processes_equals_one_process(ioi, one_thread):
    model, task = ioi
    options = dict(component="z", per_position=True, normalize=False, memory_budget=5_000_000)
    single = patch(model, task, progress=False, **options)
    sharded = run_sharded("patch", "zoo/ioi-small", task, world_size=2, threads=1, **options)
    assert torch.equal(sharded.values, single.values)


def test_edge_patching_and_eap_over_two_processes_equal_one_process(ioi, one_thread):
    model, task = ioi
    _, single, _, _ = edge_patch(model, task, progress=False, memory_budget=5_000_000)
    _, sharded, _, _ = run_sharded("edge_patch", "zoo/ioi-small", task, world_size=2, threads=1, memory_budget=5_000_000)
    assert torch.equal(torch.isnan(sharded), torch.isnan(single))
    assert torch.equal(sharded.nan_to_num(), single.nan_to_num())
    _, single_eap, m_clean, _ = eap(model, task)
    _, sharded_eap, sharded_clean, _ = run_sharded("eap", "zoo/ioi-small", task, world_size=2, threads=1)
    keep = ~torch.isnan(single_eap)
    assert torch.allclose(sharded_eap[keep], single_eap[keep], atol=1e-5 * float(single_eap[keep].abs().max()))
    assert sharded_clean == pytest.approx(m_clean, abs=1e-5)


def test_a_worker_killed_mid_run_stops_the_run_with_its_name(ioi):
    _, task = ioi
    outcome = {}

    def run():
        try:
            run_sharded("edge_patch", "zoo/ioi-small", task, world_size=2, threads=1, memory_budget=2_500_000)
        except Exception as err:  # noqa: BLE001 - the test inspects whatever comes out
            outcome["error"] = err
        else:
            outcome["error"] = None

    thread = threading.Thread(target=run)
    thread.start()
    me = psutil.Process()
    deadline = time.time() + 120
    victims = []
    while time.time() < deadline and not victims:
        workers = [p for p in me.children(recursive=True) if "python" in p.name() and p.cmdline().count("-c")
                   and any("spawn" in part for part in p.cmdline())]
        if len(workers) >= 2:
            time.sleep(3)  # let them load the model and start their shares
            victims = workers[-1:]
        time.sleep(0.2)
    assert victims, "the workers never started"
    os.kill(victims[0].pid, signal.SIGKILL)
    thread.join(timeout=120)
    error = outcome.get("error")
    assert isinstance(error, WorkerFailed), error
    assert "a worker failed (rank" in str(error) and "no partial result" in str(error)


def test_bad_sharded_arguments():
    with pytest.raises(ValueError, match="unknown job 'acdc'; sharded jobs: patch, edge_patch, eap"):
        run_sharded("acdc", "zoo/ioi-small", None)
    with pytest.raises(ValueError, match="world_size must be an int >= 1"):
        run_sharded("patch", "zoo/ioi-small", None, world_size=0)
