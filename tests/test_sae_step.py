"""The fast training step of every architecture equals a plain dense autograd computation of the
same loss (written here from the papers' / SAELens's formulas): same loss, same gradients."""

import copy

import pytest
import torch

import analyses.sae.sparse as sparse
from analyses.sae import make_sae
from analyses.sae.batchtopk import batch_topk_indices

D_IN, D_SAE, BATCH = 16, 64, 48


def reference_loss(sae, x, coefficients, dead):
    """Dense autograd loss on `sae`'s own parameters (a copy of the SAE under test)."""
    cfg = sae.cfg
    W_enc, W_dec, b_enc, b_dec = sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec
    x_in = x - b_dec if cfg.apply_b_dec_to_input else x
    pre = x_in @ W_enc + b_enc
    losses = {}
    if cfg.architecture == "standard":
        f = pre.relu()
    elif cfg.architecture == "topk":
        values, indices = pre.topk(cfg.k, dim=-1)
        f = torch.zeros_like(pre).scatter(1, indices, values.relu())
    elif cfg.architecture == "batchtopk":
        values, indices = pre.relu().flatten().topk(int(cfg.k * x.shape[0]))
        f = torch.zeros(pre.numel()).scatter(0, indices, values).view_as(pre)
    elif cfg.architecture == "jumprelu":
        theta, eps = sae.threshold, cfg.jumprelu_bandwidth
        rect = (((pre - theta) / eps > -0.5) & ((pre - theta) / eps < 0.5)).float()
        h = (pre > theta).float()
        # value z * H(z - theta); derivative H in z and -(theta / eps) rect in theta
        f = pre * h + (-(theta / eps) * rect).detach() * (theta - theta.detach())
        step = h + (-rect / eps).detach() * (theta - theta.detach())
        losses["l0_loss"] = coefficients["l0"] * step.sum(-1).mean()
    x_hat = f @ W_dec + b_dec
    losses["mse_loss"] = (x_hat - x).pow(2).sum(-1).mean()
    if cfg.architecture == "standard":
        losses["l1_loss"] = coefficients["l1"] * (f * W_dec.norm(dim=1)).sum(-1).mean()
    if cfg.architecture in ("topk", "batchtopk"):
        n_dead = int(dead.sum())
        aux = torch.zeros(())
        if n_dead:
            residual = (x - x_hat).detach()
            k_aux = D_IN // 2
            scale = min(n_dead / k_aux, 1.0)
            values, indices = torch.where(dead, pre, -torch.inf).topk(min(k_aux, n_dead), dim=-1)
            acts = torch.zeros_like(pre).scatter(1, indices, values.relu())
            aux = cfg.aux_loss_coefficient * scale * ((acts @ W_dec) - residual).pow(2).sum(-1).mean()
        losses["auxiliary_reconstruction_loss"] = aux
    return sum(losses.values()), losses, f


def make(arch, apply_b_dec=True):
    kwargs = {"topk": dict(k=4), "batchtopk": dict(k=3.5), "standard": dict(l1_coefficient=0.7),
              "jumprelu": dict(l0_coefficient=0.3, jumprelu_bandwidth=0.3)}[arch]
    sae = make_sae(arch, d_in=D_IN, d_sae=D_SAE, seed=3, apply_b_dec_to_input=apply_b_dec, **kwargs)
    with torch.no_grad():  # move every parameter off its initial value, so every term is exercised
        gen = torch.Generator().manual_seed(1)
        sae.b_dec.copy_(0.3 * torch.randn(D_IN, generator=gen))
        sae.b_enc.copy_(0.2 * torch.randn(D_SAE, generator=gen))
        sae.W_dec.mul_(1 + 0.5 * torch.rand(D_SAE, 1, generator=gen))
        if arch == "jumprelu":
            sae.threshold.copy_(0.4 * torch.rand(D_SAE, generator=gen))
    return sae


def relative_error(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


CASES = [(arch, n_dead) for arch in ("standard", "jumprelu") for n_dead in (0,)] + [
    (arch, n_dead) for arch in ("topk", "batchtopk") for n_dead in (0, 3, 20)]  # only TopK-style SAEs use `dead`


@pytest.mark.parametrize("layout", ["sparse", "dense"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("arch,n_dead", CASES)
def test_fast_step_equals_dense_autograd(arch, n_dead, apply_b_dec, layout, monkeypatch):
    monkeypatch.setattr(sparse, "SPARSE_MAX_DENSITY", 1.0 if layout == "sparse" else 0.0)
    sae = make(arch, apply_b_dec)
    ref = copy.deepcopy(sae)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH, D_IN, generator=gen) + 0.5
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[torch.randperm(D_SAE, generator=gen)[:n_dead]] = True
    coefficients = {"l1": 0.7, "l0": 0.3}

    out = sae.training_loss(x, coefficients, dead)
    out.loss.backward()
    ref_loss, ref_losses, ref_f = reference_loss(ref, x, coefficients, dead)
    ref_loss.backward()

    assert relative_error(out.loss.detach(), ref_loss.detach()) < 1e-5
    for name, value in ref_losses.items():
        assert abs(out.losses[name].item() - value.item()) <= 1e-5 * max(1.0, abs(value.item())), name
    if n_dead:
        assert out.losses["auxiliary_reconstruction_loss"].item() > 0
    assert torch.equal(out.fired, (ref_f != 0).sum(0))
    for name, p in ref.named_parameters():
        ours = dict(sae.named_parameters())[name].grad
        assert ref.get_parameter(name).grad.abs().sum() > 0, f"{name}: the reference gradient is zero"
        assert relative_error(ours, p.grad) < 1e-5, f"{name}: relative error {relative_error(ours, p.grad):.2e}"


def test_layouts_are_what_the_density_says(monkeypatch):
    """The test above really exercises both code paths."""
    sae = make("standard")
    x = torch.randn(BATCH, D_IN)
    original = sparse.Code.decode
    for density, sparse_expected in ((1.0, True), (0.0, False)):
        monkeypatch.setattr(sparse, "SPARSE_MAX_DENSITY", density)
        seen = []
        monkeypatch.setattr(sparse.Code, "decode", lambda self, v, W: seen.append(self.is_sparse) or original(self, v, W))
        sae.training_loss(x, {"l1": 1.0})
        assert seen == [sparse_expected]


def test_batchtopk_sets_threshold_as_moving_average_of_smallest_selected_activation():
    sae = make("batchtopk")
    x = torch.randn(BATCH, D_IN)
    with torch.no_grad():
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        smallest = pre.relu().flatten().topk(int(3.5 * BATCH)).values.min().double()
    sae.training_loss(x, {})
    assert sae.topk_threshold.item() == pytest.approx(0.01 * smallest.item(), rel=1e-6)


@pytest.mark.parametrize("m", [1, 40, 700, 3000])
def test_batch_topk_indices_equal_a_full_topk(m):
    gen = torch.Generator().manual_seed(m)
    acts = torch.randn(512, 384, generator=gen) - 0.5  # mostly negative: only positive entries count
    top = acts.relu().flatten().topk(m)
    expected = top.indices[top.values > 0].sort().values
    assert torch.equal(batch_topk_indices(acts, m), expected)


def test_batch_topk_indices_when_fewer_positives_than_m():
    acts = torch.zeros(64, 256)
    acts[3, 5], acts[10, 200] = 2.0, 1.0
    assert batch_topk_indices(acts, 40).tolist() == [3 * 256 + 5, 10 * 256 + 200]


def test_unit_norm_decoder_after_step_and_thresholds_kept_non_negative():
    sae = make("topk")
    sae.after_step()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-6)
    jr = make("jumprelu")
    with torch.no_grad():
        jr.threshold[:5] = -1.0
    jr.training_loss(torch.randn(8, D_IN), {"l0": 1.0})
    assert (jr.threshold >= 0).all()
