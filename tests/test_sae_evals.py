"""The SAE spliced into a model: every metric against a direct computation on the plain Hugging
Face model with PyTorch hooks (CE by hand from logits, explained variance as METHODS.md defines
it), on a random GPT-2 and a random grouped-query Llama."""

import pytest
import torch

from analyses.sae.evals import evaluate_spliced, sae_splice
from interp.models import sites
from tests.helpers import random_model, random_model_folder
from tests.sae_reference import hf_model, hf_run, identity_sae, random_prompts, random_sae

FAMILIES = ("gpt2", "llama")


@pytest.fixture(scope="module", params=FAMILIES)
def models(request, tmp_path_factory):
    folder = random_model_folder(tmp_path_factory.mktemp(request.param), request.param, n_layers=2, n_heads=4,
                                 n_kv_heads=2, d_model=32, d_mlp=64)
    from interp import load_model
    return load_model(folder, device="cpu"), hf_model(folder)


def width(model, site):
    c = model.cfg
    return c.d_head if site.head is not None else (c.n_heads * c.d_head if site.kind == "z" else c.d_model)


def replacement(site, sae, keep, n_heads, d_head, zero=False):
    """The reference splice on the HF activation [b, p, width]: SAE (or 0) at the kept tokens."""
    def replace(x):
        x = x.clone()
        if site.kind == "z" and site.head is not None:
            block = slice(site.head * d_head, (site.head + 1) * d_head)
            part = x[..., block]
            new = torch.zeros_like(part) if zero else sae(part)
            x[..., block] = torch.where(keep[..., None], new, part)
            return x
        new = torch.zeros_like(x) if zero else sae(x)
        return torch.where(keep[..., None], new, x)
    return replace


def reference(model, hf, sae, site, texts):
    """Every metric computed directly from the HF model's logits and activations."""
    tokens, real = model.tokenize(texts)
    special = torch.tensor(model.tokenizer.all_special_ids)
    keep = real & ~torch.isin(tokens, special)
    c = model.cfg
    runs = {}
    for name, kw in (("clean", None), ("sae", dict(zero=False)), ("abl", dict(zero=True))):
        fn = None if kw is None else replacement(site, sae, keep, c.n_heads, c.d_head, **kw)
        runs[name] = hf_run(hf, tokens, real, site.kind, site.layer, fn)
    logp = {name: torch.log_softmax(logits.double(), -1) for name, (logits, _) in runs.items()}
    ce = {}
    for name, lp in logp.items():
        total, count = 0.0, 0
        for b in range(len(tokens)):
            for t in range(tokens.shape[1] - 1):
                if keep[b, t] and real[b, t + 1]:
                    total -= lp[b, t, int(tokens[b, t + 1])].item()
                    count += 1
        ce[name] = total / count
    kl = {name: ((logp["clean"].exp() * (logp["clean"] - logp[name])).sum(-1)[keep]).mean().item() for name in ("sae", "abl")}
    x = runs["clean"][1]
    if site.kind == "z" and site.head is not None:
        x = x[..., site.head * c.d_head:(site.head + 1) * c.d_head]
    x = x[keep].double()
    with torch.no_grad():
        x_hat = sae(x.float()).double()
    ev = 1 - (x - x_hat).pow(2).sum() / (x.pow(2).sum() - len(x) * x.mean(0).pow(2).sum())
    per_token = (1 - (x - x_hat).pow(2).sum(-1) / (x - x.mean(0)).pow(2).sum(-1)).mean()
    return ce, kl, ev.item(), per_token.item(), int(keep.sum())


@pytest.mark.parametrize("site", [sites.resid_pre(1), sites.z(1), sites.z(0, 2), sites.mlp_out(0)], ids=str)
def test_every_metric_equals_a_direct_computation(models, site):
    model, hf = models
    sae = random_sae(width(model, site), seed=3)
    texts = random_prompts(7)
    result = evaluate_spliced(model, sae, texts, site=site, prompts_per_forward=3, progress=False)
    ce, kl, ev, per_token_ev, n_kept = reference(model, hf, sae, site, texts)
    assert result.n_tokens == n_kept
    assert result.ce_loss_without_sae == pytest.approx(ce["clean"], rel=1e-5)
    assert result.ce_loss_with_sae == pytest.approx(ce["sae"], rel=1e-5)
    assert result.ce_loss_with_ablation == pytest.approx(ce["abl"], rel=1e-5)
    assert result.ce_loss_with_sae != pytest.approx(ce["clean"], rel=1e-3)  # the splice changed something
    assert result.ce_loss_score == pytest.approx((ce["abl"] - ce["sae"]) / (ce["abl"] - ce["clean"]), rel=1e-4, abs=1e-5)
    assert result.delta_lm_loss == pytest.approx(ce["sae"] - ce["clean"], rel=1e-4, abs=1e-6)
    assert result.kl_div_with_sae == pytest.approx(kl["sae"], rel=1e-4, abs=1e-6)
    assert result.kl_div_with_ablation == pytest.approx(kl["abl"], rel=1e-4, abs=1e-6)
    assert result.kl_div_score == pytest.approx((kl["abl"] - kl["sae"]) / kl["abl"], rel=1e-4, abs=1e-5)
    assert result.explained_variance == pytest.approx(ev, rel=1e-5, abs=1e-5)
    assert abs(per_token_ev - ev) > 1e-3  # the two definitions differ here, and the whole-set one is used
    scalars = result.scalars()
    for key in ("ce_loss_score", "kl_div_score", "ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation",
                "kl_div_with_sae", "kl_div_with_ablation", "explained_variance", "mse", "l0", "delta_lm_loss"):
        assert key in scalars
    assert set(result.to_frame()["metric"]) == set(scalars)


@pytest.mark.parametrize("site", [sites.resid_pre(1), sites.z(1), sites.z(1, 3)], ids=str)
def test_identity_sae_gives_the_clean_loss(models, site):
    model, _ = models
    sae = identity_sae(width(model, site))
    result = evaluate_spliced(model, sae, random_prompts(5, seed=1), site=site, progress=False)
    assert result.ce_loss_with_sae == pytest.approx(result.ce_loss_without_sae, rel=1e-6)
    assert result.kl_div_with_sae == pytest.approx(0.0, abs=1e-6)
    assert result.ce_loss_score == pytest.approx(1.0, abs=1e-5)
    assert result.kl_div_score == pytest.approx(1.0, abs=1e-5)
    assert result.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert result.kl_div_with_ablation > 1e-3  # the ablation does change the output


def test_sae_splice_inside_any_run(models):
    """`sae_splice` in model.run gives the reference's logits, SAE at every position."""
    model, hf = models
    site = sites.z(1)
    sae = random_sae(width(model, site), seed=5)
    texts = random_prompts(3, seed=2, unknown_every=0)
    tokens, real = model.tokenize(texts)
    logits, _ = model.run(tokens, interventions=[sae_splice(sae, site)], attention_mask=real.long())
    keep = torch.ones_like(real)
    ref, _ = hf_run(hf, tokens, real, "z", 1, replacement(site, sae, keep, model.cfg.n_heads, model.cfg.d_head))
    assert torch.allclose(logits[real], ref[real], atol=1e-4, rtol=1e-4)


def test_bad_input_is_refused(models, tmp_path):
    model, _ = models
    texts = random_prompts(3)
    sae = random_sae(model.cfg.d_model)
    sae.cfg.metadata["site"] = "resid_pre(1)"
    # an SAE of one site spliced at another of another width
    with pytest.raises(ValueError, match=r"d_in=32 \(it was trained on resid_pre\(1\)\), but z\(1, 0\) .* width 8 \(d_head\)"):
        evaluate_spliced(model, sae, texts, site="z(1, 0)", progress=False)
    # activations of the wrong width at splice time, inside a run
    tokens, _ = model.tokenize(texts)
    with pytest.raises(ValueError, match=r"spliced at z\(0, 1\) has d_in=32, but the activations there have shape"):
        model.run(tokens, interventions=[sae_splice(sae, "z(0, 1)")])
    with pytest.raises(IndexError, match="layer 5 is out of range"):
        evaluate_spliced(model, sae, texts, site="blocks.5.hook_resid_pre", progress=False)
    with pytest.raises(ValueError, match="the corpus is empty"):
        evaluate_spliced(model, sae, [], progress=False)
    with pytest.raises(ValueError, match="no tokens left"):
        evaluate_spliced(model, sae, ["qqq qqq"], progress=False)
    del sae.cfg.metadata["site"]
    with pytest.raises(ValueError, match="names no site"):
        evaluate_spliced(model, sae, texts, progress=False)


def test_nan_activations_are_named_with_their_site(tmp_path):
    """A model whose layer-0 MLP produces NaN: the store-side and splice-side checks name the site."""
    from transformers import AutoModelForCausalLM

    from interp import load_model

    folder = random_model_folder(tmp_path / "nan", "gpt2", n_layers=2, d_model=32, d_mlp=64)
    hf = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        hf.transformer.h[0].mlp.c_proj.bias[3] = float("nan")
    hf.save_pretrained(folder)
    model = load_model(folder, device="cpu", check=False)
    sae = random_sae(32)
    with pytest.raises(FloatingPointError, match=r"NaN or inf activations at resid_pre\(1\) \(prompts 0..2"):
        evaluate_spliced(model, sae, random_prompts(3), site="resid_pre(1)", progress=False)
    tokens, _ = model.tokenize(random_prompts(2))
    with pytest.raises(FloatingPointError, match=r"NaN or inf activations at mlp_out\(0\)"):
        model.run(tokens, interventions=[sae_splice(sae, "mlp_out(0)")])
