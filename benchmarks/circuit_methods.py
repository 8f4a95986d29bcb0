"""Every circuit-discovery method on the embedded models whose circuits are known: CPR, CMD,
AUROC against the reference, and time.

    python benchmarks/circuit_methods.py                 # all methods, the three zoo models
    python benchmarks/circuit_methods.py --methods exact eap-ig

Models and tasks (the references are those of `tests/test_circuits_known.py`):
- zoo/constructed, its own task (16 prompts of 8 words): the card's reference edges;
- zoo/induction-2l, 16 repeated spans of 6 tokens: the card's mechanism (previous-token head
  → induction heads' keys, the copied token's value edges, induction heads → logits);
- zoo/ioi-small, 16 held-out IOI prompts: no edge-level reference (AUROC not defined), and the
  faithfulness of the top 10% of edges by |score| is reported instead.

CPR and CMD are MIB's, on MIB's edge fractions, computed with patching ablation; CPR ranks by
signed score and CMD by |score| (circuits.evaluation). Signs differ by method (see
circuits.discovery), so CPR is comparable only between methods of one sign convention. Time is
the scoring alone (`find_circuit`), not the evaluation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine  # noqa: E402
from circuits.discovery import METHODS, circuit_runner, evaluate, find_circuit  # noqa: E402
from circuits.evaluation import auroc  # noqa: E402
from circuits.graph import Graph  # noqa: E402
from circuits.tasks import TASKS, induction_task, ioi_task  # noqa: E402
from interp import load_model  # noqa: E402
from interp.zoo import get_embedded  # noqa: E402


def cases():
    """(model name, model, task, reference graph or None)."""
    constructed = load_model("zoo/constructed", device="cpu")
    yield ("zoo/constructed", constructed, TASKS["constructed"](constructed, n=16, n_words=8, seed=3),
           Graph.for_model(constructed).with_circuit(get_embedded("zoo/constructed").card()["reference"]["edges"]))
    induction = load_model("zoo/induction-2l", device="cpu")
    card = get_embedded("zoo/induction-2l").card()
    prev = "a{}.h{}".format(*card["previous_token_head"])
    heads = ["a{}.h{}".format(*h) for h in card["induction_heads"]]
    edges = [f"input->{prev}<v>"] + [f"{prev}->{h}<k>" for h in heads] + [f"input->{h}<v>" for h in heads] + \
            [f"{h}->logits" for h in heads]
    yield ("zoo/induction-2l", induction, induction_task(induction, n=16, span=6, seed=4),
           Graph.for_model(induction).with_circuit(edges))
    ioi = load_model("zoo/ioi-small", device="cpu")
    yield "zoo/ioi-small", ioi, ioi_task(ioi, n=16, split="test", seed=5), None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    print(f"machine: {machine()}")
    rows = []
    for name, model, task, reference in cases():
        runner = circuit_runner(model, task)
        for method in args.methods:
            start = time.perf_counter()
            graph = find_circuit(model, task, method, threshold=0.05 if name != "zoo/constructed" else 1e-3,
                                 progress=False)
            seconds = time.perf_counter() - start
            evaluation = evaluate(model, task, graph, runner=runner, method=method, n_resamples=0)
            row = {"model": name, "method": method, "CPR": f"{evaluation.cpr:.3f}", "CMD": f"{evaluation.cmd:.3f}",
                   "AUROC": "" if reference is None else f"{auroc(graph, reference):.3f}",
                   "f(top 10%, |score|)": "", "seconds": f"{seconds:.1f}"}
            if reference is None:
                curve = evaluation.absolute.to_frame()
                row["f(top 10%, |score|)"] = f"{curve.loc[curve['fraction'] <= 0.1, 'faithfulness'].max():.3f}"
            rows.append(row)
            print(row, flush=True)
    columns = list(rows[0])
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
