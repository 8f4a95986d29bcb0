"""Path patching against a slow one-sender-at-a-time reference built from the model layer's
interventions (on the TransformerLens backend), on GPT-2 and grouped-query Llama/Gemma2 and
parallel GPT-NeoX configs; attribution patching against exact patching where first order is
exact."""

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from interp import load_model
from interp.models import Patch, Splice, sites
from interp.patching import attribution_patch, patch, path_patch
from interp.patching.path import _bytes_per_variant
from tests.helpers import random_model, random_model_folder, random_task

SHAPES = {"gpt2": dict(n_layers=3, n_heads=3, d_model=24, seed=31),
          "llama": dict(n_layers=3, n_heads=4, n_kv_heads=2, d_model=32, seed=32),
          "gpt_neox": dict(n_layers=3, n_heads=2, d_model=32, seed=33, gain=2.0),
          "gemma2": dict(n_layers=3, n_heads=4, n_kv_heads=1, d_model=32, d_head=8, seed=34)}


@pytest.fixture(scope="module", params=list(SHAPES))
def model(request, tmp_path_factory):
    return random_model(tmp_path_factory.mktemp(request.param), request.param, **SHAPES[request.param])


def make_task(model, seed=0):
    return random_task(model, seed=seed, batch=2, corrupted=slice(1, 4))


def metric_of(task, logits):
    rows = torch.arange(task.batch)
    final = logits[rows, task.answer_pos]
    return float((final[rows, task.answer] - final[rows, task.wrong]).mean().detach())


def head_attention(model, layer, q, k, v):
    """One query head's z `[B, pos, d_head]` from its pre-rotary q, k and v `[B, pos, d_head]`,
    written out: rotary, scale, soft-cap, causal and sliding-window masks, softmax."""
    f, a = model.functional(), model.arch
    n = q.shape[1]
    rot = f.rotary(torch.arange(n, device=q.device))
    if rot is not None:
        q, k = (f._rotate(t[:, :, None], *rot)[:, :, 0] for t in (q, k))
    scores = torch.einsum("bqd,bkd->bqk", q, k) * a.attn_scale[layer]
    if a.attn_softcap:
        scores = torch.tanh(scores / a.attn_softcap) * a.attn_softcap
    visible = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    if a.sliding_window[layer]:
        visible &= ~torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-a.sliding_window[layer])
    return torch.einsum("bqk,bkd->bqd", torch.softmax(scores.masked_fill(~visible, float("-inf")), -1), v)


def reference_path_patch(model, task, sender, receivers, receiver_input):
    """Wang et al.'s two steps, one sender at a time (denoising). Step 1 freezes every head's z
    at its corrupted value except the sender's (clean); step 2 gives each receiver query head
    the q/k/v input step 1 computed for it, its own copy under grouped-query attention."""
    cfg = model.cfg
    _, clean = model.run_with_cache(task.clean, sites=[sites.z(l) for l in range(cfg.n_layers)])
    _, corrupt = model.run_with_cache(task.corrupt, sites=[sites.z(l) for l in range(cfg.n_layers)])
    s_layer, s_head = sender
    frozen = [Patch(sites.z(l), source=corrupt) for l in range(cfg.n_layers)] + [Patch(sites.z(s_layer, s_head), source=clean)]
    by_layer = {}
    for l, h in receivers if receivers != "resid" else []:
        by_layer.setdefault(l, []).append(h)
    qkv = [sites.Site(kind, l) for l in by_layer for kind in "qkv"]
    with torch.no_grad():
        logits, step1 = model.run(task.corrupt, frozen, capture=qkv)
        if receivers == "resid":
            return metric_of(task, logits)
        edits, seen = [], {}

        def keep(kind, layer):
            def fn(act):
                seen[(kind, layer)] = act
                return act
            return fn

        def recompute(layer, heads):
            def fn(z):
                z = z.clone()
                for h in heads:
                    kv = cfg.kv_head(h)
                    q, k, v = seen[("q", layer)][:, :, h], seen[("k", layer)][:, :, kv], seen[("v", layer)][:, :, kv]
                    new = step1[sites.Site(receiver_input, layer)][:, :, h if receiver_input == "q" else kv]
                    q, k, v = {"q": (new, k, v), "k": (q, new, v), "v": (q, k, new)}[receiver_input]
                    z[:, :, h] = head_attention(model, layer, q, k, v)
                return z
            return fn
        for l, heads in by_layer.items():
            if l > s_layer:
                edits += [Splice(sites.Site(kind, l), fn=keep(kind, l)) for kind in "qkv"]
                edits.append(Splice(sites.z(l), fn=recompute(l, heads)))
        return metric_of(task, model.run(task.corrupt, edits)[0])


RECEIVERS = [([(2, 1)], "q"), ([(2, 0), (1, 1)], "k"), ([(2, 1), (2, 0)], "v"), ("resid", "v")]


@pytest.mark.parametrize("receivers,receiver_input", RECEIVERS, ids=["q", "k", "v", "resid"])
def test_path_patching_equals_slow_reference(model, receivers, receiver_input):
    task = make_task(model)
    ours = path_patch(model, task, receivers, receiver_input=receiver_input, normalize=False, progress=False)
    last = model.cfg.n_layers if receivers == "resid" else max(l for l, _ in receivers)
    scale = max(1.0, abs(ours.clean_metric))
    spread = 0.0
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            if layer >= last:
                assert torch.isnan(ours.values[layer, head])
                continue
            expected = reference_path_patch(model, task, (layer, head), receivers, receiver_input)
            assert ours.values[layer, head].item() == pytest.approx(expected, abs=1e-5 * scale), (layer, head)
            spread = max(spread, abs(expected - ours.corrupt_metric))
    assert spread > 1e-3 * scale, "some path must matter for the comparison to mean anything"


def test_path_patching_small_budget_same_numbers(model):
    task = make_task(model, seed=1)
    a = path_patch(model, task, [(2, 1)], receiver_input="v", progress=False, normalize=False)
    one_sender = 2 * _bytes_per_variant(model, task)  # room for one patched forward: a chunk of one sender
    b = path_patch(model, task, [(2, 1)], receiver_input="v", progress=False, normalize=False, memory_budget=one_sender)
    assert torch.allclose(a.values, b.values, atol=1e-6 * max(1.0, abs(a.clean_metric)), equal_nan=True)


def test_path_patching_bad_input(model):
    task = make_task(model)
    with pytest.raises(ValueError, match="receiver_input must be 'q', 'k' or 'v'"):
        path_patch(model, task, [(2, 0)], receiver_input="z", progress=False)
    with pytest.raises(IndexError, match=f"head {model.cfg.n_heads} is out of range"):
        path_patch(model, task, [(2, model.cfg.n_heads)], progress=False)
    with pytest.raises(ValueError, match="non-empty list"):
        path_patch(model, task, [], progress=False)


def _linear_tail_folder(folder, family, **shape):
    """A model that is linear after its last layer's attention: zero MLP weights, and norms
    made affine by an epsilon that dwarfs the variance (their scale raised to compensate)."""
    eps = {"gpt2": {"layer_norm_epsilon": 1e6}, "llama": {"rms_norm_eps": 1e6}}[family]
    random_model_folder(folder, family, **shape, **eps)
    hf = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "mlp" in name:
                p.zero_()
            elif ("ln" in name or "norm" in name) and name.endswith("weight"):
                p.mul_(1e3)
    hf.save_pretrained(folder)
    return load_model(folder, device="cpu")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def linear_tail_model(request, tmp_path_factory):
    shape = {"gpt2": dict(n_layers=2, n_heads=4, d_model=32, seed=35),
             "llama": dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=36)}[request.param]
    return _linear_tail_folder(tmp_path_factory.mktemp(request.param), request.param, **shape)


@pytest.mark.parametrize("component,per_position", [
    ("z", True), ("z", False), ("v", True), ("pattern", True), ("attn_out", True), ("resid_mid", True)])
def test_attribution_equals_exact_where_the_model_is_linear(linear_tail_model, component, per_position):
    m = linear_tail_model
    task = make_task(m, seed=2)
    exact = patch(m, task, component, per_position=per_position, normalize=False, progress=False)
    atp = attribution_patch(m, task, component, per_position=per_position, normalize=False)
    assert atp.axes == exact.axes
    last = m.cfg.n_layers - 1
    scale = float(exact.effects[last].abs().max())
    assert scale > 1e-3, "the patch must do something for the test to mean anything"
    assert torch.allclose(atp.values[last], exact.values[last], atol=1e-3 * scale, rtol=0)


def test_atp_star_fixes_keys_where_plain_atp_is_off(linear_tail_model):
    m = linear_tail_model
    task = make_task(m, seed=2)
    last = m.cfg.n_layers - 1
    exact = patch(m, task, "k", per_position=True, normalize=False, progress=False).values[last]
    atp = attribution_patch(m, task, "k", per_position=True, normalize=False).values[last]
    star = attribution_patch(m, task, "k", per_position=True, normalize=False, attention_fix=True).values[last]
    star_err, atp_err = float((star - exact).abs().max()), float((atp - exact).abs().max())
    assert star_err < 1e-3 * float((exact - exact.mean()).abs().max() + 1e-3)
    assert atp_err > 20 * star_err, "the softmax is nonlinear, so plain AtP must be visibly off here"


def test_compare_reports_correlation_and_misses(model):
    task = make_task(model, seed=3)
    exact = patch(model, task, "z", per_position=True, progress=False)
    atp = attribution_patch(model, task, "z", per_position=True)
    report = atp.compare(exact)
    assert report.n == exact.values.numel()
    assert -1 <= report.pearson <= 1
    assert exact.compare(exact).pearson == pytest.approx(1.0)
    assert exact.compare(exact).misses.empty
    flipped = exact.values.clone()
    flipped[0, 0, 0] = -flipped.abs().max() * 3
    assert len(dataclasses.replace(exact, values=flipped).compare(exact, threshold=0.0).misses) >= 1
    with pytest.raises(ValueError, match="different shapes"):
        atp.compare(patch(model, task, "z", per_position=False, progress=False))
