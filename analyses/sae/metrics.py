"""Reconstruction and sparsity metrics of an SAE on activations, under SAELens's names.

    m = evaluate(sae, activations)      # a tensor [..., d_in] or an iterable of them
    m.explained_variance, m.l0, m.feature_density

Every token counts once, whatever the batching:
- explained_variance = 1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2), both expectations over the
  whole evaluation set (docs/methods.md §6; SAELens 6's `explained_variance`, not the per-token
  ratio `explained_variance_legacy`);
- mse = E||x - x_hat||^2 (summed over d_in, SAELens's convention); cossim = E cos(x, x_hat)
  (0 for a zero vector, as torch.cosine_similarity);
- l0 = E #{i: f_i != 0}; l1 = E sum_i |f_i|; l2_ratio = E ||x_hat|| / ||x|| (tokens with
  ||x|| < 1e-4 divide by 1, as SAELens);
- feature_density [d_sae]: fraction of tokens on which each latent is non-zero; dead_latents:
  latents that never fire; dense_latents: latents firing on more than `dense_threshold` of tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from analyses.sae.base import SAE, check_activations


@dataclass
class SAEMetrics:
    explained_variance: float
    mse: float
    cossim: float
    l0: float
    l1: float
    l2_ratio: float
    feature_density: torch.Tensor  # [d_sae]
    dead_latents: int
    dense_latents: int
    n_tokens: int

    def scalars(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if not isinstance(v, torch.Tensor)}


@torch.no_grad()
def evaluate(sae: SAE, activations: torch.Tensor | Iterable[torch.Tensor], *, dense_threshold: float = 0.1) -> SAEMetrics:
    """Metrics of `sae` on `activations` [..., d_in] (one tensor or an iterable of tensors)."""
    if not 0 < dense_threshold < 1:
        raise ValueError(f"dense_threshold must be in (0, 1), got {dense_threshold!r}")
    batches = [activations] if isinstance(activations, torch.Tensor) else activations
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    device = sae.W_enc.device
    n = 0
    sum_x = torch.zeros(d_in, dtype=torch.float64, device=device)
    sums = dict.fromkeys(("x2", "residual", "cossim", "l0", "l1", "l2_ratio"), 0.0)
    fired = torch.zeros(d_sae, dtype=torch.int64, device=device)
    for x in batches:
        check_activations(x, d_in)
        x = x.reshape(-1, d_in).to(device)
        f = sae.encode(x)
        x_hat = sae.decode(f).double()
        x = x.double()
        n += x.shape[0]
        sum_x += x.sum(0)
        sums["x2"] += x.pow(2).sum().item()
        sums["residual"] += (x - x_hat).pow(2).sum().item()
        norm_in, norm_out = x.norm(dim=-1), x_hat.norm(dim=-1)
        sums["cossim"] += ((x * x_hat).sum(-1) / (norm_in * norm_out).clamp_min(1e-8)).sum().item()
        sums["l2_ratio"] += (norm_out / torch.where(norm_in.abs() < 1e-4, 1.0, norm_in)).sum().item()
        active = f != 0
        sums["l0"] += active.sum().item()
        sums["l1"] += f.abs().double().sum().item()
        fired += active.sum(0)
    if n == 0:
        raise ValueError("no activations to evaluate (the iterable was empty)")
    total_variance = sums["x2"] / n - (sum_x / n).pow(2).sum().item()
    mse = sums["residual"] / n
    density = fired.double() / n
    return SAEMetrics(
        explained_variance=1.0 - mse / total_variance if total_variance > 0 else float("nan"),
        mse=mse, cossim=sums["cossim"] / n, l0=sums["l0"] / n, l1=sums["l1"] / n, l2_ratio=sums["l2_ratio"] / n,
        feature_density=density.cpu(), dead_latents=int((fired == 0).sum()),
        dense_latents=int((density > dense_threshold).sum()), n_tokens=n)
