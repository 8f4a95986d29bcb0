"""circuits.reuse against independent references: overlaps and Jaccard indices recomputed by
hand from the graphs' scores, correlations from scipy, ablation scores from a plain Hugging
Face forward pass whose head outputs are zeroed by a hook written here."""

import dataclasses
import math

import pytest
import scipy.stats
import torch
from transformers import GPT2LMHeadModel

from circuits.graph import Graph
from circuits.reuse import compare_circuits, compare_graphs, head_importance, random_control_heads
from interp.patching import Task
from tests.helpers import hf_hooked_logit_diff, hf_zeroed_logit_diff as hf_metric, random_gpt2_folder, random_task
from interp import load_model


def scored_graph(seed: int, n_layers=3, n_heads=4, ties: bool = False) -> Graph:
    """A graph with random edge scores on its edges and random node scores (rounded to one
    decimal with `ties`, so that some heads tie)."""
    graph = Graph.for_model(n_layers, n_heads)
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(graph.n_senders, graph.n_receivers, generator=gen, dtype=torch.float64)
    scores[~graph.exists] = math.nan
    node_scores = torch.randn(graph.n_nodes, generator=gen, dtype=torch.float64)
    if ties:
        node_scores = (node_scores * 2).round() / 2
    return graph.with_scores(scores, node_scores=node_scores)


def by_hand(graph: Graph, k: int, n: int):
    """(importance {head: |node score|}, top-k heads, top-n edges), written without circuits.reuse."""
    nodes = list(graph.nodes)
    importance = {(layer, head): abs(graph.node_scores[nodes.index(f"a{layer}.h{head}")].item())
                  for layer in range(graph.cfg.n_layers) for head in range(graph.cfg.n_heads)}
    heads = sorted(importance, key=lambda h: -importance[h])[:k]  # stable: ties keep (layer, head) order
    frame = graph.to_frame()
    edges = list(frame.assign(size=frame.score.abs()).sort_values("size", ascending=False).edge[:n])
    return importance, heads, edges


@pytest.mark.parametrize("ties", [False, True])
def test_compare_graphs_matches_a_hand_computation(ties):
    a, b = scored_graph(0, ties=ties), scored_graph(1, ties=ties)
    k, n = 5, 40
    overlap = compare_graphs(a, b, top_k=k, top_n=n)
    imp_a, heads_a, edges_a = by_hand(a, k, n)
    imp_b, heads_b, edges_b = by_hand(b, k, n)
    assert overlap.top_heads_a == heads_a and overlap.top_heads_b == heads_b
    assert set(overlap.top_edges_a) == set(edges_a) and set(overlap.top_edges_b) == set(edges_b)
    assert set(overlap.shared_heads) == set(heads_a) & set(heads_b)
    assert set(overlap.shared_edges) == set(edges_a) & set(edges_b)
    assert overlap.head_jaccard == pytest.approx(len(set(heads_a) & set(heads_b)) / len(set(heads_a) | set(heads_b)))
    assert overlap.edge_jaccard == pytest.approx(len(set(edges_a) & set(edges_b)) / len(set(edges_a) | set(edges_b)))
    x, y = list(imp_a.values()), list(imp_b.values())
    assert [[overlap.importance_a[layer, head].item() for head in range(4)] for layer in range(3)] == \
        [[imp_a[(layer, head)] for head in range(4)] for layer in range(3)]
    assert overlap.head_pearson == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
    assert overlap.head_spearman == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)


def test_a_graph_compared_with_itself_overlaps_fully():
    a = scored_graph(3)
    overlap = compare_graphs(a, a, top_k=4, top_n=10)
    assert overlap.head_jaccard == 1.0 and overlap.edge_jaccard == 1.0
    assert overlap.head_pearson == pytest.approx(1.0) and overlap.head_spearman == pytest.approx(1.0)
    assert overlap.shared_heads == overlap.top_heads_a and len(overlap.shared_edges) == 10


@pytest.mark.parametrize("kwargs,message", [
    ({"top_k": 0}, "top_k must be an integer from 1 to the 12 heads"),
    ({"top_k": 13}, "top_k must be an integer from 1 to the 12 heads"),
    ({"top_k": 2.0}, "top_k must be an integer"),
    ({"top_n": 0}, "top_n must be an integer from 1 to the"),
    ({"top_n": 10**6}, "top_n must be an integer from 1 to the"),
])
def test_compare_graphs_refuses_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compare_graphs(scored_graph(0), scored_graph(1), **kwargs)


def test_compare_graphs_refuses_graphs_of_different_shapes_and_missing_node_scores():
    with pytest.raises(ValueError, match="different shapes"):
        compare_graphs(scored_graph(0), scored_graph(1, n_layers=2))
    unscored = Graph.for_model(3, 4)
    with pytest.raises(ValueError, match="no node score on 12 of its 12 heads"):
        head_importance(unscored)


def test_random_control_heads_avoid_the_shared_set_and_repeat_from_the_seed():
    shared = [(0, 1), (2, 3)]
    sets = random_control_heads(3, 4, shared, n_sets=20, seed=5)
    assert len(sets) == 20 and all(len(s) == 2 and len(set(s)) == 2 for s in sets)
    assert not any(h in shared for s in sets for h in s)
    assert sets == random_control_heads(3, 4, shared, n_sets=20, seed=5)
    assert len({tuple(s) for s in sets}) > 1
    with pytest.raises(ValueError, match="needs 7 heads outside the shared set, but only 5"):
        random_control_heads(3, 4, [(layer, head) for layer in range(3) for head in range(4)][:7], n_sets=1)


def check_against_hf(reuse, hf, tasks):
    """Overlap recomputed by hand from the result's own graphs; ablation scores from `hf_metric`."""
    o = reuse.overlap
    k, n = len(o.top_heads_a), len(o.top_edges_a)
    _, heads_a, edges_a = by_hand(reuse.graph_a, k, n)
    _, heads_b, edges_b = by_hand(reuse.graph_b, k, n)
    assert set(o.shared_heads) == set(heads_a) & set(heads_b)
    assert o.head_jaccard == pytest.approx(len(set(heads_a) & set(heads_b)) / len(set(heads_a) | set(heads_b)))
    assert o.edge_jaccard == pytest.approx(len(set(edges_a) & set(edges_b)) / len(set(edges_a) | set(edges_b)))
    for task in tasks:
        scores = reuse.ablation_scores[task.name]
        assert scores["clean"] == pytest.approx(hf_metric(hf, task, []), abs=1e-4)
        assert scores["shared"] == pytest.approx(hf_metric(hf, task, o.shared_heads), abs=1e-4)
        for heads, value in zip(reuse.random_heads, scores["random"]):
            assert not set(heads) & set(o.shared_heads)
            assert value == pytest.approx(hf_metric(hf, task, heads), abs=1e-4)
    frame = reuse.intervention_frame()
    for task in tasks:
        row = frame.set_index("task").loc[task.name]
        s = reuse.ablation_scores[task.name]
        assert row.drop_shared == pytest.approx(s["clean"] - s["shared"])
        assert row.drop_random_mean == pytest.approx(s["clean"] - sum(s["random"]) / len(s["random"]))


def test_compare_circuits_on_a_random_model_matches_hugging_face(tmp_path):
    folder = random_gpt2_folder(tmp_path / "m", n_layer=2, n_head=4, n_embd=32)
    model = load_model(folder, device="cpu")
    task_a = random_task(model, seed=0, batch=4)
    task_b = dataclasses.replace(random_task(model, seed=1, batch=4), name="random-b")
    reuse = compare_circuits(model, task_a, task_b, "eap", top_k=4, top_n=15, n_random=3, seed=1)
    assert reuse.method == "eap" and reuse.task_a == "random" and reuse.task_b == "random-b"
    if not reuse.overlap.shared_heads:
        pytest.fail("the seeds were chosen so that the top-4 sets share a head; they share none")
    check_against_hf(reuse, GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval(),
                     [task_a, task_b])
    frame = reuse.to_frame()
    assert len(frame) == 8 and frame.shared.sum() == len(reuse.overlap.shared_heads)


def test_compare_circuits_refuses_bad_tasks(tmp_path):
    model = load_model(random_gpt2_folder(tmp_path / "m", n_layer=1, n_head=2, n_embd=16), device="cpu")
    task = random_task(model)
    with pytest.raises(TypeError, match="task_b must be an interp.patching.Task, got str"):
        compare_circuits(model, task, "ioi")
    with pytest.raises(ValueError, match="different names"):
        compare_circuits(model, task, random_task(model, seed=1))
    other = dataclasses.replace(random_task(model, seed=1), name="other")
    with pytest.raises(ValueError, match="n_random must be an integer >= 1, got 0"):
        compare_circuits(model, task, other, n_random=0)



# ---------------------------------------------------------------- attention transplant

def hf_transplanted_logit_diff(hf: GPT2LMHeadModel, task: Task, heads, source_roles: torch.Tensor) -> float:
    """The target task's mean logit difference when each head's attention from the answer
    position is rewritten (roles found by comparing tokens in a loop) and its z recomputed from
    the value vectors, in hooks on the plain Hugging Face GPT-2. Prompts of one length only."""
    n_head, d_model = hf.config.n_head, hf.config.n_embd
    d_head = d_model // n_head
    qkv = {}

    def keep_qkv(layer):
        def hook(module, args, out):
            qkv[layer] = out
        return hook

    def rewrite_z(layer):
        def hook(module, args):
            z = args[0].clone()
            q, k, v = (t.reshape(*t.shape[:2], n_head, d_head) for t in qkv[layer].split(d_model, dim=-1))
            for i_head, (l, h) in enumerate(heads):
                if l != layer:
                    continue
                for b in range(task.batch):
                    p = int(task.answer_pos[b])
                    row = torch.softmax(k[b, :p + 1, h] @ q[b, p, h] / d_head ** 0.5, dim=0)
                    tokens = task.clean[b, :p + 1].tolist()
                    groups = {"answer": [], "wrong": [], "first": [], "other": []}
                    for pos, t in enumerate(tokens):
                        role = ("answer" if t == task.answer[b] else "wrong" if t == task.wrong[b]
                                else "first" if pos == 0 else "other")
                        groups[role].append(pos)
                    new = torch.zeros_like(row)
                    for r, role in enumerate(("answer", "wrong", "first", "other")):
                        mass = source_roles[i_head, r].item()
                        target = groups[role] or groups["other"]
                        weights = row[target]
                        new[target] += mass * (weights / weights.sum() if weights.sum() > 0 else 1 / len(target))
                    z[b, p, h * d_head:(h + 1) * d_head] = new @ v[b, :p + 1, h]
            return (z,)
        return hook

    handles = []
    for layer in {l for l, _ in heads}:
        handles.append(hf.transformer.h[layer].attn.c_attn.register_forward_hook(keep_qkv(layer)))
        handles.append(hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(rewrite_z(layer)))
    return hf_hooked_logit_diff(hf, task, handles)


@pytest.fixture(scope="module")
def ioi_kept():
    from interp.zoo.registry import get_embedded

    folder = get_embedded("zoo/ioi-kept").folder
    return load_model(folder, device="cpu"), GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()


def test_transplant_attention_matches_hugging_face_hooks(ioi_kept):
    from circuits.reuse import attention_roles, transplant_attention
    from circuits.tasks import ioi_task, kept_object_task

    model, hf = ioi_kept
    source = ioi_task(model, n=12, seed=5, template="when-went")
    target = kept_object_task(model, n=12, seed=5, template="had/lost-kept")
    heads = [(1, 0), (3, 2), (2, 3), (3, 1)]
    result = transplant_attention(model, source, target, heads, batch_size=5)  # parts of 5, 5 and 2 prompts
    assert result.heads == sorted(heads)  # the roles' rows follow (layer, head) order
    heads = result.heads
    assert result.source_roles.sum(-1) == pytest.approx(torch.ones(4), abs=1e-5)
    assert result.source_roles == pytest.approx(attention_roles(model, source, heads).float())
    assert result.before == pytest.approx(target.evaluate(model))
    reference = hf_transplanted_logit_diff(hf, target, heads, result.source_roles.double())
    assert abs(result.after - result.before) > 0.05  # the check below is not vacuous
    assert result.after == pytest.approx(reference, abs=1e-4)
    frame = result.to_frame()
    assert len(frame) == 16 and set(frame.role) == {"answer", "wrong", "first", "other"}


def test_transplant_of_a_prompt_onto_itself_changes_nothing(ioi_kept):
    from circuits.reuse import transplant_attention
    from circuits.tasks import kept_object_task

    model, _ = ioi_kept
    task = kept_object_task(model, n=1, seed=8, template="saw-the/i-took")
    result = transplant_attention(model, task, task, [(0, 0), (2, 3), (3, 2)])
    assert result.after == pytest.approx(result.before, abs=1e-4)
    assert result.target_roles == pytest.approx(result.source_roles)


def test_transplant_attention_refuses_bad_heads_and_tasks(ioi_kept):
    from circuits.reuse import transplant_attention
    from circuits.tasks import kept_object_task

    model, _ = ioi_kept
    task = kept_object_task(model, n=2, seed=0)
    with pytest.raises(ValueError, match="at least one"):
        transplant_attention(model, task, task, [])
    for bad, error, message in [((4, 0), IndexError, "layer 4 is out of range"), ((0, 8), IndexError, "head 8 is out"),
                                ((0, -1), IndexError, "head -1 is out"), ((1.0, 2), TypeError, "layer must be an int"),
                                ((True, 1), TypeError, "layer must be an int"), ("L1H2", ValueError, "pairs")]:
        with pytest.raises(error, match=message):
            transplant_attention(model, task, task, [bad])
    with pytest.raises(ValueError, match=r"distinct; named more than once: \[\(1, 1\)\]"):
        transplant_attention(model, task, task, [(1, 1), (2, 0), (1, 1)])
    with pytest.raises(TypeError, match="source must be an interp.patching.Task"):
        transplant_attention(model, "ioi", task, [(1, 1)])


def test_redistribute_by_hand():
    from circuits.reuse import _redistribute

    # one prompt, 4 positions: 0 first, 1 answer, 2 and 3 other; no "wrong" position
    rows = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    masks = torch.tensor([[[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]]], dtype=torch.bool)
    roles = torch.tensor([0.5, 0.2, 0.1, 0.2], dtype=torch.float64)  # answer, wrong, first, other
    # the missing role's 0.2 joins "other" (0.4 in all), spread 3:4 as the row spreads it there
    expected = torch.tensor([[0.1, 0.5, 0.4 * 3 / 7, 0.4 * 4 / 7]], dtype=torch.float64)
    assert torch.allclose(_redistribute(rows, masks, roles), expected)
    # a role the row gives no attention is filled evenly
    assert torch.allclose(_redistribute(torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64), masks, roles),
                          torch.tensor([[0.1, 0.5, 0.2, 0.2]], dtype=torch.float64))


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_transplant_attention_on_grouped_and_rotary_families(tmp_path, family):
    """On a grouped-query Llama and a rotary GPT-NeoX: a prompt transplanted onto itself is
    unchanged, and another task's attention profile does change the metric."""
    from circuits.reuse import attention_roles, transplant_attention
    from tests.helpers import random_model

    model = random_model(tmp_path / family, family, n_layers=2, n_heads=4, n_kv_heads=2 if family == "llama" else 4,
                         d_model=32)
    task = random_task(model, seed=3, batch=1, n_pos=8)
    task.clean[0, 2], task.clean[0, 5] = task.answer[0], task.wrong[0]  # every role present
    heads = [(0, 1), (1, 3)]
    same = transplant_attention(model, task, task, heads)
    assert same.after == pytest.approx(same.before, abs=1e-5)
    other = dataclasses.replace(task, clean=task.clean.clone())
    other.clean[0, 3] = task.answer[0]  # the answer mentioned twice: another role profile
    moved = transplant_attention(model, other, task, heads)
    assert not torch.allclose(moved.source_roles, moved.target_roles, atol=1e-3)
    assert moved.source_roles == pytest.approx(attention_roles(model, other, heads).float())
    assert abs(moved.after - moved.before) > 1e-4
