"""Activations with known features (Sharkey et al., 2022) and how well an SAE recovered them.

`SyntheticData(d_in, n_features)` draws n_features random unit directions in R^d_in (more
directions than dimensions); each token is a sparse non-negative combination of them: each
feature is active with probability `p_active` (expected `n_features * p_active` per token), with
a magnitude uniform in [0, 1) (or `magnitude`), and x = sum_i c_i d_i. An SAE that learned the
features has a decoder row close to each true direction: the mean over true directions of the
maximum cosine similarity with any decoder row (MMCS) is near 1.
"""

from __future__ import annotations

import torch


class SyntheticData:
    """Ground-truth features `directions` [n_features, d_in] (unit rows) and a batch sampler."""

    def __init__(self, d_in: int, n_features: int, *, p_active: float = 0.02, seed: int = 0):
        if not n_features > d_in >= 1:
            raise ValueError(f"need n_features > d_in >= 1 (an overcomplete basis), got d_in={d_in}, n_features={n_features}")
        if not 0 < p_active < 1:
            raise ValueError(f"p_active must be in (0, 1), got {p_active!r}")
        gen = torch.Generator().manual_seed(seed)
        directions = torch.randn(n_features, d_in, generator=gen)
        self.directions = directions / directions.norm(dim=1, keepdim=True)
        self.p_active = p_active
        self._gen = torch.Generator().manual_seed(seed + 1)

    def sample(self, batch: int) -> torch.Tensor:
        """x [batch, d_in]: sparse non-negative combinations of the directions."""
        n_features = self.directions.shape[0]
        on = torch.rand(batch, n_features, generator=self._gen) < self.p_active
        coeffs = torch.rand(batch, n_features, generator=self._gen) * on
        return coeffs @ self.directions

    def batches(self, batch: int):
        while True:
            yield self.sample(batch)


def mmcs(directions: torch.Tensor, W_dec: torch.Tensor) -> float:
    """Mean over true directions [n, d] of the max cosine similarity with a row of W_dec [d_sae, d]."""
    a = directions / directions.norm(dim=1, keepdim=True)
    b = W_dec.detach().to(a.dtype)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (a @ b.T).max(dim=1).values.mean().item()
