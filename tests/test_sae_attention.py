"""Attention-output SAEs attributed to heads: decoder-norm shares per head, and direct feature
attribution by (head, source position) against a hand computation from the Hugging Face model's
attention probabilities and value projections, on a random GPT-2 and a grouped-query Llama."""

import pytest
import torch

from analyses.sae.attention import head_shares, source_attribution
from interp import load_model
from interp.models import sites
from tests.helpers import random_model_folder
from tests.sae_reference import hand_attention, hf_model, random_prompts, random_sae


@pytest.fixture(scope="module", params=("gpt2", "llama"))
def models(request, tmp_path_factory):
    folder = random_model_folder(tmp_path_factory.mktemp(request.param), request.param, n_layers=2, n_heads=4,
                                 n_kv_heads=2, d_model=32, d_mlp=64)
    return load_model(folder, device="cpu"), hf_model(folder)


def test_contributions_equal_a_hand_computation_and_add_up_to_the_pre_activation(models):
    model, hf = models
    c = model.cfg
    texts = random_prompts(4, seed=1, unknown_every=0)
    tokens, real = model.tokenize(texts)
    A, v, z = hand_attention(hf, model, tokens, real, layer=1)
    sae = random_sae(c.n_heads * c.d_head, seed=2)
    for feature in (0, 7, 100):
        result = source_attribution(model, sae, texts, feature, site=sites.z(1))
        u = sae.W_enc.detach()[:, feature].view(c.n_heads, c.d_head)
        expected = torch.einsum("bhqs,bshd,hd->bqhs", A, v, u)
        pre = ((z - sae.b_dec) @ sae.W_enc[:, feature] + sae.b_enc[feature]).detach()
        assert result.contributions.shape == (len(texts), tokens.shape[1], c.n_heads, tokens.shape[1])
        assert torch.allclose(result.contributions, expected, atol=1e-4, rtol=1e-4)
        assert result.bias == pytest.approx((sae.b_enc[feature] - sae.b_dec @ sae.W_enc[:, feature]).item(), abs=1e-5)
        assert torch.allclose(result.total()[real], pre[real], atol=1e-4, rtol=1e-4)
        assert torch.allclose(result.pre[real], pre[real], atol=1e-4, rtol=1e-4)
        assert result.contributions[0, 1, :, 2:].abs().max() == 0  # causal: no source after the query
    table = result.top(0, 3, n=4, tokenizer=model.tokenizer)
    assert list(table.columns) == ["head", "source", "contribution", "source_token"]
    assert table["contribution"].abs().is_monotonic_decreasing


def test_one_head_sae(models):
    model, hf = models
    c = model.cfg
    texts = random_prompts(3, seed=3, unknown_every=0)
    tokens, real = model.tokenize(texts)
    A, v, z = hand_attention(hf, model, tokens, real, layer=0)
    head = 3
    sae = random_sae(c.d_head, seed=4)
    result = source_attribution(model, sae, texts, 5, site="z(0, 3)")
    assert result.heads == [head]
    u = sae.W_enc.detach()[:, 5]
    expected = torch.einsum("bqs,bsd,d->bqs", A[:, head], v[:, :, head], u)[:, :, None]
    assert torch.allclose(result.contributions, expected, atol=1e-4, rtol=1e-4)
    z_head = z[..., head * c.d_head:(head + 1) * c.d_head]
    pre = ((z_head - sae.b_dec) @ sae.W_enc[:, 5] + sae.b_enc[5]).detach()
    assert torch.allclose(result.total()[real], pre[real], atol=1e-4, rtol=1e-4)


def test_head_shares():
    n_heads, d_head = 4, 3
    sae = random_sae(n_heads * d_head, seed=5)
    shares = head_shares(sae, n_heads)
    for i in (0, 9, 47):
        norms = torch.tensor([sae.W_dec[i, h * d_head:(h + 1) * d_head].norm().item() for h in range(n_heads)])
        assert torch.allclose(shares[i], norms / norms.sum(), atol=1e-6)
    assert torch.allclose(shares.sum(1), torch.ones(sae.cfg.d_sae), atol=1e-6)
    with torch.no_grad():
        sae.W_dec[2] = 0
        sae.W_dec[2, 2 * d_head:3 * d_head] = torch.tensor([1.0, -2.0, 0.5])
    assert torch.equal(head_shares(sae, n_heads)[2], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="d_in=12 is not a multiple of 5"):
        head_shares(sae, 5)


def test_bad_input_is_refused(models):
    model, _ = models
    c = model.cfg
    sae = random_sae(c.n_heads * c.d_head)
    with pytest.raises(ValueError, match=r"head attribution is for SAEs on attention z .* got an SAE at resid_pre\(1\)"):
        source_attribution(model, random_sae(c.d_model), ["w3 w4"], 0, site="resid_pre(1)")
    with pytest.raises(IndexError, match="feature 999 is out of range"):
        source_attribution(model, sae, ["w3 w4"], 999, site="z(1)")
    with pytest.raises(ValueError, match=r"the SAE has d_in=32, but z\(1, 2\) .* width 8 \(d_head\)"):
        source_attribution(model, sae, ["w3 w4"], 0, site="z(1, 2)")
    with pytest.raises(ValueError, match="the corpus is empty"):
        source_attribution(model, sae, [], 0, site="z(1)")
