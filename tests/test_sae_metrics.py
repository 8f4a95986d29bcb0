"""Metrics against a direct computation over the whole evaluation set."""

import pytest
import torch

from analyses.sae import make_sae
from analyses.sae.metrics import evaluate


def direct(sae, x):
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    x, x_hat, f = x.double(), x_hat.double(), f.double()
    mean = x.mean(0)
    ev = 1 - ((x - x_hat) ** 2).sum(1).mean() / ((x - mean) ** 2).sum(1).mean()
    cos = torch.nn.functional.cosine_similarity(x, x_hat, dim=1)
    density = (f != 0).double().mean(0)
    return {
        "explained_variance": ev.item(), "mse": ((x - x_hat) ** 2).sum(1).mean().item(), "cossim": cos.mean().item(),
        "l0": (f != 0).sum(1).double().mean().item(), "l1": f.abs().sum(1).mean().item(),
        "l2_ratio": (x_hat.norm(dim=1) / x.norm(dim=1)).mean().item(), "density": density,
    }


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_metrics_equal_a_direct_computation_and_do_not_depend_on_batching(arch):
    sae = make_sae(arch, d_in=10, d_sae=30, seed=4, **({"k": 4} if arch == "topk" else {}))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    # batches of very different scale: the per-batch or per-token ratio variants would differ
    x = torch.cat([torch.randn(200, 10, generator=gen) * 0.1 + 1.0, torch.randn(300, 10, generator=gen) * 3])
    ref = direct(sae, x)
    whole = evaluate(sae, x)
    chunked = evaluate(sae, [x[:7], x[7:250].reshape(3, 81, 10), x[250:]])
    for m in (whole, chunked):
        for key in ("explained_variance", "mse", "cossim", "l0", "l1", "l2_ratio"):
            assert getattr(m, key) == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key
        assert torch.allclose(m.feature_density.double(), ref["density"])
        assert m.dead_latents == int((ref["density"] == 0).sum())
        assert m.dense_latents == int((ref["density"] > 0.1).sum())
        assert m.n_tokens == 500
    legacy = 1 - (((x - sae(x).detach()) ** 2).sum(1) / ((x - x.mean(0)) ** 2).sum(1)).mean().item()
    assert abs(legacy - whole.explained_variance) > 1e-3  # the test data tells the two definitions apart


def test_dead_and_dense_latents_by_construction():
    sae = make_sae("standard", d_in=4, d_sae=6)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.copy_(torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, 0.5]))  # 0, 1, 5 always on; 2-4 never
    m = evaluate(sae, torch.randn(50, 4))
    assert m.feature_density.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert (m.dead_latents, m.dense_latents, m.l0, m.l1) == (3, 3, 3.0, 2.5)


def test_metrics_refuse_bad_input():
    sae = make_sae("standard", d_in=4, d_sae=6)
    with pytest.raises(ValueError, match=r"d_in=4.*\[3, 5\]"):
        evaluate(sae, torch.randn(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        evaluate(sae, torch.tensor([[0.0, float("nan"), 1.0, 2.0]]))
    with pytest.raises(ValueError, match="empty"):
        evaluate(sae, [])
