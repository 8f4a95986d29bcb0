"""Path patching against a slow one-sender-at-a-time reference built from TransformerLens hooks,
and attribution patching against exact patching where first order is exact."""

import pytest
import torch
from transformers import GPT2LMHeadModel

from interp import load_model
from interp.patching import attribution_patch, patch, path_patch
from tests.helpers import random_gpt2, random_gpt2_folder, random_task


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return random_gpt2(tmp_path_factory.mktemp("gpt2"), n_layer=3, n_head=3, n_embd=24, seed=4)


def make_task(model, seed=0):
    return random_task(model, seed=seed, corrupted=slice(1, 4))


def metric_of(task, logits):
    rows = torch.arange(task.batch)
    final = logits[rows, task.answer_pos]
    return float((final[rows, task.answer] - final[rows, task.wrong]).mean().detach())


def reference_path_patch(model, task, sender, receivers, receiver_input):
    """Wang et al.'s two steps, one sender at a time, through the bridge's hooks (denoising)."""
    _, clean = model.run_with_cache(task.clean)
    _, corrupt = model.run_with_cache(task.corrupt)
    s_layer, s_head = sender

    def freeze(layer):
        def hook(z, hook):
            z = corrupt.z(layer).clone()
            if layer == s_layer:
                z[:, :, s_head] = clean.z(layer)[:, :, s_head]
            return z
        return hook

    captured = {}

    def capture(layer, heads):
        def hook(act, hook):
            captured[layer] = act[:, :, heads].clone()
        return hook

    by_layer = {}
    for l, h in receivers if receivers != "resid" else []:
        by_layer.setdefault(l, []).append(h)
    hooks = [(f"blocks.{l}.attn.hook_z", freeze(l)) for l in range(model.cfg.n_layers)]
    hooks += [(f"blocks.{l}.attn.hook_{receiver_input}", capture(l, hs)) for l, hs in by_layer.items()]
    logits = model.run_with_hooks(task.corrupt, fwd_hooks=hooks)
    if receivers == "resid":
        return metric_of(task, logits)

    def replace(layer, heads):
        def hook(act, hook):
            act = act.clone()
            act[:, :, heads] = captured[layer]
            return act
        return hook

    hooks = [(f"blocks.{l}.attn.hook_{receiver_input}", replace(l, hs)) for l, hs in by_layer.items() if l > s_layer]
    return metric_of(task, model.run_with_hooks(task.corrupt, fwd_hooks=hooks))


@pytest.mark.parametrize("receivers,receiver_input", [
    ([(2, 1)], "q"), ([(2, 0), (1, 2)], "k"), ([(2, 2), (2, 0)], "v"), ("resid", "v")])
def test_path_patching_equals_slow_reference(model, receivers, receiver_input):
    task = make_task(model)
    ours = path_patch(model, task, receivers, receiver_input=receiver_input, normalize=False, progress=False)
    last = model.cfg.n_layers if receivers == "resid" else max(l for l, _ in receivers)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            if layer >= last:
                assert torch.isnan(ours.values[layer, head])
                continue
            expected = reference_path_patch(model, task, (layer, head), receivers, receiver_input)
            assert ours.values[layer, head].item() == pytest.approx(expected, abs=1e-5), (layer, head)


def test_path_patching_small_budget_same_numbers(model):
    task = make_task(model, seed=1)
    a = path_patch(model, task, [(2, 1)], receiver_input="v", progress=False, normalize=False)
    b = path_patch(model, task, [(2, 1)], receiver_input="v", progress=False, normalize=False, memory_budget=250_000)  # two senders per chunk
    assert torch.allclose(a.values, b.values, atol=1e-6, equal_nan=True)


def test_path_patching_bad_input(model):
    task = make_task(model)
    with pytest.raises(ValueError, match="receiver_input must be 'q', 'k' or 'v'"):
        path_patch(model, task, [(2, 0)], receiver_input="z", progress=False)
    with pytest.raises(IndexError, match="head 5 is out of range"):
        path_patch(model, task, [(2, 5)], progress=False)
    with pytest.raises(ValueError, match="non-empty list"):
        path_patch(model, task, [], progress=False)


@pytest.fixture(scope="module")
def linear_tail_model(tmp_path_factory):
    """A GPT-2 that is linear after its last layer's attention: zero MLP weights, and LayerNorms
    made affine by an epsilon that dwarfs the variance (their scale raised to compensate)."""
    folder = random_gpt2_folder(tmp_path_factory.mktemp("lin"), n_layer=2, n_head=4, n_embd=32,
                                layer_norm_epsilon=1e6)
    hf = GPT2LMHeadModel.from_pretrained(folder)
    with torch.no_grad():
        for block in hf.transformer.h:
            block.mlp.c_fc.weight.zero_()
            block.mlp.c_proj.weight.zero_()
        for name, p in hf.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.mul_(5e4)
    hf.save_pretrained(folder)
    return load_model(folder, device="cpu")


@pytest.mark.parametrize("component,per_position", [
    ("z", True), ("z", False), ("v", True), ("pattern", True), ("attn_out", True), ("resid_mid", True)])
def test_attribution_equals_exact_where_the_model_is_linear(linear_tail_model, component, per_position):
    m = linear_tail_model
    task = make_task(m, seed=2)
    exact = patch(m, task, component, per_position=per_position, normalize=False, progress=False)
    atp = attribution_patch(m, task, component, per_position=per_position, normalize=False)
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
    import dataclasses
    assert len(dataclasses.replace(exact, values=flipped).compare(exact, threshold=0.0).misses) >= 1
    with pytest.raises(ValueError, match="different shapes"):
        atp.compare(patch(model, task, "z", per_position=False, progress=False))
