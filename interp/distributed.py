"""Sweeps sharded across processes, devices or machines with torch.distributed.

The engine's sweeps are lists of independent batched runs (patching variants, the edges into
one layer's receivers) or sums over prompts (EAP): each process computes every world_size-th
run, or its share of the prompts, and the shares are merged with an all-gather, so every
process ends with the whole result, the same numbers as one process computes (bitwise, when
each process uses as many threads as the single process did).

torch.distributed does the work a home-made pool would do badly: its elastic agent
(`torchrun`, or `elastic_launch` from Python) starts the workers, watches them, and when one
dies the run stops with an error that names the worker and how it died (or, with
`max_restarts`, starts the group again); rendezvous and the gloo/NCCL collectives work the
same on one machine and on several.

One machine, from Python (workers are spawned here, one per GPU when there are GPUs):

    from interp.distributed import run_sharded
    result = run_sharded("patch", "zoo/ioi-small", task, world_size=2, component="z", per_position=True)

Several machines: run the same script on each with torchrun, calling `sharded` inside:

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 my_sweep.py
    # my_sweep.py:  result = sharded("edge_patch", load_model(name, device=f"cuda:{local_rank}"), task)
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import torch
import torch.distributed as dist

from .models import HookedModel, load_model
from .patching.edges import eap, edge_patch
from .patching.result import PatchResult
from .patching.sweep import patch
from .patching.task import Task

JOBS = ("patch", "edge_patch", "eap")


class WorkerFailed(RuntimeError):
    """A worker of a sharded run died or raised; no partial result is returned."""


def sharded(job: str, model: HookedModel, task: Task, **options) -> Any:
    """This process's share of `job` ("patch", "edge_patch" or "eap") and the merged result,
    inside an initialised process group (torchrun sets it up; `run_sharded` does it here).
    Every process returns the whole result."""
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}; sharded jobs: {', '.join(JOBS)}")
    if not dist.is_initialized():
        raise RuntimeError("sharded() runs inside a torch.distributed process group: start it with torchrun "
                           "(or use run_sharded, which starts one)")
    rank, world = dist.get_rank(), dist.get_world_size()
    if job == "eap":
        return _merged_eap(model, task, rank, world)
    options = {"progress": rank == 0, **options}
    if job == "patch":
        share = patch(model, task, shard=(rank, world), **options)
        parts: list = [None] * world
        dist.all_gather_object(parts, share.values)
        return _merge(share, [p for p in parts])
    layout, scores, m_clean, m_corrupt = edge_patch(model, task, shard=(rank, world), **options)
    parts = [None] * world
    dist.all_gather_object(parts, scores)
    merged = _merged_values(parts)
    return layout, merged, m_clean, m_corrupt


def _merged_values(parts: list[torch.Tensor]) -> torch.Tensor:
    """One tensor from shares that each hold their own entries and NaN elsewhere (entries
    every share computes, such as skipped patches, agree)."""
    merged = parts[0].clone()
    for part in parts[1:]:
        mine = ~torch.isnan(part)
        merged[mine] = part[mine]
    return merged


def _merge(share: PatchResult, parts: list[torch.Tensor]) -> PatchResult:
    import dataclasses

    return dataclasses.replace(share, values=_merged_values(parts))


def _merged_eap(model: HookedModel, task: Task, rank: int, world: int):
    """EAP scores are means over prompts: each process scores a contiguous block of prompts,
    and the blocks' scores are averaged with their sizes as weights."""
    blocks = torch.arange(task.batch).tensor_split(world)
    rows = blocks[rank]
    if len(rows) == 0:
        raise ValueError(f"a sharded EAP needs at least one prompt per process: {task.batch} prompts, {world} processes")
    part = Task(task.clean[rows], task.corrupt[rows], task.answer[rows], task.wrong[rows], task.answer_pos[rows],
                metric=task.metric, name=task.name)
    layout, scores, m_clean, m_corrupt = eap(model, part)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, (len(rows), scores, m_clean, m_corrupt))
    total = sum(n for n, *_ in gathered)
    weighted = lambda i: sum(n * item[i] for n, *item in gathered) / total  # noqa: E731
    return layout, weighted(0), weighted(1), weighted(2)


def run_sharded(job: str, model: str, task: Task, world_size: int = 2, max_restarts: int = 0,
                dtype: torch.dtype | None = None, threads: int | None = None, **options) -> Any:
    """Run `job` on `world_size` processes of this machine (one per GPU when CUDA is there,
    else CPU processes) and return the merged result. `model` is an embedded name, a local
    folder or a hub name: each process loads its own copy. `threads` sets each process's torch
    threads (default: this machine's cores divided among the processes).

    A worker that dies or raises stops the run with `WorkerFailed` naming it (with
    `max_restarts` > 0 the group is started again first, up to that many times)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}; sharded jobs: {', '.join(JOBS)}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if torch.cuda.is_available() and world_size > torch.cuda.device_count():
        raise ValueError(f"world_size {world_size} exceeds the {torch.cuda.device_count()} GPUs of this machine")
    threads = threads or max(1, (os.cpu_count() or 1) // world_size)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=world_size, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{_free_port()}", max_restarts=max_restarts,
                          monitor_interval=0.2, start_method="spawn")
    try:
        results = elastic_launch(config, _worker)(job, model, task, dtype, threads, options)
    except ChildFailedError as err:
        failures = "; ".join(f"rank {rank}: {f.message or f'exit code {f.exitcode}'}"
                             for rank, f in sorted(err.failures.items()))
        raise WorkerFailed(f"the sharded {job} stopped: a worker failed ({failures}); no partial result is "
                           f"returned. Rerun it, or pass max_restarts to restart the workers") from err
    return results[0]


def _worker(job: str, model: str, task: Task, dtype, threads: int, options: dict):
    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = f"cuda:{local}" if cuda else "cpu"
        return sharded(job, load_model(model, device=device, dtype=dtype), task, **options)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
