"""circuits.evaluation on models whose answer is known by construction: an additive metric
(each edge adds a fixed amount, so faithfulness of any circuit is a sum written out by hand
or by a plain loop), a metric with interactions (a path counts only when all its edges are
kept), CPR/CMD against numpy's trapezoid rule and closed forms, AUROC against scikit-learn,
bootstrap intervals against a loop and by their coverage, and every refusal."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from circuits.evaluation import (
    MIB_FRACTIONS,
    CircuitEvaluation,
    FaithfulnessCurve,
    auroc,
    bootstrap,
    cmd,
    completeness,
    cpr,
    evaluate_circuit,
    faithfulness,
    faithfulness_curve,
)
from circuits.figures import faithfulness_figure
from circuits.graph import Graph
from interp.results import read_bundle
from tests.test_circuit_graph import pruned_by_networkx, random_graph, slow_top_n


class Additive:
    """m_p(mask) = base_p + Σ_{edges e in mask} weight_{p, e}; records every call."""

    def __init__(self, graph, weights, base):
        self.graph, self.weights, self.base = graph, weights, base  # [batch, S, R], [batch]
        self.calls = []

    def __call__(self, masks):
        assert masks.dtype == torch.bool and masks.shape[1:] == (self.graph.n_senders, self.graph.n_receivers)
        assert not (masks & ~self.graph.exists).any(), "a mask reached outside the edges"
        self.calls.append(masks.clone())
        return self.base[None, :] + torch.einsum("nsr,bsr->nb", masks.double(), self.weights)

    def metric(self, mask):
        """The same by a plain loop over kept edges, for one mask: [batch]."""
        total = self.base.clone()
        for s, r in mask.nonzero().tolist():
            total += self.weights[:, s, r]
        return total


def additive(graph, batch=6, seed=0, same_for_all_prompts=False):
    gen = torch.Generator().manual_seed(seed)
    shape = (1 if same_for_all_prompts else batch, graph.n_senders, graph.n_receivers)
    weights = torch.randn(shape, generator=gen, dtype=torch.float64).expand(batch, -1, -1) * graph.exists
    base = torch.randn(batch, generator=gen, dtype=torch.float64) * 3
    return Additive(graph, weights.contiguous(), base)


def slow_faithfulness(model, mask):
    full, empty = model.metric(model.graph.exists).mean(), model.metric(torch.zeros_like(mask)).mean()
    return ((model.metric(mask).mean() - empty) / (full - empty)).item()


# ---------------------------------------------------------------- a hand-computed case

# One layer, one head: 8 edges, each adding a fixed amount (also its score, a perfect attribution).
HAND = {"input->logits": 4.0, "a0.h0->logits": 2.0, "input->a0.h0<v>": 1.0, "m0->logits": 0.5,
        "input->m0": 0.25, "a0.h0->m0": 0.125, "input->a0.h0<q>": 0.0625, "input->a0.h0<k>": 0.03125}
TOTAL = sum(HAND.values())  # 7.96875


def hand_graph(signs=None):
    graph = Graph.for_model(1, 1, d_model=4, model_name="hand")
    scores = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.float64)
    for name, value in HAND.items():
        scores[graph.edge_index(name)] = value * (signs or {}).get(name, 1)
    return graph.with_scores(scores)


def test_faithfulness_by_hand():
    graph = hand_graph()
    base = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    model = Additive(graph, graph.scores.nan_to_num(0).expand(3, -1, -1).contiguous(), base.double())
    curve = faithfulness_curve(graph, model, (0.25, 0.5, 0.75, 1.0), absolute=True)
    assert curve.n_edges == [2, 4, 6, 8]
    # top 2: input->logits, a0.h0->logits; a0.h0 has no input in the circuit, so its edge is pruned
    # top 4: + input->a0.h0<v> (connects a0.h0), m0->logits (m0 has no input: pruned)
    # top 6: + input->m0, a0.h0->m0: everything connects; top 8: the full model
    assert curve.n_edges_kept == [1, 3, 6, 8]
    expected = [4 / TOTAL, 7 / TOTAL, 7.875 / TOTAL, 1.0]
    assert curve.faithfulness.tolist() == pytest.approx(expected, abs=1e-12)
    assert len(model.calls) == 1  # one call: 4 circuits + empty + full, the full one counted once
    assert len(model.calls[0]) == 5
    # per prompt: the prompt's base moves it, the mean is f
    assert curve.per_prompt[0].tolist() == pytest.approx(
        [(b - base.mean().item() + 4) / TOTAL for b in base.tolist()], abs=1e-12)
    cpr_hand = 0.25 * ((expected[0] + expected[1]) + (expected[1] + expected[2]) + (expected[2] + expected[3])) / 2
    assert cpr(curve) == pytest.approx(cpr_hand, abs=1e-12)
    cmd_hand = 0.25 * sum((abs(1 - a) + abs(1 - b)) / 2 for a, b in zip(expected, expected[1:]))
    assert cmd(curve) == pytest.approx(cmd_hand, abs=1e-12)


def test_signed_ranking_puts_negative_edges_last():
    graph = hand_graph(signs={"input->m0": -1})  # this edge now lowers the metric by 0.25
    model = Additive(graph, graph.scores.nan_to_num(0)[None].contiguous(), torch.zeros(1, dtype=torch.float64))
    total = TOTAL - 2 * 0.25  # 7.46875
    fractions = (0.25, 0.5, 0.625, 0.875, 1.0)  # 2, 4, 5, 7, 8 edges
    signed = faithfulness_curve(graph, model, fractions, absolute=False)
    # 2: input->logits, a0.h0->logits (pruned: a0.h0 has no input): 4
    # 4: + input->a0.h0<v>, m0->logits (pruned: m0 has no input): 7
    # 5: + a0.h0->m0, which connects m0: 7.625; 7: + the q and k inputs: 7.71875; 8: everything
    assert signed.n_edges_kept == [1, 3, 5, 7, 8]
    assert signed.faithfulness.tolist() == pytest.approx([4 / total, 7 / total, 7.625 / total, 7.71875 / total, 1.0])
    absolute = faithfulness_curve(graph, model, fractions, absolute=True)
    # by |score| the fifth edge is input->m0 (-0.25), which connects m0: 4 + 2 + 1 + 0.5 - 0.25
    assert absolute.n_edges_kept[2] == 5 and absolute.faithfulness[2].item() == pytest.approx(7.25 / total)


# ---------------------------------------------------------------- random additive models


@pytest.mark.parametrize("absolute", [True, False])
@pytest.mark.parametrize("parallel", [False, True])
def test_curve_matches_a_slow_loop(absolute, parallel):
    graph = random_graph(4, 4, parallel=parallel, seed=11)
    model = additive(graph, batch=5, seed=12)
    curve = faithfulness_curve(graph, model, absolute=absolute)
    assert curve.fractions == MIB_FRACTIONS
    assert curve.n_edges == [int(k * graph.n_edges) for k in MIB_FRACTIONS]
    for i, n in enumerate(curve.n_edges):
        mask = pruned_by_networkx(graph, slow_top_n(graph, n, absolute))
        assert curve.n_edges_kept[i] == int(mask.sum())
        assert torch.allclose(curve.circuit_metric[i], model.metric(mask), atol=1e-10)
        assert curve.faithfulness[i].item() == pytest.approx(slow_faithfulness(model, mask), abs=1e-10)
    assert curve.faithfulness[-1].item() == 1.0
    xs, fs = np.array(MIB_FRACTIONS), curve.faithfulness.numpy()
    assert cpr(curve) == pytest.approx(np.trapezoid(fs, xs), abs=1e-12)
    assert cmd(curve) == pytest.approx(np.trapezoid(np.abs(1 - fs), xs), abs=1e-12)
    assert cpr(curve, log_scale=True) == pytest.approx(np.trapezoid(fs, np.log(xs)), abs=1e-12)
    frame = curve.to_frame()
    assert frame["faithfulness"].tolist() == pytest.approx(fs.tolist())
    assert frame["n_edges_kept"].tolist() == curve.n_edges_kept


def test_greedy_selection_in_the_curve():
    graph = random_graph(3, 3, seed=13)
    model = additive(graph, seed=14)
    curve = faithfulness_curve(graph, model, (0.05, 0.2, 0.6), absolute=True, selection="greedy")
    for i, n in enumerate(curve.n_edges):
        mask = pruned_by_networkx(graph, graph.greedy(n, prune=False).in_graph)
        assert curve.faithfulness[i].item() == pytest.approx(slow_faithfulness(model, mask), abs=1e-10)


# ---------------------------------------------------------------- a metric with interactions


class Paths:
    """m(mask) = base + Σ_paths value * [every edge of the path is kept]: an edge is worth
    nothing alone."""

    def __init__(self, graph, paths, base):
        self.graph, self.paths, self.base = graph, paths, base

    def __call__(self, masks):
        out = self.base[None, :].repeat(len(masks), 1)
        for edges, value in self.paths:
            index = [self.graph.edge_index(e) for e in edges]
            whole = torch.stack([masks[:, s, r] for s, r in index]).all(0)
            out += whole.double()[:, None] * value
        return out


def test_interactions_by_hand():
    graph = Graph.for_model(2, 2, d_model=8, model_name="paths")
    p1 = ["input->a0.h0<v>", "a0.h0->a1.h1<q>", "a1.h1->logits"]
    p2 = ["input->m0", "m0->logits"]
    gen = torch.Generator().manual_seed(0)
    scores = (torch.rand(graph.n_senders, graph.n_receivers, generator=gen, dtype=torch.float64) * 0.1) * graph.exists
    for name in p1:
        scores[graph.edge_index(name)] = 3.0
    for name in p2:
        scores[graph.edge_index(name)] = 1.0
    graph = graph.with_scores(scores)
    model = Paths(graph, [(p1, 3.0), (p2, 1.0)], torch.tensor([0.5, 1.5], dtype=torch.float64))
    curve = faithfulness_curve(graph, model, absolute=True)
    assert graph.n_edges == 46 and curve.n_edges == [0, 0, 0, 0, 0, 2, 4, 9, 23, 46]
    # 2 edges: the first two of path 1 (ties go to the earlier sender), no path to logits: empty
    # 4 edges: path 1 complete (3 of 4), input->m0 without m0->logits pruned: f = 3 / 4
    # 9 edges: both paths: f = 1
    assert curve.n_edges_kept[5:7] == [0, 3]
    assert curve.faithfulness.tolist() == pytest.approx([0, 0, 0, 0, 0, 0, 0.75, 1, 1, 1], abs=1e-12)
    assert cpr(curve) == pytest.approx(0.05 * 0.75 / 2 + 0.1 * 1.75 / 2 + 0.3 + 0.5, abs=1e-12)


# ---------------------------------------------------------------- one circuit


def test_faithfulness_and_completeness_of_one_circuit():
    graph = random_graph(3, 2, seed=15)
    model = additive(graph, seed=16)
    circuit = graph.greedy(20)
    one = faithfulness(circuit, model)
    assert one.n_edges == circuit.n_circuit_edges
    assert one.value == pytest.approx(slow_faithfulness(model, circuit.in_graph), abs=1e-10)
    assert one.per_prompt.mean().item() == pytest.approx(one.value)
    knocked = completeness(circuit, model)
    rest = graph.exists & ~circuit.in_graph
    assert knocked.value == pytest.approx(slow_faithfulness(model, rest), abs=1e-10)
    # additive: what the circuit adds and what the rest adds make up the whole
    assert one.value + knocked.value == pytest.approx(1.0, abs=1e-10)
    # faithfulness prunes first: an edge from a node outside the circuit changes nothing
    outside = next(n for n in graph.nodes[1:-1] if not circuit.node_in_graph[graph.node_index(n)])
    dangling = circuit.with_circuit(circuit.in_graph | _mask(graph, f"{outside}->logits"))
    assert dangling.n_circuit_edges == circuit.n_circuit_edges + 1
    assert faithfulness(dangling, model).value == pytest.approx(one.value, abs=1e-12)
    assert model.metric(dangling.in_graph).mean() != pytest.approx(model.metric(circuit.in_graph).mean())


def _mask(graph, *names):
    mask = torch.zeros_like(graph.in_graph)
    for name in names:
        mask[graph.edge_index(name)] = True
    return mask


def test_disconnected_or_empty_circuits_are_refused():
    graph = random_graph(3, 2, seed=17)
    model = additive(graph)
    broken = graph.with_circuit(["input->a0.h0<q>", "a1.h1->logits"])
    with pytest.raises(ValueError, match="no path from input to logits.*reached from input: a0.h0"):
        faithfulness(broken, model)
    with pytest.raises(ValueError, match="no path"):
        completeness(broken, model)
    with pytest.raises(ValueError, match="circuit is empty"):
        faithfulness(graph, model)
    with pytest.raises(TypeError, match="Graph"):
        faithfulness("circuit", model)


# ---------------------------------------------------------------- refusals of run_masks and fractions


def test_bad_run_masks_are_refused():
    graph = random_graph(2, 2, seed=18)
    good = additive(graph, batch=4)
    with pytest.raises(ValueError, match=r"must return a metric of shape \[\d+, batch\]; it returned shape \[\d+\]"):
        faithfulness_curve(graph, lambda m: good(m)[:, 0], absolute=True)
    with pytest.raises(ValueError, match="shape"):
        faithfulness_curve(graph, lambda m: good(m)[1:], absolute=True)
    with pytest.raises(ValueError, match="non-finite"):
        faithfulness_curve(graph, lambda m: good(m) / 0 * 0, absolute=True)
    with pytest.raises(TypeError, match="tensor"):
        faithfulness_curve(graph, lambda m: good(m).tolist(), absolute=True)
    with pytest.raises(TypeError, match="floating"):
        faithfulness_curve(graph, lambda m: good(m).long(), absolute=True)
    with pytest.raises(TypeError, match="callable"):
        faithfulness_curve(graph, "run", absolute=True)
    with pytest.raises(ValueError, match="same mean metric"):
        faithfulness_curve(graph, lambda m: torch.ones(len(m), 4), absolute=True)
    with pytest.raises(TypeError, match="absolute"):
        faithfulness_curve(graph, good, absolute=None)
    with pytest.raises(ValueError, match="selection"):
        faithfulness_curve(graph, good, absolute=True, selection="random")
    with pytest.raises(ValueError, match="no score"):
        faithfulness_curve(Graph.for_model(2, 2), good, absolute=True)


@pytest.mark.parametrize(("fractions", "message"), [
    ((-0.1, 0.5), r"\(0, 1\]"),
    ((0.0, 0.5), r"\(0, 1\]"),
    ((0.5, 1.5), r"\(0, 1\]"),
    ((0.5, 0.1), "strictly increasing"),
    ((0.1, 0.1, 0.5), "strictly increasing"),
    ((0.1, math.nan), "finite"),
    ((0.1, True), "finite"),
    ((), "non-empty"),
    ("0.5", "non-empty"),
])
def test_bad_fractions_are_refused(fractions, message):
    graph = random_graph(2, 2, seed=19)
    with pytest.raises(ValueError, match=message):
        faithfulness_curve(graph, additive(graph), fractions, absolute=True)
    with pytest.raises(ValueError, match=message):
        evaluate_circuit(graph, additive(graph), fractions)


# ---------------------------------------------------------------- CPR and CMD by closed forms


def constant_curve(f_values, fractions=MIB_FRACTIONS):
    """A curve whose faithfulness is `f_values`: m(∅) = 0, m(N) = 1 on one prompt."""
    return FaithfulnessCurve(tuple(fractions), 1000, [0] * len(fractions), [0] * len(fractions), True, "top_n",
                             torch.tensor(f_values, dtype=torch.float64)[:, None],
                             torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))


def test_cpr_and_cmd_closed_forms():
    ones = constant_curve([1.0] * 10)
    assert cpr(ones) == pytest.approx(0.999) and cmd(ones) == 0  # MIB's axis runs from 0.1% to 100%
    assert cpr(ones, log_scale=True) == pytest.approx(math.log(1000))
    linear = constant_curve(list(MIB_FRACTIONS))  # f(k) = k: trapezoids are exact on a line
    assert cpr(linear) == pytest.approx((1 - 0.001 ** 2) / 2, abs=1e-15)
    assert cmd(linear) == pytest.approx(0.999 - (1 - 0.001 ** 2) / 2, abs=1e-15)
    over = constant_curve([1.5] * 10)  # overshooting is penalised by CMD like undershooting
    assert cmd(over) == pytest.approx(0.5 * 0.999) == pytest.approx(cmd(constant_curve([0.5] * 10)))


# ---------------------------------------------------------------- AUROC against scikit-learn


@pytest.mark.parametrize("absolute", [True, False])
def test_auroc_matches_sklearn(absolute):
    graph = random_graph(4, 3, seed=20, ties=True)  # rounded scores: many ties
    gen = torch.Generator().manual_seed(21)
    reference = graph.with_circuit((torch.rand(graph.n_senders, graph.n_receivers, generator=gen) < 0.1)
                                   & graph.exists)
    exists = graph.exists
    scores = graph.scores[exists]
    expected = roc_auc_score(reference.in_graph[exists].numpy(), (scores.abs() if absolute else scores).numpy())
    assert auroc(graph, reference, absolute=absolute) == pytest.approx(expected, abs=1e-12)
    node_scores = torch.round(torch.randn(graph.n_nodes, generator=gen, dtype=torch.float64) * 2) / 2
    scored = graph.with_scores(node_scores=node_scores)
    flags = torch.rand(graph.n_nodes, generator=gen) < 0.4
    flags[-1] = True
    reference = Graph(graph.cfg, node_in_graph=flags)  # a circuit of heads and MLPs, no edges
    inner = slice(1, graph.n_nodes - 1)
    assert 0 < int(flags[inner].sum()) < graph.n_nodes - 2
    expected = roc_auc_score(reference.node_in_graph[inner].numpy(),
                             (node_scores.abs() if absolute else node_scores)[inner].numpy())
    assert auroc(scored, reference, level="node", absolute=absolute) == pytest.approx(expected, abs=1e-12)


def test_auroc_of_a_perfect_and_a_reversed_ranking():
    graph = random_graph(3, 2, seed=22)
    reference = graph.top_n(15, prune=False)
    assert auroc(graph, reference) == 1.0
    assert auroc(graph.with_scores(-graph.scores.abs()), reference, absolute=False) == 0.0


def test_auroc_refusals():
    graph = random_graph(3, 2, seed=23)
    reference = graph.top_n(10, prune=False)
    with pytest.raises(ValueError, match="different shapes"):
        auroc(random_graph(3, 3), reference)
    with pytest.raises(ValueError, match="no score"):
        auroc(Graph.for_model(3, 2), reference)
    with pytest.raises(ValueError, match="node_scores"):
        auroc(graph, reference, level="node")
    with pytest.raises(ValueError, match="both members and non-members"):
        auroc(graph, Graph.for_model(3, 2))
    with pytest.raises(ValueError, match="level"):
        auroc(graph, reference, level="head")
    with pytest.raises(TypeError, match="reference"):
        auroc(graph, reference.in_graph)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_matches_a_loop():
    graph = random_graph(3, 2, seed=24)
    model = additive(graph, batch=7, seed=25)
    curve = faithfulness_curve(graph, model, (0.05, 0.2, 0.5, 1.0), absolute=True)
    boot = bootstrap(curve, n_resamples=200, seed=3, confidence=0.9)
    index = torch.randint(7, (200, 7), generator=torch.Generator().manual_seed(3))
    fs, cprs = [], []
    for row in index.tolist():
        full = sum(curve.full_metric[i].item() for i in row) / 7
        empty = sum(curve.empty_metric[i].item() for i in row) / 7
        f = [(sum(curve.circuit_metric[k, i].item() for i in row) / 7 - empty) / (full - empty) for k in range(4)]
        fs.append(f)
        cprs.append(np.trapezoid(f, [0.05, 0.2, 0.5, 1.0]))
    fs = np.array(fs)
    assert boot.faithfulness_samples.numpy() == pytest.approx(fs, abs=1e-10)
    assert boot.faithfulness_low.numpy() == pytest.approx(np.percentile(fs, 5, axis=0), abs=1e-10)
    assert boot.faithfulness_high.numpy() == pytest.approx(np.percentile(fs, 95, axis=0), abs=1e-10)
    assert (boot.cpr_low, boot.cpr_high) == pytest.approx(tuple(np.percentile(cprs, [5, 95])), abs=1e-10)
    again = bootstrap(curve, n_resamples=200, seed=3, confidence=0.9)
    assert torch.equal(again.faithfulness_samples, boot.faithfulness_samples)
    other = bootstrap(curve, n_resamples=200, seed=4, confidence=0.9)
    assert not torch.equal(other.faithfulness_samples, boot.faithfulness_samples)


def test_bootstrap_without_prompt_variation_is_a_point():
    graph = random_graph(3, 2, seed=26)
    model = additive(graph, batch=5, seed=27, same_for_all_prompts=True)
    model.base = torch.zeros(5, dtype=torch.float64)  # every prompt identical
    curve = faithfulness_curve(graph, model, (0.1, 0.5, 1.0), absolute=True)
    boot = bootstrap(curve, n_resamples=50)
    assert torch.allclose(boot.faithfulness_low, curve.faithfulness) and torch.allclose(
        boot.faithfulness_high, curve.faithfulness)
    assert boot.cpr_low == pytest.approx(cpr(curve)) == pytest.approx(boot.cpr_high)


def test_bootstrap_intervals_cover_the_truth():
    """Prompts drawn from a known distribution: m(∅) ~ N(0, 1), m(N) = m(∅) + 2 + N(0, 1),
    m(C) = m(∅) + 1.2 + N(0, 1), so the true f is 0.6; the 90% interval from 60 prompts
    should hold it in about 90% of 400 repeated experiments (standard error 1.5%)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 400 tiny bootstraps: thread start-up would dominate on a busy machine
    try:
        covered = _coverage(torch.Generator().manual_seed(28), n_prompts=60, repeats=400)
    finally:
        torch.set_num_threads(threads)
    assert 0.85 <= covered <= 0.95


def _coverage(gen, n_prompts, repeats):
    covered = 0
    for _ in range(repeats):
        empty = torch.randn(n_prompts, generator=gen, dtype=torch.float64)
        full = empty + 2 + torch.randn(n_prompts, generator=gen, dtype=torch.float64)
        circuit = empty + 1.2 + torch.randn(n_prompts, generator=gen, dtype=torch.float64)
        curve = FaithfulnessCurve((1.0,), 10, [10], [10], True, "top_n", circuit[None], full, empty)
        boot = bootstrap(curve, n_resamples=400, seed=int(torch.randint(1 << 30, (1,), generator=gen)),
                         confidence=0.9)
        covered += bool(boot.faithfulness_low[0] <= 0.6 <= boot.faithfulness_high[0])
    return covered / repeats


def test_bootstrap_refusals():
    curve = constant_curve([0.5, 1.0], fractions=(0.5, 1.0))
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap(curve, n_resamples=1)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap(curve, confidence=95)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap(curve, confidence=1.0)
    with pytest.raises(TypeError, match="seed"):
        bootstrap(curve, seed=1.5)
    # two prompts, one of which has m(N) = m(∅): resampling it twice leaves f undefined
    flat = FaithfulnessCurve((1.0,), 10, [10], [10], True, "top_n", torch.tensor([[1.0, 0.0]], dtype=torch.float64),
                             torch.tensor([1.0, 0.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="resamples give m\\(N\\) = m\\(∅\\)"):
        bootstrap(flat, n_resamples=100)


# ---------------------------------------------------------------- the whole evaluation


def test_evaluate_circuit_end_to_end(tmp_path):
    graph = random_graph(4, 3, seed=29)
    model = additive(graph, batch=8, seed=30)
    evaluation = evaluate_circuit(graph, model, n_resamples=300, seed=1, task="toy-task", method="random")
    assert len(model.calls) == 1
    assert len(model.calls[0]) == len(torch.unique(model.calls[0].flatten(1), dim=0))  # each mask once
    signed = faithfulness_curve(graph, additive(graph, batch=8, seed=30), absolute=False)
    absolute = faithfulness_curve(graph, additive(graph, batch=8, seed=30), absolute=True)
    assert torch.allclose(evaluation.signed.faithfulness, signed.faithfulness, atol=1e-12)
    assert torch.allclose(evaluation.absolute.faithfulness, absolute.faithfulness, atol=1e-12)
    assert evaluation.cpr == pytest.approx(cpr(signed)) and evaluation.cmd == pytest.approx(cmd(absolute))
    boot = bootstrap(signed, n_resamples=300, seed=1)
    assert torch.allclose(evaluation.signed_bootstrap.faithfulness_low, boot.faithfulness_low)

    frame = evaluation.to_frame()
    assert list(frame.columns) == ["ranking", "fraction", "n_edges", "n_edges_kept", "faithfulness", "metric",
                                   "ci_low", "ci_high"]
    assert len(frame) == 20 and (frame["ci_low"] <= frame["ci_high"]).all()
    assert frame["faithfulness"].tolist()[:10] == pytest.approx(evaluation.signed.faithfulness.tolist())
    summary = evaluation.summary_frame().set_index("score")
    assert summary.loc["cpr", "value"] == evaluation.cpr and summary.loc["cmd", "value"] == evaluation.cmd
    assert summary.loc["cpr", "ci_low"] == evaluation.signed_bootstrap.cpr_low
    assert summary.loc["cmd", "ci_high"] == evaluation.absolute_bootstrap.cmd_high

    fig = evaluation.figure()
    assert fig.layout.xaxis.type == "log"
    bands = [t for t in fig.data if t.fill == "toself"]
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert len(bands) == 2 and len(lines) == 2
    assert list(lines[0].y) == pytest.approx(evaluation.signed.faithfulness.tolist())
    assert list(bands[0].y[:10]) == pytest.approx(evaluation.signed_bootstrap.faithfulness_high.tolist())

    path = evaluation.save(tmp_path)
    bundle = read_bundle(path)
    assert bundle.meta["analysis"] == "circuit" and bundle.meta["cpr"] == evaluation.cpr
    assert bundle.meta["parameters"]["fractions"] == list(MIB_FRACTIONS)
    assert bundle.table("faithfulness")["faithfulness"].tolist() == pytest.approx(frame["faithfulness"].tolist())
    per_prompt = bundle.table("per_prompt")
    assert len(per_prompt) == 2 * 10 * 8
    assert per_prompt.groupby(["ranking", "fraction"])["faithfulness"].mean().loc["signed"].tolist() == \
        pytest.approx(evaluation.signed.faithfulness.tolist())
    redrawn = faithfulness_figure(bundle.table("faithfulness"))  # from the table alone
    assert [list(t.y) for t in redrawn.data] == [list(t.y) for t in fig.data]
    # One labelled tick per evaluated fraction (a log axis would label its minor ticks, which overlap).
    assert list(redrawn.layout.xaxis.tickvals) == pytest.approx(list(MIB_FRACTIONS))
    assert redrawn.layout.xaxis.ticktext[:4] == ("0.1%", "0.2%", "0.5%", "1%")
    back = Graph.from_bundle(path)
    assert torch.equal(back.scores.nan_to_num(3.0), graph.scores.nan_to_num(3.0))


def test_evaluate_circuit_without_bootstrap():
    graph = random_graph(2, 2, seed=31)
    evaluation = evaluate_circuit(graph, additive(graph), n_resamples=0)
    assert evaluation.signed_bootstrap is None and evaluation.to_frame()["ci_low"].isna().all()
    assert len([t for t in evaluation.figure().data if t.fill == "toself"]) == 0
    assert isinstance(evaluation, CircuitEvaluation)
    with pytest.raises(ValueError, match="n_resamples"):
        evaluate_circuit(graph, additive(graph), n_resamples=-1)
