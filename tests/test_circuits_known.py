"""Circuit discovery on models whose circuit is known: by construction (`zoo/constructed`,
hand-set weights with active distractors) and by training plus measurement (`zoo/induction-2l`,
`zoo/ioi-small`, from their cards)."""

import pytest
import torch

from circuits.discovery import METHODS, circuit_runner, evaluate, find_circuit
from circuits.evaluation import auroc
from circuits.graph import Graph
from circuits.tasks import TASKS, induction_task, ioi_task
from interp import load_model
from interp.zoo import get_embedded


@pytest.fixture(scope="module")
def constructed():
    model = load_model("zoo/constructed", device="cpu")
    task = TASKS["constructed"](model, n=16, n_words=8, seed=3)
    reference = Graph.for_model(model).with_circuit(get_embedded("zoo/constructed").card()["reference"]["edges"])
    return model, task, reference


@pytest.mark.parametrize("method", ["exact", "acdc"])
def test_exact_methods_recover_the_constructed_circuit_perfectly(constructed, method):
    model, task, reference = constructed
    graph = find_circuit(model, task, method, threshold=1e-3, progress=False)
    assert auroc(graph, reference) == 1.0
    if method == "acdc":  # its own selection is the reference, edge for edge
        assert torch.equal(graph.in_graph, reference.in_graph)


@pytest.fixture(scope="module")
def induction():
    model = load_model("zoo/induction-2l", device="cpu")
    card = get_embedded("zoo/induction-2l").card()
    prev = "a{}.h{}".format(*card["previous_token_head"])
    heads = ["a{}.h{}".format(*h) for h in card["induction_heads"]]
    # The card's mechanism, under this task's corruption (another first half): the previous-token
    # head reads the first-half token and writes it into the induction heads' keys; the induction
    # heads copy the token their values read to the logits. (The card names the key and logits
    # edges; the value edges carry the copied token, which the corruption also changes.)
    edges = [f"input->{prev}<v>"] + [f"{prev}->{h}<k>" for h in heads] + [f"input->{h}<v>" for h in heads] + \
            [f"{h}->logits" for h in heads]
    reference = Graph.for_model(model).with_circuit(edges)
    return model, induction_task(model, n=16, span=6, seed=4), reference


@pytest.mark.parametrize("method", METHODS)
def test_every_method_ranks_the_induction_circuit_first(induction, method):
    model, task, reference = induction
    graph = find_circuit(model, task, method, threshold=0.05, progress=False)
    if method == "sad":  # it scores q, k and logits edges only: rank those
        from sklearn.metrics import roc_auc_score

        scored = graph.exists & torch.tensor([r.endswith(("<q>", "<k>")) or r == "logits" for r in graph.receivers])
        score = roc_auc_score(reference.in_graph[scored].numpy(), graph.scores[scored].abs().numpy())
    else:
        score = auroc(graph, reference)
    print(f"zoo/induction-2l {method}: AUROC {score:.3f}")
    assert score >= 0.9, f"{method}: AUROC {score:.3f}"


def test_a_tenth_of_ioi_small_edges_keeps_most_of_the_behaviour():
    model = load_model("zoo/ioi-small", device="cpu")
    task = ioi_task(model, n=16, split="test", seed=5)
    graph = find_circuit(model, task, "eap-ig", steps=5, progress=False)
    runner = circuit_runner(model, task)
    evaluation = evaluate(model, task, graph, fractions=(0.02, 0.05, 0.1), runner=runner, method="eap-ig",
                          n_resamples=100)
    frame = evaluation.to_frame()
    print(frame)
    assert frame["faithfulness"].max() >= 0.8, "a circuit of at most 10% of edges keeps >= 80% of the logit difference"
