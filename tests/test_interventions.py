"""Sites and interventions on every backend (lens, nnsight) against a reference forward
written here: attention by hand (key/value heads repeated, -inf masks), each site edited where
the transformer computes it. The reference's norms and MLPs come from the plain-tensor forward,
which test_architectures checks against Hugging Face."""

import pytest
import torch
import torch.nn.functional as F

from interp import load_model
from interp.models import Add, Mean, Patch, Scale, Splice, Zero, sites
from interp.models.loading import BACKENDS
from interp.models.sites import Site, parse
from tests.helpers import random_model_folder

FAMILIES = ("gpt2", "gpt_neox", "llama", "gemma2")


@pytest.fixture(scope="module", params=FAMILIES)
def folder(request, tmp_path_factory):
    shape = {"gpt2": dict(n_layers=2, n_heads=4, d_model=32, seed=11),
             "gpt_neox": dict(n_layers=2, n_heads=4, d_model=32, seed=12),
             "llama": dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=13),
             "gemma2": dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, d_head=8, seed=14)}[request.param]
    return random_model_folder(tmp_path_factory.mktemp(request.param), request.param, **shape)


@pytest.fixture(scope="module", params=BACKENDS)
def model(request, folder):
    return load_model(folder, device="cpu", backend=request.param)


def reference(model, tokens, edits):
    """Logits and every activation, with `edits[(kind, layer)](activation) -> activation`
    applied where the activation is computed. Queries and keys are edited before rotary."""
    f, a, w = model.functional(), model.arch, model.weights
    acts = {}

    def at(kind, layer, value):
        value = edits[(kind, layer)](value) if (kind, layer) in edits else value
        acts[(kind, layer)] = value
        return value

    n = tokens.shape[1]
    positions = torch.arange(n)
    rot = f.rotary(positions)
    e = at("embed", None, w.w_e[tokens] * torch.tensor(w.embed_scale))
    x = e + (w.w_pos[positions] if w.w_pos is not None else 0)
    for layer, lw in enumerate(w.layers):
        x = at("resid_pre", layer, x)
        h = f.norm(x, lw.attn_norm)
        q = at("q", layer, F.linear(h, lw.w_q, lw.b_q).unflatten(-1, (a.n_heads, a.d_head)))
        k = at("k", layer, F.linear(h, lw.w_k, lw.b_k).unflatten(-1, (a.n_kv_heads, a.d_head)))
        v = at("v", layer, F.linear(h, lw.w_v, lw.b_v).unflatten(-1, (a.n_kv_heads, a.d_head)))
        if rot is not None:
            q, k = f._rotate(q, *rot), f._rotate(k, *rot)
        group = a.n_heads // a.n_kv_heads
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * a.attn_scale[layer]
        if a.attn_softcap:
            scores = torch.tanh(scores / a.attn_softcap) * a.attn_softcap
        visible = torch.ones(n, n, dtype=torch.bool).tril()
        if a.sliding_window[layer]:
            visible &= ~torch.ones(n, n, dtype=torch.bool).tril(-a.sliding_window[layer])
        pattern = at("pattern", layer, torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1))
        z = at("z", layer, torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        w_o = lw.w_o.view(a.d_model, a.n_heads, a.d_head)
        head_out = at("head_out", layer, torch.einsum("bqhe,dhe->bqhd", z, w_o))
        attn = head_out.sum(2) + (lw.b_o if lw.b_o is not None else 0)
        if lw.attn_post_norm is not None:
            attn = f.norm(attn, lw.attn_post_norm)
        attn = at("attn_out", layer, attn)
        if a.block == "parallel":
            mlp = at("mlp_out", layer, f.mlp(layer, at("mlp_in", layer, x)))
            x = x + attn + mlp
        else:
            mid = at("resid_mid", layer, x + attn)
            mlp = at("mlp_out", layer, f.mlp(layer, at("mlp_in", layer, mid)))
            x = mid + mlp
        x = at("resid_post", layer, x)
    return at("logits", None, f.unembed(f.final(x))), acts


def _tokens(model, seed=0):
    return torch.randint(3, model.cfg.d_vocab, (2, 9), generator=torch.Generator().manual_seed(seed))


EDITABLE = ["embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_in", "mlp_out", "q", "k", "v", "z",
            "pattern", "head_out", "logits"]


@pytest.mark.parametrize("kind", EDITABLE)
def test_add_at_one_position_and_head_equals_the_reference(model, kind):
    if kind == "resid_mid" and model.cfg.parallel:
        pytest.skip("parallel blocks have no resid_mid (tested below)")
    tokens = _tokens(model)
    layer = None if kind in ("embed", "logits") else 1 if kind != "embed" else None
    head = 1 if kind in ("q", "k", "v", "z", "pattern", "head_out") else None
    site = Site(kind, layer, head)
    with torch.no_grad():
        _, acts = reference(model, tokens, {})
        whole = acts[(kind, layer)]
        sub = whole[:, 1, 3] if kind == "pattern" else whole[:, 3, head] if head is not None else whole[:, 3]
        delta = 0.5 * torch.randn(sub.shape[1:], generator=torch.Generator().manual_seed(1))
        if kind == "pattern":
            delta = delta.abs() * (torch.arange(delta.shape[0]) <= 3)  # still a causal row

        def edit(t):
            t = t.clone()
            if kind == "pattern":
                t[:, 1, 3] += delta
            elif head is not None:
                t[:, 3, head] += delta
            else:
                t[:, 3] += delta
            return t
        expected, expected_acts = reference(model, tokens, {(kind, layer): edit})
        got, cache = model.run(tokens, interventions=[Add(site, positions=3, value=delta)], capture=[site.all_heads])
    assert (expected - reference(model, tokens, {})[0]).abs().max() > 1e-3, "the edit matters"
    assert torch.allclose(got, expected, atol=1e-4), f"{site}: {(got - expected).abs().max():.2e}"
    assert torch.allclose(cache[site.all_heads], expected_acts[(kind, layer)], atol=1e-4), "captured after the edit"


def test_every_captured_site_equals_the_reference(model):
    tokens = _tokens(model, seed=3)
    with torch.no_grad():
        logits, acts = reference(model, tokens, {})
        out, cache = model.run_with_cache(tokens)
        _, extra = model.run(tokens, capture=[sites.head_out(0), sites.q_in(1), sites.k_in(1, 2)])
    assert torch.allclose(out, logits, atol=1e-4)
    for (kind, layer), value in acts.items():
        site = Site(kind, layer)
        if site in cache:
            assert torch.allclose(cache[site], value, atol=1e-4), str(site)
    assert torch.allclose(extra[sites.head_out(0)], acts[("head_out", 0)], atol=1e-4)
    per_head = extra[sites.q_in(1)]
    assert per_head.shape == (2, 9, model.cfg.n_heads, model.cfg.d_model)
    assert torch.allclose(per_head[:, :, 3], acts[("resid_pre", 1)], atol=1e-5)
    assert torch.allclose(extra[sites.k_in(1, 2)], acts[("resid_pre", 1)], atol=1e-5)
    assert torch.allclose(cache["blocks.1.attn.hook_z"], acts[("z", 1)], atol=1e-4), "TransformerLens names read too"
    assert torch.allclose(cache[sites.z(1, 2)], acts[("z", 1)][:, :, 2], atol=1e-4), "one head"


def _blocks_run(model, fn) -> set[int]:
    """The Hugging Face decoder layers whose submodules finished a forward while `fn()` ran."""
    import re

    ran, handles = set(), []
    for name, module in model._backend.hf_model.named_modules():
        found = re.search(r"\.(?:h|layers)\.(\d+)\.", name + ".")
        if found and name.endswith(("mlp", "attn", "attention", "self_attn")):
            handles.append(module.register_forward_hook(lambda *_, layer=int(found[1]): ran.add(layer)))
    try:
        fn()
    finally:
        for handle in handles:
            handle.remove()
    return ran


@pytest.mark.parametrize("wanted", [["resid_pre(1)"], ["z(0)", "embed"], ["embed"], ["mlp_out(1)"], ["q_in(1)"]])
def test_stop_early_captures_the_same_and_skips_later_blocks(model, wanted):
    tokens = _tokens(model, seed=5)
    with torch.no_grad():
        _, full = model.run(tokens, capture=wanted)
        out, early = model.run(tokens, capture=wanted, interventions=[Scale(sites.embed(), factor=1.5)], stop_early=True)
        _, scaled = model.run(tokens, capture=wanted, interventions=[Scale(sites.embed(), factor=1.5)])
    assert out is None
    for site in wanted:
        assert not torch.equal(full[site], scaled[site]), "the edit must reach the captured site"
        assert torch.equal(early[site], scaled[site]), site
    if model._backend.name == "lens":  # nnsight runs every block (stop_early allows, not demands)
        last = model.cfg.n_layers - 1
        needed = max(parse(s).layer if parse(s).layer is not None else -1 for s in wanted)
        with torch.no_grad():
            everything = _blocks_run(model, lambda: model.run(tokens, capture=wanted))
            stopped = _blocks_run(model, lambda: model.run(tokens, capture=wanted, stop_early=True))
        assert last in everything
        assert stopped == set(range(needed + (0 if wanted[0].startswith(("resid_pre", "q_in")) else 1))), stopped
    with pytest.raises(TypeError, match="stop_early must be True or False"):
        model.run(tokens, capture=wanted, stop_early="yes")


def test_zero_scale_mean_patch_and_splice(model):
    tokens, other = _tokens(model, seed=4), _tokens(model, seed=5)
    g = torch.Generator().manual_seed(2)
    mean = torch.randn(model.cfg.d_head, generator=g)
    with torch.no_grad():
        _, other_acts = reference(model, other, {})
        _, other_cache = model.run_with_cache(other, sites=[sites.v(0)])

        def z_edit(t):
            t = t.clone()
            t[:, :, 0] = 0
            t[:, [2, 5], 1] *= 3.0
            t[:, :, 2] = mean
            return t

        def v_edit(t):
            t = t.clone()
            t[:, 4:, 0] = other_acts[("v", 0)][:, 4:, 0]
            return t
        expected, _ = reference(model, tokens, {("z", 1): z_edit, ("v", 0): v_edit,
                                                ("mlp_out", 0): lambda t: torch.tanh(t)})
        got, _ = model.run(tokens, interventions=[
            Zero(sites.z(1, 0)), Scale(sites.z(1, 1), positions=[2, 5], factor=3.0), Mean(sites.z(1, 2), value=mean),
            Patch(sites.v(0, 0), positions=slice(4, None), source=other_cache), Splice(sites.mlp_out(0), fn=torch.tanh)])
    assert torch.allclose(got, expected, atol=1e-4)


def test_a_tensor_gate_carries_gradients(model):
    """d(loss)/d(gate) of a Scale gate on a head's z equals Σ z · d(loss)/d(z) (Michel et al.)."""
    tokens = _tokens(model, seed=6)
    gate = torch.ones((), requires_grad=True)
    out, cache = model.run(tokens, interventions=[Scale(sites.z(1, 2), factor=gate)], capture=[sites.z(1)])
    z = cache[sites.z(1)]
    z.retain_grad()
    out.logsumexp(-1).sum().backward()
    assert gate.grad is not None and abs(float(gate.grad)) > 1e-4
    assert torch.allclose(gate.grad, (z[:, :, 2] * z.grad[:, :, 2]).sum(), rtol=1e-4)


def test_interventions_refused_with_reasons(model):
    tokens = _tokens(model)
    with pytest.raises(ValueError, match="q_in edits one head's input alone, which needs split inputs"):
        model.run(tokens, interventions=[Zero(sites.q_in(0, 1))])
    with pytest.raises(IndexError, match=r"head 9 is out of range: this model has heads 0\.\.3"):
        model.run(tokens, interventions=[Zero(sites.z(0, 9))])
    with pytest.raises(IndexError, match="position 9 is out of range at z\\(0, 1\\): the prompts have 9 positions"):
        model.run(tokens, interventions=[Zero(sites.z(0, 1), positions=9)])
    with pytest.raises(ValueError, match=r"the source activation has shape \(1, 9"):
        model.run(tokens, interventions=[Patch(sites.resid_pre(0), source=torch.zeros(1, 9, model.cfg.d_model))])
    with pytest.raises(TypeError, match="interventions must be Intervention objects"):
        model.run(tokens, interventions=[("blocks.0.attn.hook_z", lambda a, hook: a)])
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        model.run(tokens, interventions=[Splice(sites.mlp_out(0), fn=lambda t: t[..., :3])])
    if model.cfg.parallel:
        with pytest.raises(ValueError, match="no residual stream between them"):
            model.run(tokens, capture=[sites.resid_mid(0)])


def test_site_spelling():
    assert parse("blocks.2.hook_resid_pre") == sites.resid_pre(2)
    assert parse("blocks.0.attn.hook_z") == sites.z(0)
    assert parse("z(3, 5)") == sites.z(3, 5) and parse(str(sites.k(1, 0))) == sites.k(1, 0)
    assert parse("embed") == sites.embed() and parse("hook_embed") == sites.embed()
    with pytest.raises(ValueError, match="cannot read 'blocks.2.hook_nope' as a site"):
        parse("blocks.2.hook_nope")
    with pytest.raises(ValueError, match="site 'resid_pre' is not per head"):
        Site("resid_pre", 1, 2)
    with pytest.raises(TypeError, match="site layer must be an int"):
        Site("z", 1.5)
    with pytest.raises(ValueError, match="positions must not be an empty list"):
        Zero(sites.z(0), positions=[])
    with pytest.raises(TypeError, match="positions must be an int, a list of ints or a slice"):
        Zero(sites.z(0), positions=1.5)
    with pytest.raises(ValueError, match="Mean.value holds NaN"):
        Mean(sites.z(0), value=torch.tensor([float("nan")]))


def test_lens_refuses_what_its_bridge_gets_wrong_on_encoders():
    from interp import load_model

    model = load_model("minilm", device="cpu")
    tokens = model.to_tokens("the cat sat on the mat")
    with pytest.raises(ValueError, match="fills hook_attn_scores with the softmaxed pattern on encoders"):
        model.run(tokens, capture=[sites.scores(0)])
    with pytest.raises(ValueError, match="post-norm encoder .* edit z, or load with backend='nnsight'"):
        model.run(tokens, interventions=[Zero(sites.head_out(1, 3))])
    _, cache = model.run_with_cache(tokens)
    assert sites.scores(0) not in cache and sites.pattern(0) in cache
