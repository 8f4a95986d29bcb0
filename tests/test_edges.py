"""Edge-level runs of the patching engine against slow references written here: one model
run per edge, through the model layer's interventions on the TransformerLens backend, with
the receiving head's attention recomputed by hand."""

import dataclasses

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
    assert small.receivers[:4] == ("a0.h0<q>", "a0.h1<q>", "a0.h0<k>", "a0.h1<k>") and small.receivers[-1] == "logits"
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
    task = task.to(logits.device)
    rows = torch.arange(task.batch, device=logits.device)
    final = logits[rows, task.answer_pos]
    return float((final[rows, task.answer] - final[rows, task.wrong]).mean())


@pytest.mark.parametrize("answer_pos", [None, (4, 3)], ids=["last", "earlier"])
def test_exact_edge_patching_equals_one_run_per_edge(model, answer_pos):
    task = random_task(model, seed=5, batch=2, n_pos=6, corrupted=slice(2, 4))
    if answer_pos is not None:  # answers read before the end, at a different position per prompt
        task = dataclasses.replace(task, answer_pos=torch.tensor(answer_pos))
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


def node_reference(model, task, group=None, alphas=None):
    """sum over runs of (a_u^corr - a_u^clean) . d metric / d a_u for every sender u, through
    the model layer's interventions: a zero-valued Add on each sender's output carries its
    gradient. `group` = ("input"|"attn"|"mlp", layer) interpolates that output between the
    corrupted (alpha 0) and clean (alpha 1) runs for each alpha; None: the clean run."""
    cfg = model.cfg
    outs = [sites.resid_pre(0)] + [s for l in range(cfg.n_layers) for s in (sites.head_out(l), sites.mlp_out(l))]
    with torch.no_grad():
        _, clean = model.run_with_cache(task.clean, sites=outs + [sites.attn_out(l) for l in range(cfg.n_layers)])
        _, corrupt = model.run_with_cache(task.corrupt, sites=outs + [sites.attn_out(l) for l in range(cfg.n_layers)])
    total = torch.zeros(1 + cfg.n_layers * (cfg.n_heads + 1))
    rows = torch.arange(task.batch)
    for alpha in ([None] if alphas is None else alphas):
        gates, edits = [], []
        if alpha is not None:
            kind, layer = group
            site = {"input": sites.resid_pre(0), "attn": sites.attn_out(layer) if layer >= 0 else None,
                    "mlp": sites.mlp_out(layer) if layer >= 0 else None}[kind]
            value = corrupt[site] + alpha * (clean[site] - corrupt[site])
            edits.append(Patch(site, source=value))
        for site in outs:
            g = torch.zeros_like(clean[site], requires_grad=True)
            gates.append(g)
            edits.append(Add(site, value=g))
        logits, _ = model.run(task.clean, edits)
        final = logits[rows, task.answer_pos]
        (final[rows, task.answer] - final[rows, task.wrong]).mean().backward()
        row = [(corrupt[outs[0]] - clean[outs[0]]).mul(gates[0].grad).sum()]
        for i, site in enumerate(outs[1:], start=1):
            d = (corrupt[site] - clean[site]) * gates[i].grad
            row += list(d.sum((0, 1, 3))) if site.kind == "head_out" else [d.sum()]
        total += torch.stack(row).detach()
    return total


def test_eap_sums_to_the_gradient_at_each_sender(model):
    from interp.patching.edges import eap

    task = random_task(model, seed=6, batch=2, n_pos=6, corrupted=slice(1, 3))
    layout, scores, _, _ = eap(model, task)
    ours = torch.nansum(scores, dim=1)
    expected = node_reference(model, task)
    assert torch.allclose(ours, expected, atol=1e-4 * expected.abs().max()), (ours, expected)
    assert expected.abs().max() > 1e-2


@pytest.mark.parametrize("variant", ["inputs", "activations"])
def test_eap_ig_sums_to_the_averaged_gradient_at_each_sender(model, variant):
    from interp.patching.edges import eap_ig

    task = random_task(model, seed=7, batch=2, n_pos=6, corrupted=slice(1, 3))
    steps = 3
    _, scores, _, _ = eap_ig(model, task, steps=steps, variant=variant, progress=False)
    if variant == "inputs":
        expected = node_reference(model, task, ("input", -1), [k / steps for k in range(steps)]) / steps
    else:
        groups = [("input", -1)] + [(kind, l) for l in range(model.cfg.n_layers) for kind in ("attn", "mlp")]
        alphas = [k / steps for k in range(1, steps + 1)]
        expected = sum(node_reference(model, task, g, alphas) for g in groups) / (len(groups) * steps)
    ours = torch.nansum(scores, dim=1)
    assert torch.allclose(ours, expected, atol=1e-4 * expected.abs().max()), (ours, expected)


def test_eap_ig_inputs_converges_to_the_integral(model):
    """Completeness of integrated gradients: the input node's scores sum to
    m(corrupt) - m(clean) as the number of steps grows; left Riemann sums converge as 1/steps,
    so 4x the steps cuts the error about 4x."""
    from interp.patching.edges import eap_ig

    task = random_task(model, seed=8, batch=2, n_pos=6, corrupted=slice(1, 3))
    errors = []
    for steps in (2, 8, 32):
        _, scores, m_clean, m_corrupt = eap_ig(model, task, steps=steps, progress=False)
        errors.append(abs(float(torch.nansum(scores[0])) - (m_corrupt - m_clean)))
    assert errors[1] < 0.4 * errors[0] and errors[2] < 0.4 * errors[1], errors


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_eap_equals_exact_edge_patching_where_the_model_is_linear(tmp_path, family):
    """After its last layer's values the linear-tail model is linear (affine norms, zero MLPs):
    for edges into those values and into the logits, first order is exact."""
    from interp.patching.edges import eap
    from tests.test_path_and_attribution import _linear_tail_folder

    shape = dict(n_layers=2, n_heads=2, d_model=24, seed=44) if family == "gpt2" else \
        dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=45)
    model = _linear_tail_folder(tmp_path, family, **shape)
    task = random_task(model, seed=9, batch=2, n_pos=6, corrupted=slice(1, 3))
    layout, exact, _, _ = edge_patch(model, task, progress=False)
    _, approx, _, _ = eap(model, task)
    linear = [r for r, name in enumerate(layout.receivers) if name == "logits" or (name.startswith("a1") and name.endswith("<v>"))]
    e, a = exact[:, linear], approx[:, linear]
    keep = ~torch.isnan(e)
    scale = float(e[keep].abs().max())
    assert scale > 1e-3
    assert torch.allclose(a[keep], e[keep], atol=1e-3 * scale)
    q_edges = [r for r, name in enumerate(layout.receivers) if name.startswith("a1") and name.endswith("<q>")]
    assert not torch.allclose(approx[:, q_edges].nan_to_num(), exact[:, q_edges].nan_to_num(), atol=1e-3 * scale), \
        "through the softmax first order is not exact"


def _masked_metric(model, task, masks, ablation="patching", start_layer=0, p0=0):
    from interp.patching.edges import ablated_outputs, masked_final
    from interp.patching.engine import Engine
    from interp.patching.sweep import _metric

    engine = Engine(model)
    with torch.no_grad():
        clean, corrupt = engine.run(task.clean), engine.run(task.corrupt)
        ablated = ablated_outputs(engine, task, clean, corrupt, ablation)
        final = masked_final(engine, EdgeLayout.for_model(model), clean, ablated, masks, task.answer_pos, start_layer, p0)
        return _metric(engine, final, task)


def test_masked_runs_reproduce_the_clean_run_the_corrupted_run_and_single_edges(model):
    task = random_task(model, seed=10, batch=2, n_pos=6, corrupted=slice(2, 4))
    layout, scores, m_clean, m_corrupt = edge_patch(model, task, progress=False)
    S, R = layout.exists.shape
    all_on, all_off = torch.ones(1, S, R, dtype=torch.bool), torch.zeros(1, S, R, dtype=torch.bool)
    scale = max(1.0, abs(m_clean))
    assert _masked_metric(model, task, all_on).mean().item() == pytest.approx(m_clean, abs=1e-5 * scale)
    assert _masked_metric(model, task, all_off).mean().item() == pytest.approx(m_corrupt, abs=1e-5 * scale)
    # every edge removed alone (one variant each, all in one batch) is exact edge patching
    edges = layout.exists.nonzero().tolist()
    masks = torch.ones(len(edges), S, R, dtype=torch.bool)
    for i, (s, r) in enumerate(edges):
        masks[i, s, r] = False
    single = _masked_metric(model, task, masks).mean(1) - m_clean
    expected = torch.stack([scores[s, r] for s, r in edges])
    assert torch.allclose(single, expected, atol=1e-5 * scale)
    # removals confined to layer 1 and later, and positions before the first corrupted token: the same
    late = masks[[i for i, (s, r) in enumerate(edges) if layout.receiver_layer[r] >= 1]]
    assert torch.allclose(_masked_metric(model, task, late, start_layer=1, p0=2), _masked_metric(model, task, late),
                          atol=1e-5 * scale)


def test_masked_run_with_two_edges_off_equals_two_edits_in_one_run(model):
    task = random_task(model, seed=11, batch=2, n_pos=6, corrupted=slice(1, 3))
    layout = EdgeLayout.for_model(model)
    masks = torch.ones(1, *layout.exists.shape, dtype=torch.bool)
    first, second = ("input", "a1.h1<v>"), ("a0.h0", "logits")  # both senders are upstream of both changes
    for s, r in (first, second):
        masks[0, layout.senders.index(s), layout.receivers.index(r)] = False
    ours = _masked_metric(model, task, masks).mean().item()
    with torch.no_grad():
        _, clean = model.run_with_cache(task.clean, sites=model.all_sites() + [sites.head_out(0)])
        _, corrupt = model.run_with_cache(task.corrupt, sites=model.all_sites() + [sites.head_out(0)])
    d_input = corrupt[sites.resid_pre(0)] - clean[sites.resid_pre(0)]
    d_head = corrupt[sites.head_out(0, 0)] - clean[sites.head_out(0, 0)]
    f, w = model.functional(), model.weights.layers[1]
    head, kv, dh = 1, model.cfg.kv_head(1), model.cfg.d_head
    h = f.norm(clean[sites.resid_pre(1)] + d_input, w.attn_norm)
    v_new = h @ w.w_v[kv * dh:(kv + 1) * dh].T + (0 if w.b_v is None else w.b_v[kv * dh:(kv + 1) * dh])
    z_head = head_attention(model, 1, clean[sites.q(1, head)], clean[sites.k(1, kv)], v_new)

    def replace(z):
        z = z.clone()
        z[:, :, head] = z_head
        return z
    rows = torch.arange(task.batch)
    with torch.no_grad():
        logits, _ = model.run(task.clean, [Splice(sites.z(1), fn=replace), Add(sites.resid_post(1), value=d_head)])
    final = logits[rows, task.answer_pos]
    expected = float((final[rows, task.answer] - final[rows, task.wrong]).mean())
    assert ours == pytest.approx(expected, abs=1e-5 * max(1.0, abs(expected)))


def test_mean_ablating_every_edge_leaves_the_mean_outputs(model):
    task = random_task(model, seed=12, batch=3, n_pos=6)
    layout = EdgeLayout.for_model(model)
    S, R = layout.exists.shape
    got = _masked_metric(model, task, torch.zeros(1, S, R, dtype=torch.bool), ablation="mean")[0]
    with torch.no_grad():
        cfg = model.cfg
        outs = [sites.resid_pre(0)] + [s for l in range(cfg.n_layers) for s in (sites.attn_out(l), sites.mlp_out(l))]
        _, cache = model.run_with_cache(task.clean, sites=outs)
        # the logits read the mean of every sender's output, plus nothing else (b_O is inside attn_out)
        final_in = sum(cache[s].mean(dim=(0, 1)) for s in outs)
        final = model.functional().final(final_in)
        logit = lambda ids: (final * model.weights.w_u[ids]).sum(-1) + (0 if model.weights.b_u is None else model.weights.b_u[ids])  # noqa: E731
        expected = logit(task.answer) - logit(task.wrong)
    assert torch.allclose(got, expected, atol=1e-4 * max(1.0, float(expected.abs().max())))


def test_batched_acdc_makes_the_sequential_decisions(model):
    from circuits.discovery import acdc

    loss, threshold = ("metric", 0.05) if model.cfg.family == "llama" else ("kl", 0.02)
    task = random_task(model, seed=13, batch=2, n_pos=6, corrupted=slice(2, 4))
    layout, fast, fast_scores = acdc(model, task, threshold, loss=loss, progress=False, memory_budget=2_000_000)
    _, slow, slow_scores = acdc(model, task, threshold, loss=loss, batched=False, progress=False)
    assert torch.equal(fast, slow)
    tried = ~torch.isnan(slow_scores)
    assert torch.equal(tried, ~torch.isnan(fast_scores))
    assert torch.allclose(fast_scores[tried], slow_scores[tried], atol=1e-5)
    kept = int(fast.sum())
    assert 0 < kept < layout.n_edges, "a non-trivial circuit"
