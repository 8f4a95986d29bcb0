"""circuits.graph: the node/edge structure against EAP-IG's rules and MIB's edge counts,
selection and pruning against slow loops and networkx, the EAP-IG JSON format against files
written by EAP-IG's own `Graph.to_json`, and every refusal."""

import json
import math
import os
from types import SimpleNamespace

import networkx as nx
import pandas as pd
import pytest
import torch

from circuits.figures import circuit_figure
from circuits.graph import Graph, GraphConfig, GraphFormatError
from interp.models import ModelConfig
from interp.results import read_bundle

# Written by EAP-IG's own code (github.com/hannamw/EAP-IG, commit 795f560, src/eap/graph.py):
#   g = Graph.from_model({"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8})
#   for i, e in enumerate(g.edges.values()): e.score = ((i * 37) % 47 + 1) / 16 * (-1) ** i
#   g.apply_topn(14, absolute=True); g.to_json(path)
EAP_2x2_TOP14 = (
    '{"cfg": {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": false, "d_model": 8}, "nodes": {"input": '
    '{"in_graph": true}, "a0.h0": {"in_graph": true}, "a0.h1": {"in_graph": false}, "m0": {"in_graph": true}, '
    '"a1.h0": {"in_graph": true}, "a1.h1": {"in_graph": false}, "m1": {"in_graph": false}, "logits": {"in_graph": '
    'true}}, "edges": {"input->a0.h0<q>": {"score": 0.0625, "in_graph": false}, "input->a0.h0<k>": {"score": '
    '-2.375, "in_graph": true}, "input->a0.h0<v>": {"score": 1.75, "in_graph": false}, "input->a0.h1<q>": '
    '{"score": -1.125, "in_graph": false}, "input->a0.h1<k>": {"score": 0.5, "in_graph": false}, '
    '"input->a0.h1<v>": {"score": -2.8125, "in_graph": false}, "input->m0": {"score": 2.1875, "in_graph": true}, '
    '"a0.h0->m0": {"score": -1.5625, "in_graph": false}, "a0.h1->m0": {"score": 0.9375, "in_graph": false}, '
    '"input->a1.h0<q>": {"score": -0.3125, "in_graph": false}, "input->a1.h0<k>": {"score": 2.625, "in_graph": '
    'true}, "input->a1.h0<v>": {"score": -2.0, "in_graph": false}, "input->a1.h1<q>": {"score": 1.375, '
    '"in_graph": false}, "input->a1.h1<k>": {"score": -0.75, "in_graph": false}, "input->a1.h1<v>": {"score": '
    '0.125, "in_graph": false}, "a0.h0->a1.h0<q>": {"score": -2.4375, "in_graph": true}, "a0.h0->a1.h0<k>": '
    '{"score": 1.8125, "in_graph": false}, "a0.h0->a1.h0<v>": {"score": -1.1875, "in_graph": false}, '
    '"a0.h0->a1.h1<q>": {"score": 0.5625, "in_graph": false}, "a0.h0->a1.h1<k>": {"score": -2.875, "in_graph": '
    'false}, "a0.h0->a1.h1<v>": {"score": 2.25, "in_graph": false}, "a0.h1->a1.h0<q>": {"score": -1.625, '
    '"in_graph": false}, "a0.h1->a1.h0<k>": {"score": 1.0, "in_graph": false}, "a0.h1->a1.h0<v>": {"score": '
    '-0.375, "in_graph": false}, "a0.h1->a1.h1<q>": {"score": 2.6875, "in_graph": false}, "a0.h1->a1.h1<k>": '
    '{"score": -2.0625, "in_graph": false}, "a0.h1->a1.h1<v>": {"score": 1.4375, "in_graph": false}, '
    '"m0->a1.h0<q>": {"score": -0.8125, "in_graph": false}, "m0->a1.h0<k>": {"score": 0.1875, "in_graph": '
    'false}, "m0->a1.h0<v>": {"score": -2.5, "in_graph": true}, "m0->a1.h1<q>": {"score": 1.875, "in_graph": '
    'false}, "m0->a1.h1<k>": {"score": -1.25, "in_graph": false}, "m0->a1.h1<v>": {"score": 0.625, "in_graph": '
    'false}, "input->m1": {"score": -2.9375, "in_graph": false}, "a0.h0->m1": {"score": 2.3125, "in_graph": '
    'false}, "a0.h1->m1": {"score": -1.6875, "in_graph": false}, "m0->m1": {"score": 1.0625, "in_graph": false}, '
    '"a1.h0->m1": {"score": -0.4375, "in_graph": false}, "a1.h1->m1": {"score": 2.75, "in_graph": false}, '
    '"input->logits": {"score": -2.125, "in_graph": true}, "a0.h0->logits": {"score": 1.5, "in_graph": false}, '
    '"a0.h1->logits": {"score": -0.875, "in_graph": false}, "m0->logits": {"score": 0.25, "in_graph": false}, '
    '"a1.h0->logits": {"score": -2.5625, "in_graph": true}, "a1.h1->logits": {"score": 1.9375, "in_graph": '
    'false}, "m1->logits": {"score": -1.3125, "in_graph": false}}}'
)
# EAP-IG's selections on the same scores (apply_greedy / apply_topn / apply_threshold, pruned).
EAP_SELECTIONS = {
    ("greedy", 8, True): ["a0.h0->a1.h0<q>", "a1.h0->logits", "input->a0.h0<k>", "input->a1.h0<k>",
                          "input->a1.h0<v>", "input->logits", "input->m0", "m0->a1.h0<v>"],
    ("greedy", 12, False): ["a0.h0->a1.h1<q>", "a0.h0->a1.h1<v>", "a0.h0->logits", "a1.h1->logits",
                            "input->a0.h0<v>", "input->a1.h1<q>", "input->m0", "m0->a1.h1<q>", "m0->a1.h1<v>"],
    ("top_n", 10, False): ["a0.h0->a1.h1<v>", "a1.h1->logits", "input->a0.h0<v>", "input->m0", "m0->a1.h1<q>"],
    ("threshold", 2.0, True): ["a0.h0->a1.h0<q>", "a1.h0->logits", "input->a0.h0<k>", "input->a1.h0<k>",
                               "input->a1.h0<v>", "input->logits", "input->m0", "m0->a1.h0<v>"],
}


def edge_count(n_layers, n_heads, parallel=False):
    """EAP-IG's count: each head reads every earlier node three times, each MLP every earlier
    node (and its own layer's heads unless parallel), the logits every node."""
    total = 0
    for layer in range(n_layers):
        before = 1 + layer * (n_heads + 1)
        total += 3 * n_heads * before + before + (0 if parallel else n_heads)
    return total + 1 + n_layers * (n_heads + 1)


def upstream_by_rule(n_layers, n_heads, parallel):
    """The edges, by the rules as stated in words: {(parent, receiver)}."""
    def layer_nodes(layer):
        return [f"a{layer}.h{h}" for h in range(n_heads)] + [f"m{layer}"]

    edges = set()
    for layer in range(n_layers):
        before = ["input"] + [n for earlier in range(layer) for n in layer_nodes(earlier)]
        for h in range(n_heads):
            for x in "qkv":
                edges |= {(p, f"a{layer}.h{h}<{x}>") for p in before}
        mlp_reads = before + ([] if parallel else [f"a{layer}.h{h}" for h in range(n_heads)])
        edges |= {(p, f"m{layer}") for p in mlp_reads}
    everything = ["input"] + [n for layer in range(n_layers) for n in layer_nodes(layer)]
    return edges | {(p, "logits") for p in everything}


def random_graph(n_layers=3, n_heads=2, parallel=False, seed=0, ties=False):
    graph = Graph.for_model(n_layers, n_heads, parallel_attn_mlp=parallel, d_model=16, model_name="toy")
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(graph.n_senders, graph.n_receivers, generator=gen, dtype=torch.float64)
    if ties:
        scores = torch.round(scores * 2) / 2
    return graph.with_scores(scores * graph.exists)


def as_networkx(graph, mask):
    """The circuit `mask` as a networkx DiGraph of node names."""
    g = nx.DiGraph()
    for s, r in mask.nonzero().tolist():
        g.add_edge(graph.nodes[s], graph.nodes[int(graph.receiver_node[r])])
    return g


def pruned_by_networkx(graph, mask):
    """Edges of `mask` on an input -> logits path, by networkx reachability."""
    g = as_networkx(graph, mask)
    if "input" not in g or "logits" not in g:
        return torch.zeros_like(mask)
    from_input = nx.descendants(g, "input") | {"input"}
    to_logits = nx.ancestors(g, "logits") | {"logits"}
    kept = torch.zeros_like(mask)
    for s, r in mask.nonzero().tolist():
        if graph.nodes[s] in from_input and graph.nodes[int(graph.receiver_node[r])] in to_logits:
            kept[s, r] = True
    return kept


def names_of(graph):
    return sorted(graph.edge_name(s, r) for s, r in graph.in_graph.nonzero().tolist())


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize(("shape", "published"), [
    ((12, 12), 32491),  # GPT-2 small; MIB's EDGE_COUNTS (MIB_circuit_track/evaluation.py)
    ((24, 14), 179749),  # Qwen-2.5-0.5B, MIB
    ((26, 8), 74218),  # Gemma-2-2B, MIB
    ((32, 32), 1592881),  # Llama-3.1-8B, MIB
    ((6, 4), 1108),  # InterpBench, MIB
])
def test_edge_counts_match_mib(shape, published):
    graph = Graph.for_model(*shape)
    assert graph.n_edges == published == edge_count(*shape) == int(graph.exists.sum())


def test_parallel_blocks_lose_the_attention_to_mlp_edges():
    graph = Graph.for_model(12, 12, parallel_attn_mlp=True)
    assert graph.n_edges == edge_count(12, 12, parallel=True) == 32491 - 12 * 12
    with pytest.raises(KeyError, match="not upstream"):
        graph.edge_index("a1.h0->m1")
    assert graph.edge_index("a0.h0->m1") is not None


@pytest.mark.parametrize("parallel", [False, True])
def test_edges_follow_the_stated_rules(parallel):
    graph = Graph.for_model(3, 2, parallel_attn_mlp=parallel)
    ours = {(graph.nodes[s], graph.receivers[r]) for s, r in graph.exists.nonzero().tolist()}
    assert ours == upstream_by_rule(3, 2, parallel)
    # the senders upstream of a receiver are a prefix of the sender order
    for r in range(graph.n_receivers):
        column = graph.exists[:, r]
        assert column[:graph.n_upstream[r]].all() and not column[graph.n_upstream[r]:].any()


def test_names_and_indices():
    graph = Graph.for_model(3, 2)
    assert graph.nodes[:4] == ("input", "a0.h0", "a0.h1", "m0") and graph.nodes[-1] == "logits"
    assert graph.receivers[:7] == ("a0.h0<q>", "a0.h1<q>", "a0.h0<k>", "a0.h1<k>", "a0.h0<v>", "a0.h1<v>", "m0")
    assert graph.receivers[-1] == "logits"
    for name in ("input->a0.h0<q>", "a0.h1->a1.h0<k>", "a1.h0->m1", "m2->logits"):
        s, r = graph.edge_index(name)
        assert graph.edge_name(s, r) == name
    names = graph.to_frame()["edge"]
    assert len(set(names)) == graph.n_edges
    assert all(graph.edge_name(*graph.edge_index(n)) == n for n in names)
    assert [graph.receiver_qkv[graph.receiver_index(f"a1.h1<{x}>")] for x in "qkv"] == ["q", "k", "v"]
    assert graph.node_layer.tolist()[0] == -1 and graph.node_layer.tolist()[-1] == 3


@pytest.mark.parametrize("bad", ["a0.h0->a0.h1<q>", "m1->a1.h0<q>", "a2.h0->m1", "logits->m0", "input->input",
                                 "a0.h9->m1", "a3.h0->logits", "input->a0.h0", "input-a0.h0<q>", "x->m0"])
def test_unknown_or_impossible_edges_are_refused(bad):
    graph = Graph.for_model(3, 2)
    with pytest.raises(KeyError):
        graph.edge_index(bad)
    with pytest.raises(KeyError):
        graph.with_circuit([bad])


def test_unknown_node_names_say_what_exists():
    graph = Graph.for_model(3, 2)
    with pytest.raises(KeyError, match=r"layer in 0\.\.2, head in 0\.\.1"):
        graph.node_index("a3.h0")
    with pytest.raises(KeyError, match="unknown receiver"):
        graph.receiver_index("a0.h0<x>")


def test_for_model_reads_a_model_config():
    cfg = ModelConfig(name="gpt2", architecture="GPT2LMHeadModel", family="gpt2", n_layers=12, n_heads=12,
                      n_kv_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024,
                      is_causal=True, has_lm_head=True, pre_ln=True, parallel=False)
    graph = Graph.for_model(SimpleNamespace(cfg=cfg))  # a HookedModel exposes .cfg
    assert graph.cfg == GraphConfig(12, 12, False, 768, "gpt2") and graph.n_edges == 32491
    neox = Graph.for_model(SimpleNamespace(cfg=SimpleNamespace(**{**cfg.__dict__, "parallel": True, "name": "pythia"})))
    assert neox.cfg.parallel_attn_mlp and neox.n_edges == 32491 - 144
    with pytest.raises(ValueError, match="post-LN"):
        Graph.for_model(SimpleNamespace(**{**cfg.__dict__, "pre_ln": False}))
    with pytest.raises(TypeError, match="lacks"):
        Graph.for_model("gpt2")
    with pytest.raises(TypeError, match="n_heads"):
        Graph.for_model(12)
    with pytest.raises(ValueError, match="n_layers must be at least 1"):
        Graph.for_model(0, 4)
    with pytest.raises(TypeError, match="integer"):
        Graph.for_model(2.0, 4)


# ---------------------------------------------------------------- scores and circuits


def test_scores_are_checked_against_the_layout():
    graph = Graph.for_model(2, 2)
    with pytest.raises(ValueError, match=r"shape \[7, 15\]"):
        graph.with_scores(torch.zeros(15, 7))
    with pytest.raises(TypeError, match="floating"):
        graph.with_scores(torch.zeros(7, 15, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        graph.with_scores([[0.0] * 15] * 7)
    stray = torch.zeros(7, 15)
    stray[1, 0] = 0.5  # a0.h0 does not feed its own q input: a transposed or shifted layout
    with pytest.raises(ValueError, match="a0.h0 does not feed a0.h0<q>"):
        graph.with_scores(stray)
    infinite = torch.zeros(7, 15)
    infinite[0, 0] = math.inf
    with pytest.raises(ValueError, match="finite or NaN"):
        graph.with_scores(infinite)
    with pytest.raises(ValueError, match=r"shape \[8\]"):
        graph.with_scores(node_scores=torch.zeros(7))
    with pytest.raises(ValueError, match="no such edge"):  # ones everywhere: the non-edges must be 0 or NaN
        graph.with_scores(torch.ones(7, 15))


def test_scores_off_the_edges_may_be_zero_or_nan_and_are_stored_as_nan():
    graph = Graph.for_model(2, 2)
    scores = torch.where(graph.exists, torch.arange(7 * 15.0).view(7, 15), torch.zeros(()))
    stored = graph.with_scores(scores).scores
    assert stored.dtype == torch.float64
    assert stored[~graph.exists].isnan().all()
    assert torch.equal(stored[graph.exists], scores[graph.exists].double())


def test_circuit_masks_and_names():
    graph = Graph.for_model(2, 2)
    circuit = graph.with_circuit(["input->a0.h1<v>", "a0.h1->m0", "m0->logits"])
    assert circuit.n_circuit_edges == 3
    assert [n for n, flag in zip(circuit.nodes, circuit.node_in_graph.tolist()) if flag] == [
        "input", "a0.h1", "m0", "logits"]
    assert circuit.n_circuit_nodes == 3
    same = graph.with_circuit(circuit.in_graph)
    assert torch.equal(same.in_graph, circuit.in_graph) and torch.equal(same.node_in_graph, circuit.node_in_graph)
    outside = torch.zeros(7, 15, dtype=torch.bool)
    outside[6, 0] = True  # m1 -> a0.h0<q> runs backwards
    with pytest.raises(ValueError, match="not edges, e.g. m1 -> a0.h0<q>"):
        graph.with_circuit(outside)
    with pytest.raises(TypeError, match="bool"):
        graph.with_circuit(outside.float())
    with pytest.raises(TypeError, match="not one string"):
        graph.with_circuit("m0->logits")
    with pytest.raises(ValueError, match="logits"):
        Graph(graph.cfg, node_in_graph=torch.zeros(8, dtype=torch.bool))


# ---------------------------------------------------------------- selection and pruning


def slow_top_n(graph, n, absolute):
    """Sort edges by key, ties to the smaller (sender, receiver), take n, prune by networkx."""
    edges = [(s, r) for s, r in graph.exists.nonzero().tolist()]
    key = {(s, r): abs(graph.scores[s, r].item()) if absolute else graph.scores[s, r].item() for s, r in edges}
    chosen = sorted(edges, key=lambda e: (-key[e], e))[:n]
    mask = torch.zeros_like(graph.in_graph)
    for e in chosen:
        mask[e] = True
    return mask


def slow_greedy(graph, n, absolute):
    """Greedy from logits, written as a plain loop over all candidate edges at every step."""
    owner = graph.receiver_node.tolist()
    edges = [(s, r) for s, r in graph.exists.nonzero().tolist()]
    key = {(s, r): abs(graph.scores[s, r].item()) if absolute else graph.scores[s, r].item() for s, r in edges}
    in_circuit, taken = {graph.n_nodes - 1}, set()
    for _ in range(n):
        candidates = [e for e in edges if e not in taken and owner[e[1]] in in_circuit]
        best = min(candidates, key=lambda e: (-key[e], e))
        taken.add(best)
        in_circuit.add(best[0])
    mask = torch.zeros_like(graph.in_graph)
    for e in taken:
        mask[e] = True
    return mask


@pytest.mark.parametrize(("parallel", "ties"), [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("absolute", [True, False])
def test_top_n_and_greedy_match_slow_loops_and_networkx_pruning(parallel, ties, absolute):
    graph = random_graph(3, 2, parallel, seed=1, ties=ties)
    for n in (0, 1, 5, 20, 60, graph.n_edges):
        unpruned = graph.top_n(n, absolute=absolute, prune=False)
        assert torch.equal(unpruned.in_graph, slow_top_n(graph, n, absolute)) and unpruned.n_circuit_edges == n
        pruned = graph.top_n(n, absolute=absolute, empty_ok=True)
        assert torch.equal(pruned.in_graph, pruned_by_networkx(graph, unpruned.in_graph))
        greedy = graph.greedy(n, absolute=absolute, prune=False)
        assert torch.equal(greedy.in_graph, slow_greedy(graph, n, absolute))
        assert torch.equal(graph.greedy(n, absolute=absolute, empty_ok=True).in_graph,
                           pruned_by_networkx(graph, greedy.in_graph))


def test_threshold_matches_a_comparison():
    graph = random_graph(3, 2, seed=2)
    for tau in (0.0, 0.5, 1.5):
        mask = graph.threshold(tau, prune=False).in_graph
        assert torch.equal(mask, graph.exists & (graph.scores.abs() >= tau))
        signed = graph.threshold(-tau, absolute=False, prune=False).in_graph
        assert torch.equal(signed, graph.exists & (graph.scores >= -tau))


def test_prune_matches_networkx_on_random_circuits():
    graph = random_graph(4, 3, seed=3)
    gen = torch.Generator().manual_seed(0)
    for p in (0.02, 0.05, 0.1, 0.3, 0.8):
        mask = (torch.rand(graph.n_senders, graph.n_receivers, generator=gen) < p) & graph.exists
        pruned = graph.with_circuit(mask).prune(empty_ok=True)
        expected = pruned_by_networkx(graph, mask)
        assert torch.equal(pruned.in_graph, expected)
        on_paths = set(as_networkx(graph, expected).nodes) | {"logits"}
        assert {n for n, f in zip(graph.nodes, pruned.node_in_graph.tolist()) if f} == on_paths


def test_selection_returns_new_graphs():
    graph = random_graph(seed=4)
    before = graph.in_graph.clone()
    graph.top_n(10, empty_ok=True)
    graph.greedy(10)
    assert torch.equal(graph.in_graph, before)


def test_prune_names_what_is_disconnected():
    graph = Graph.for_model(3, 2).with_circuit(["input->a0.h0<q>", "a0.h0->m0", "a1.h1->logits"])
    with pytest.raises(ValueError, match="no path from input to logits") as error:
        graph.prune()
    message = str(error.value)
    assert "nodes reached from input: a0.h0, m0" in message and "nodes that reach logits: a1.h1" in message
    assert graph.prune(empty_ok=True).n_circuit_edges == 0
    # an empty circuit has nothing disconnected
    assert Graph.for_model(3, 2).prune().n_circuit_edges == 0
    with pytest.raises(ValueError, match="logits has no circuit edge"):
        Graph.for_model(3, 2).with_circuit(["input->m0"]).prune()


def test_selection_refusals():
    graph = random_graph(seed=5)
    assert graph.n_edges == edge_count(3, 2) == 100
    with pytest.raises(ValueError, match="more than the 100 edges"):
        graph.top_n(101)
    with pytest.raises(ValueError, match="at least 0"):
        graph.top_n(-1)
    with pytest.raises(TypeError, match="integer"):
        graph.greedy(1.7)
    with pytest.raises(TypeError, match="integer"):
        graph.top_n(True)
    with pytest.raises(ValueError, match=">= 0"):
        graph.threshold(-0.1)
    with pytest.raises(ValueError, match="finite"):
        graph.threshold(math.nan)
    with pytest.raises(TypeError, match="absolute"):
        graph.top_n(3, absolute="yes")
    unscored = graph.scores.clone()
    unscored[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"1 of 100 edges have no score \(NaN\), e.g. input->a0.h0<q>"):
        graph.with_scores(unscored).top_n(3)
    with pytest.raises(ValueError, match="no score"):
        Graph.for_model(2, 2).greedy(2)
    with pytest.raises(ValueError, match="no score"):
        Graph.for_model(2, 2).threshold(0.5)


# ---------------------------------------------------------------- EAP-IG / MIB JSON


def test_reads_a_file_written_by_eap_ig_and_reproduces_its_selections(tmp_path):
    path = tmp_path / "eap.json"
    path.write_text(EAP_2x2_TOP14)
    graph = Graph.from_json(path, expected=GraphConfig(2, 2, False, 8))
    raw = json.loads(EAP_2x2_TOP14)
    assert graph.n_edges == len(raw["edges"]) == 46
    for name, entry in raw["edges"].items():
        s, r = graph.edge_index(name)
        assert graph.scores[s, r].item() == entry["score"] and bool(graph.in_graph[s, r]) == entry["in_graph"]
    assert [bool(graph.node_in_graph[graph.node_index(n)]) for n in raw["nodes"]] == [
        e["in_graph"] for e in raw["nodes"].values()]
    assert torch.equal(graph.top_n(14).in_graph, graph.in_graph)  # the file is EAP-IG's apply_topn(14)
    for (how, n, absolute), expected in EAP_SELECTIONS.items():
        selected = graph.threshold(n, absolute) if how == "threshold" else getattr(graph, how)(n, absolute)
        assert names_of(selected) == expected, (how, n, absolute)
    out = tmp_path / "ours.json"
    graph.to_json(out)
    assert out.read_text() == EAP_2x2_TOP14  # byte for byte what EAP-IG writes


@pytest.mark.parametrize("parallel", [False, True])
def test_reads_a_hand_written_one_layer_file(tmp_path, parallel):
    edges = {"input->a0.h0<q>": (0.5, True), "input->a0.h0<k>": (-0.25, False), "input->a0.h0<v>": (1.0, True),
             "input->m0": (2.0, True), "input->logits": (0.0, False), "a0.h0->logits": (-3.0, True),
             "m0->logits": (0.75, True)}
    if not parallel:
        edges["a0.h0->m0"] = (0.125, False)
    text = json.dumps({
        "cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": parallel, "d_model": 4},
        "nodes": {"input": {"in_graph": True}, "a0.h0": {"in_graph": True, "score": 0.5},
                  "m0": {"in_graph": True}, "logits": {"in_graph": True}},
        "edges": {name: {"score": s, "in_graph": f} for name, (s, f) in edges.items()}})
    path = tmp_path / "one.json"
    path.write_text(text)
    graph = Graph.from_json(path)
    assert graph.cfg == GraphConfig(1, 1, parallel, 4) and graph.n_edges == len(edges) == (7 if parallel else 8)
    frame = graph.to_frame().set_index("edge")
    for name, (score, flag) in edges.items():
        assert frame.loc[name, "score"] == score and frame.loc[name, "in_graph"] == flag
    assert frame.loc["input->a0.h0<v>", "qkv"] == "v" and pd.isna(frame.loc["m0->logits", "qkv"])
    assert graph.node_scores[1].item() == 0.5 and graph.node_scores[[0, 2, 3]].isnan().all()
    again = tmp_path / "again.json"
    graph.to_json(again)
    assert json.loads(again.read_text()) == json.loads(text)


def test_round_trip(tmp_path):
    graph = random_graph(3, 2, parallel=True, seed=6).top_n(40, empty_ok=True)
    node_scores = torch.full((graph.n_nodes,), math.nan, dtype=torch.float64)
    node_scores[[1, 4]] = torch.tensor([0.1, -2.5], dtype=torch.float64)
    graph = graph.with_scores(node_scores=node_scores)
    path = graph.to_json(tmp_path / "g.json")
    back = Graph.from_json(path, expected=graph)
    assert back.cfg == graph.cfg
    for name in ("scores", "node_scores"):
        assert torch.equal(getattr(back, name).nan_to_num(7.0), getattr(graph, name).nan_to_num(7.0))
    assert torch.equal(back.in_graph, graph.in_graph) and torch.equal(back.node_in_graph, graph.node_in_graph)


def test_to_json_is_atomic_and_refuses_what_eap_ig_cannot_read(tmp_path):
    path = tmp_path / "g.json"
    path.write_text("old")
    with pytest.raises(ValueError, match="no score"):
        Graph.for_model(2, 2, d_model=8).to_json(path)
    with pytest.raises(ValueError, match="d_model"):
        random_graph().__class__.for_model(2, 2).to_json(path)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["g.json"]
    random_graph().to_json(path)
    assert json.loads(path.read_text())["cfg"]["n_layers"] == 3 and os.listdir(tmp_path) == ["g.json"]


def mutated(text_or_data, change=None):
    data = json.loads(EAP_2x2_TOP14) if text_or_data is None else text_or_data
    if change:
        change(data)
    return json.dumps(data)


def _set(path, value):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _drop(path):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return change


BAD_FILES = {
    "not json": ("hello", "not valid JSON"),
    "truncated": (EAP_2x2_TOP14[:-40], "not valid JSON"),
    "a list": ("[1, 2]", "JSON object"),
    "no edges": (mutated(None, _drop(["edges"])), "missing"),
    "extra top key": (mutated(None, _set(["extra"], 1)), "unexpected"),
    "cfg lacks n_heads": (mutated(None, _drop(["cfg", "n_heads"])), "cfg lacks"),
    "cfg bad n_layers": (mutated(None, _set(["cfg", "n_layers"], "2")), "bad cfg"),
    "unknown node": (mutated(None, _set(["nodes", "a5.h0"], {"in_graph": False})), "unknown nodes a5.h0"),
    "missing node": (mutated(None, _drop(["nodes", "m1"])), "nodes missing from the file: m1"),
    "node without in_graph": (mutated(None, _set(["nodes", "m1"], {"score": 1.0})), "with in_graph"),
    "node in_graph 1": (mutated(None, _set(["nodes", "m1", "in_graph"], 1)), "true or false"),
    "neurons": (mutated(None, _set(["nodes", "m1", "neurons"], [True] * 8)), "neuron"),
    "logits out": (mutated(None, _set(["nodes", "logits", "in_graph"], False)), "always in the graph"),
    "unknown edge": (mutated(None, _set(["edges", "m1->a0.h0<q>"], {"score": 1.0, "in_graph": False})),
                     "unknown edges"),
    "missing edge": (mutated(None, _drop(["edges", "a0.h1->m1"])), "1 of 46 edges are missing"),
    "edge without score": (mutated(None, _set(["edges", "m0->m1"], {"in_graph": False})), "exactly score"),
    "edge with extra field": (mutated(None, _set(["edges", "m0->m1", "qkv"], None)), "exactly score"),
    "string score": (mutated(None, _set(["edges", "m0->m1", "score"], "1.0")), "finite number"),
    "bool score": (mutated(None, _set(["edges", "m0->m1", "score"], True)), "finite number"),
    "NaN score": (EAP_2x2_TOP14.replace('"m0->m1": {"score": 1.0625', '"m0->m1": {"score": NaN'), "non-finite"),
    "overflowing score": (EAP_2x2_TOP14.replace('"m0->m1": {"score": 1.0625', '"m0->m1": {"score": 1e400'),
                          "finite number"),
    "duplicate edge": (EAP_2x2_TOP14.replace('"m0->m1": {"score": 1.0625, "in_graph": false}',
                                             '"m0->m1": {"score": 1.0625, "in_graph": false}, '
                                             '"m0->m1": {"score": 9.0, "in_graph": true}'), "appears twice"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_refused(tmp_path, case):
    text, message = BAD_FILES[case]
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(GraphFormatError, match=message):
        Graph.from_json(path)


@pytest.mark.parametrize(("expected", "field"), [
    (GraphConfig(3, 2, False, 8), "n_layers = 2 in the file, expected 3"),
    (GraphConfig(2, 4, False, 8), "n_heads = 2 in the file, expected 4"),
    (GraphConfig(2, 2, True, 8), "parallel_attn_mlp = False in the file, expected True"),
    (GraphConfig(2, 2, False, 768), "d_model = 8 in the file, expected 768"),
])
def test_files_of_another_model_shape_are_refused(tmp_path, expected, field):
    path = tmp_path / "eap.json"
    path.write_text(EAP_2x2_TOP14)
    with pytest.raises(GraphFormatError, match=field):
        Graph.from_json(path, expected=expected)
    assert Graph.from_json(path, expected=GraphConfig(2, 2, model_name="m")).cfg.model_name == "m"


def test_a_binary_file_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(GraphFormatError, match="UTF-8"):
        Graph.from_json(path)


# ---------------------------------------------------------------- frames, figure, bundles


def test_frames():
    graph = random_graph(2, 2, seed=7).top_n(12, empty_ok=True)
    frame = graph.to_frame()
    assert list(frame.columns) == ["edge", "parent", "child", "qkv", "parent_layer", "child_layer", "sender",
                                   "receiver", "score", "in_graph"]
    assert len(frame) == graph.n_edges and frame["in_graph"].sum() == graph.n_circuit_edges
    row = frame.set_index("edge").loc["a0.h1->a1.h0<k>"]
    assert (row.parent, row.child, row.qkv, row.parent_layer, row.child_layer) == ("a0.h1", "a1.h0", "k", 0, 1)
    assert row.score == graph.scores[graph.edge_index("a0.h1->a1.h0<k>")].item()
    assert frame.set_index("edge").loc["input->logits", ["parent_layer", "child_layer"]].tolist() == [-1, 2]
    nodes = graph.nodes_frame()
    assert nodes["kind"].tolist() == ["input", "head", "head", "mlp", "head", "head", "mlp", "logits"]
    assert nodes["head"].tolist() == [-1, 0, 1, -1, 0, 1, -1, -1]
    assert nodes["in_graph"].tolist() == graph.node_in_graph.tolist()


def edge_styles(fig):
    """{edge name: (score, line width, colour)}, matching each drawn segment to the hover
    point at its midpoint."""
    hover = next(t for t in fig.data if t.name == "edges")
    at = {(round(x, 6), round(y, 6)): text for x, y, text in zip(hover.x, hover.y, hover.hovertext)}
    styles = {}
    for trace in (t for t in fig.data if t.mode == "lines"):
        xs, ys = list(trace.x), list(trace.y)
        for i in range(0, len(xs), 3):
            assert xs[i + 2] is None
            text = at[(round((xs[i] + xs[i + 1]) / 2, 6), round((ys[i] + ys[i + 1]) / 2, 6))]
            name, score = text.split("<br>score ")
            styles[name] = (float(score), trace.line.width, trace.line.color)
    return styles


def test_figure_draws_the_circuit_edges_only():
    graph = random_graph(3, 2, seed=8).greedy(15)
    assert graph.n_circuit_edges == 14  # one greedy edge's parent never connects to input: pruned
    fig = graph.figure()
    styles = edge_styles(fig)
    assert set(styles) == {graph.edge_name(s, r) for s, r in graph.in_graph.nonzero().tolist()}
    for name, (score, width, colour) in styles.items():
        assert score == pytest.approx(graph.scores[graph.edge_index(name)].item(), rel=1e-3)
        assert colour == ("#2166ac" if score >= 0 else "#b2182b")
    by_size = sorted(styles.values(), key=lambda v: abs(v[0]))
    assert [w for _, w, _ in by_size] == sorted(w for _, w, _ in by_size)  # wider for larger |score|
    assert by_size[0][1] < by_size[-1][1]
    heads = next(t for t in fig.data if t.name == "heads")
    assert [list(c) for c in heads.customdata] == [[l, h] for l in range(3) for h in range(2)]
    in_circuit = [f"a{l}.h{h}" for l, h in heads.customdata if graph.node_in_graph[graph.node_index(f"a{l}.h{h}")]]
    assert [t for t in heads.text if t] == in_circuit
    assert fig.layout.xaxis.ticktext[0] == "input" and fig.layout.xaxis.ticktext[-1] == "logits"
    few = graph.figure(max_edges=3)
    assert sorted(abs(v[0]) for v in edge_styles(few).values()) == sorted(abs(v[0]) for v in by_size)[-3:]
    assert "3 of 14 edges shown" in few.layout.title.text


def test_bundle_round_trip(tmp_path):
    graph = random_graph(3, 2, seed=9).top_n(30, empty_ok=True)
    path = graph.described("toy-task", "random", {"seed": 9}).save(tmp_path)
    bundle = read_bundle(path)
    assert bundle.meta["analysis"] == "circuit" and bundle.meta["model"] == "toy"
    assert bundle.meta["parameters"] == {"graph": {"n_layers": 3, "n_heads": 2, "parallel_attn_mlp": False,
                                                   "d_model": 16}, "method": "random", "seed": 9}
    edges = bundle.table("edges")
    assert edges["edge"].tolist() == graph.to_frame()["edge"].tolist()
    assert edges["in_graph"].sum() == graph.n_circuit_edges
    # the figure is a function of the tables alone, so it can be drawn without torch
    drawn = circuit_figure(edges, bundle.table("nodes"), 3, 2, "toy")
    assert edge_styles(drawn) == edge_styles(graph.figure())
    back = Graph.from_bundle(path)
    assert back.cfg == graph.cfg
    assert torch.equal(back.scores.nan_to_num(5.0), graph.scores.nan_to_num(5.0))
    assert torch.equal(back.in_graph, graph.in_graph) and torch.equal(back.node_in_graph, graph.node_in_graph)
    with pytest.raises(ValueError, match="model name"):
        Graph.for_model(2, 2).save(tmp_path)
    with pytest.raises(ValueError, match=r"parameters \['graph'\] are written by the graph itself"):
        graph.described("toy-task", "random", {"graph": 1})
