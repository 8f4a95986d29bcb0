"""Edge-level runs of the patching engine against slow references written here: one model
run per edge, through the model layer's interventions on the TransformerLens backend, with
the receiving head's attention recomputed by hand."""

import pytest
import torch

from interp.models import Add, Patch, Splice, sites
from interp.patching.edges import EdgeLayout, edge_patch
from tests.helpers import random_model, random_task
from tests.test_path_and_attribution import head_attention

SHAPES = {"gpt2": dict(n_layers=2, n_heads=2, d_model=24, seed=41),
          "llama": dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=42),
          "gpt_neox": dict(n_layers=2, n_heads=2, d_model=32, seed=43)}


@pytest.fixture(scope="module", params=list(SHAPES))
def model(request, tmp_path_factory):
    return random_model(tmp_path_factory.mktemp(request.param), request.param, **SHAPES[request.param])


def test_layout_counts_edges_as_eap_ig_does():
    # GPT-2 small: 32,491 edges (EAP-IG, MIB)
    assert EdgeLayout.build(12, 12, parallel=False).n_edges == 32491
    small = EdgeLayout.build(2, 2, parallel=False)
    assert small.senders == ("input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1")
    assert small.receivers[:4] == ("a0.h0<q>", "a0.h0<k>", "a0.h0<v>", "a0.h1<q>") and small.receivers[-1] == "logits"
    edge = lambda s, r: bool(small.exists[small.senders.index(s), small.receivers.index(r)])  # noqa: E731
    assert edge("a0.h1", "m0") and edge("m0", "a1.h0<k>") and edge("input", "logits")
    assert not edge("a1.h0", "a1.h1<q>") and not edge("m0", "m0") and not edge("a1.h0", "a0.h0<v>")
    parallel = EdgeLayout.build(2, 2, parallel=True)
    assert not bool(parallel.exists[parallel.senders.index("a0.h1"), parallel.receivers.index("m0")])
    assert parallel.n_edges == small.n_edges - 2 * 2


def sender_output(model, cache, name):
    if name == "input":
        return cache[sites.resid_pre(0)]
    if name.startswith("m"):
        return cache[sites.mlp_out(int(name[1:]))]
    layer, head = (int(x) for x in name[1:].split(".h"))
    return cache[sites.head_out(layer, head)]


def reference_edge(model, task, clean, corrupt, sender, receiver):
    """The metric of the clean run with one edge carrying the corrupted sender output."""
    delta = sender_output(model, corrupt, sender) - sender_output(model, clean, sender)
    rows = torch.arange(task.batch)
    if receiver == "logits":
        edit = Add(sites.resid_post(model.cfg.n_layers - 1), value=delta)
    elif receiver.startswith("m"):
        layer = int(receiver[1:])
        edit = Patch(sites.mlp_in(layer), source=clean[sites.mlp_in(layer)] + delta)
    else:
        layer, head = (int(x) for x in receiver[1:].split("<")[0].split(".h"))
        kind, kv = receiver[-2], model.cfg.kv_head(head)
        x = clean[sites.resid_pre(layer)] + delta
        f, w = model.functional(), model.weights.layers[layer]
        h = f.norm(x, w.attn_norm)
        dh = model.cfg.d_head
        def project(which, index):
            rows_ = slice(index * dh, (index + 1) * dh)
            bias = getattr(w, f"b_{which}")
            return h @ getattr(w, f"w_{which}")[rows_].T + (0 if bias is None else bias[rows_])
        q, k, v = clean[sites.q(layer, head)], clean[sites.k(layer, kv)], clean[sites.v(layer, kv)]
        new = project(kind, head if kind == "q" else kv)
        q, k, v = {"q": (new, k, v), "k": (q, new, v), "v": (q, k, new)}[kind]
        z_head = head_attention(model, layer, q, k, v)

        def replace(z):
            z = z.clone()
            z[:, :, head] = z_head
            return z
        edit = Splice(sites.z(layer), fn=replace)
    logits, _ = model.run(task.clean, [edit])
    final = logits[rows, task.answer_pos]
    return float((final[rows, task.answer] - final[rows, task.wrong]).mean())


def test_exact_edge_patching_equals_one_run_per_edge(model):
    task = random_task(model, seed=5, batch=2, n_pos=6, corrupted=slice(2, 4))
    layout, scores, m_clean, _ = edge_patch(model, task, progress=False, memory_budget=200_000)
    with torch.no_grad():
        _, clean = model.run_with_cache(task.clean, sites=model.all_sites() + [sites.head_out(l) for l in range(2)])
        _, corrupt = model.run_with_cache(task.corrupt, sites=model.all_sites() + [sites.head_out(l) for l in range(2)])
        checked, largest = 0, 0.0
        for s, sender in enumerate(layout.senders):
            for r, receiver in enumerate(layout.receivers):
                if not layout.exists[s, r]:
                    assert torch.isnan(scores[s, r])
                    continue
                expected = reference_edge(model, task, clean, corrupt, sender, receiver) - m_clean
                assert scores[s, r].item() == pytest.approx(expected, abs=1e-5 * max(1.0, abs(m_clean))), (sender, receiver)
                checked, largest = checked + 1, max(largest, abs(expected))
    assert checked == layout.n_edges
    assert largest > 1e-2 * max(1.0, abs(m_clean)), "edges with sizeable effects"
