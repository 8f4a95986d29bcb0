"""Scaling: a sharded sweep over 1 and 2 processes (and GPUs when there are), and the nnsight
backend's overhead against the TransformerLens backend on the same analysis.

    python benchmarks/scale.py                 # CPU: 1 and 2 processes of 1 thread each
    python benchmarks/scale.py --device cuda   # one process per GPU

Sweep: exact edge patching of every edge of zoo/ioi-small on its IOI task (and the patching
of every head's output per position), run by `interp.distributed.run_sharded`. Scaling
efficiency = t(1) / (n * t(n)). Each run's result is checked equal to the one-process run.
Process start-up (spawning, importing, loading the model) is part of every sharded time; it
is also reported alone (a sweep of one layer), so the sweep's own scaling can be read off.
Backend overhead: the same analysis (head detectors, then a batch of cached forward passes)
on `load_model(..., backend="lens")` and `backend="nnsight"`, same numbers checked.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from benchmarks.common import machine, markdown_table, timed  # noqa: E402
from interp import load_model  # noqa: E402
from interp.distributed import run_sharded  # noqa: E402


def sharding_rows(device: str, n_prompts: int) -> list[dict]:
    from circuits.tasks import ioi_task

    model = load_model("zoo/ioi-small", device="cpu")
    task = ioi_task(model, n=n_prompts, split="test", seed=0)
    counts = [1, 2] if device == "cpu" else sorted({1, torch.cuda.device_count()})
    rows = []
    for job, options in (("edge_patch", {"memory_budget": 64 << 20}),
                         ("patch", {"component": "z", "per_position": True, "normalize": False})):
        reference, base_s = None, None
        for n in counts:
            result, seconds = timed(run_sharded, job, "zoo/ioi-small", task, world_size=n, threads=1, **options)
            values = result[1] if job == "edge_patch" else result.values
            if reference is None:
                reference, base_s = values, seconds
            same = torch.equal(values.nan_to_num(), reference.nan_to_num())
            rows.append({"job": job, "processes": n, "seconds": round(seconds, 1),
                         "efficiency": round(base_s / (n * seconds), 2), "equal_to_1_process": same,
                         "load": round(os.getloadavg()[0], 1)})
            print(rows[-1], flush=True)
    start_up, seconds = timed(run_sharded, "patch", "zoo/ioi-small", task, world_size=2, threads=1,
                              component="z", layers=[0], normalize=False)
    rows.append({"job": "start-up (2 processes, one layer of patching)", "processes": 2, "seconds": round(seconds, 1),
                 "efficiency": "", "equal_to_1_process": "", "load": round(os.getloadavg()[0], 1)})
    return rows


def backend_rows(device: str) -> list[dict]:
    from analyses.heads import detect_heads

    rows = []
    tokens = torch.randint(3, 60, (16, 32), generator=torch.Generator().manual_seed(0))
    results = {}
    for backend in ("lens", "nnsight"):
        try:
            model = load_model("zoo/induction-2l", device=device, backend=backend)
        except ValueError as err:  # the backend is not available in this checkout
            print(f"{backend}: {err}")
            continue
        scores, detect_s = timed(detect_heads, model, progress=False)
        with torch.no_grad():
            _, forward_s = timed(lambda: [model.run_with_cache(tokens) for _ in range(5)])
        results[backend] = scores.to_frame()
        rows.append({"backend": backend, "head detectors (s)": round(detect_s, 2),
                     "5 cached forwards, 16 x 32 tokens (s)": round(forward_s, 2)})
        print(rows[-1], flush=True)
    if len(results) == 2:
        diff = float((results["lens"]["score"] - results["nnsight"]["score"]).abs().max())
        for row in rows:
            row["max |score diff|"] = diff
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=16)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    shard = sharding_rows(args.device, args.prompts)
    backends = backend_rows(args.device)
    print()
    print(markdown_table(shard))
    if backends:
        print()
        print(markdown_table(backends))


if __name__ == "__main__":
    main()
