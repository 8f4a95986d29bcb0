"""Attention flow: headlab's sparse max-flow against the paper's networkx Edmonds–Karp.

    python benchmarks/flow.py                        # n = 32, 64, 128 (about 10 minutes on 2 cores)
    python benchmarks/flow.py --sizes 32 --nx-budget 30

Task: the flow from one output (the middle position after the last block) to every input
token, 12 layers, random attention (12 heads, softmax of 2 * N(0, 1) scores). Both solvers
get the same capacities Â in this process: headlab's `FlowGraph` (scipy's Dinic on
integer-scaled capacities, graph built once) and a networkx DiGraph with the float
capacities, one `maximum_flow_value(..., flow_func=edmonds_karp)` per input, as in the
paper's code. Both times include building the graph. networkx is slow: it runs inputs until
`--nx-budget` seconds are spent (at least one), and its time for all n inputs is extrapolated
linearly from those (the inputs are independent max-flows on one graph; they are taken in a
seeded random order, so a partial run is a fair sample); the table says how many it timed. Values are checked for agreement on every input both computed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.flow import FlowGraph  # noqa: E402
from analyses.rollout import residual_attention  # noqa: E402
from benchmarks.common import machine, markdown_table, timed  # noqa: E402


def random_a_hat(n_layers: int, n_heads: int, n: int, seed: int) -> np.ndarray:
    """Â `[layer, n, n]` of random attention."""
    gen = torch.Generator().manual_seed(seed)
    scores = 2 * torch.randn(n_layers, 1, n_heads, n, n, generator=gen, dtype=torch.float64)
    return residual_attention(torch.softmax(scores, dim=-1))[:, 0].numpy()


def headlab_flows(a_hat: np.ndarray, output: int) -> np.ndarray:
    return FlowGraph(a_hat).flows_from(len(a_hat) - 1, output)


def networkx_flows(a_hat: np.ndarray, output: int, inputs: np.ndarray, budget_s: float) -> tuple[np.ndarray, float]:
    """Flows to `inputs` in order until `budget_s` is spent (at least one input); returns the
    values computed and the time for all n inputs, extrapolated linearly from those timed."""
    import networkx as nx
    from networkx.algorithms.flow import edmonds_karp

    start = time.perf_counter()
    n_layers, n, _ = a_hat.shape
    graph = nx.DiGraph()
    for layer in range(1, n_layers + 1):
        for i in range(n):
            for j in range(n):
                graph.add_edge((layer, i), (layer - 1, j), capacity=float(a_hat[layer - 1, i, j]))
    build = time.perf_counter() - start
    flows = []
    while not flows or (len(flows) < n and time.perf_counter() - start < budget_s):
        target = (0, int(inputs[len(flows)]))
        flows.append(nx.maximum_flow_value(graph, (n_layers, output), target, flow_func=edmonds_karp))
    solve = time.perf_counter() - start - build
    return np.array(flows), build + solve * n / len(flows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--nx-budget", type=float, default=120.0, help="seconds of networkx solving per size")
    parser.add_argument("--repeats", type=int, default=3, help="headlab timings (the best is reported)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"machine: {machine()}")
    print(f"task: flow from one output to all n inputs, {args.layers} layers, random attention "
          f"({args.heads} heads), seed {args.seed}")
    rows = []
    for n in args.sizes:
        a_hat = random_a_hat(args.layers, args.heads, n, args.seed)
        output = n // 2
        times = []
        for _ in range(args.repeats):
            ours, seconds = timed(headlab_flows, a_hat, output)
            times.append(seconds)
        inputs = np.random.default_rng(args.seed).permutation(n)  # a fair sample when not all are timed
        reference, nx_seconds = networkx_flows(a_hat, output, inputs, args.nx_budget)
        mine = ours[inputs[: len(reference)]]
        error = np.max(np.abs(mine - reference) / reference)
        rows.append({"n": n, "headlab (s)": f"{min(times):.3f}", "networkx (s)": f"{nx_seconds:.1f}",
                     "networkx inputs timed": f"{len(reference)} of {n}",
                     "speed-up": f"{nx_seconds / min(times):.0f}x", "max rel. diff": f"{error:.1e}"})
        print(f"n={n}: headlab {min(times):.3f} s, networkx {nx_seconds:.1f} s "
              f"({len(reference)} of {n} inputs timed), {nx_seconds / min(times):.0f}x", flush=True)
    print()
    print(markdown_table(rows))
    if any(int(r["networkx inputs timed"].split()[0]) < r["n"] for r in rows):
        print("\nnetworkx times with fewer than n inputs timed are extrapolated linearly to all n inputs.")


if __name__ == "__main__":
    main()
