"""BatchTopK SAE (Bussmann et al., 2024): keep the k * batch largest ReLU'd pre-activations of the
whole batch, so k is the *average* number of active latents per row.

Training also tracks a global threshold, an exponential moving average of the smallest selected
activation of each batch (`topk_threshold`, rate `topk_threshold_lr`, as SAELens); inference
(`encode`) and the saved file use it as a JumpReLU: f = ReLU(pre) * (pre > threshold), saved with
architecture "jumprelu" and threshold = topk_threshold for every latent, as SAELens saves it.
The auxiliary dead-latent loss and the unit-norm decoder rows are TopK's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from analyses.sae.base import SAE, StepOutput
from analyses.sae.config import SAEConfig, register
from analyses.sae.sparse import Code
from analyses.sae.topk import check_k, topk_aux_loss


@dataclass(kw_only=True)
class BatchTopKSAEConfig(SAEConfig):
    architecture = "batchtopk"

    k: float = 100
    topk_threshold_lr: float = 0.01
    aux_loss_coefficient: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_k(self.k, self.d_sae, integer=False)
        self._check_coefficient("aux_loss_coefficient")
        if not 0 < self.topk_threshold_lr <= 1:
            raise ValueError(f"topk_threshold_lr must be in (0, 1], got {self.topk_threshold_lr!r}")

    def saved_architecture(self) -> str:
        return "jumprelu"


def batch_topk_indices(acts: torch.Tensor, m: int) -> torch.Tensor:
    """Sorted flat indices of the m largest entries of acts [batch, d_sae], positive ones only:
    the non-zero entries of `acts.relu().flatten().topk(m)`, up to ties.

    A top-m over all batch * d_sae entries is slow on a CPU, so a value a little below the m-th
    largest is first estimated from a strided sample (a stride coprime with d_sae, so that every
    latent is sampled), the entries above it are gathered, and the exact top-m is taken among
    them; if the estimate was too high, among all entries."""
    flat = acts.reshape(-1)
    n = flat.numel()
    candidates = None
    if m < n // 16:
        stride = max(1, n // (1 << 20))
        while math.gcd(stride, acts.shape[-1]) != 1:
            stride += 1
        sample = flat[::stride]
        rank = sample.numel() - math.ceil(1.5 * m * sample.numel() / n)
        if rank >= 1:
            estimate = sample.kthvalue(rank).values
            if estimate > 0:
                candidates = (flat >= estimate).nonzero(as_tuple=True)[0]
                if candidates.numel() < m:
                    candidates = None
            else:
                candidates = (flat > 0).nonzero(as_tuple=True)[0]
    if candidates is None:
        chosen = flat.topk(min(m, n), sorted=False).indices
    elif candidates.numel() > m:
        chosen = candidates[flat[candidates].topk(m, sorted=False).indices]
    else:
        chosen = candidates
    return chosen[flat[chosen] > 0].sort().values


@register
class BatchTopKSAE(SAE):
    config_class = BatchTopKSAEConfig
    unit_norm_decoder = True

    def __init__(self, cfg: BatchTopKSAEConfig, *, seed: int = 0):
        super().__init__(cfg, seed=seed)
        # float64, as SAELens: the moving average's small steps would round away in float32
        self.register_buffer("topk_threshold", torch.zeros((), dtype=torch.float64, device=cfg.device))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu() * (pre > self.topk_threshold.to(pre.dtype))

    def training_loss(self, x, coefficients, dead=None) -> StepOutput:
        x_in, x_in_detached, pre = self._encoder_code(x)
        batch, d_sae = pre.shape
        m = int(self.cfg.k * batch)
        code = Code.from_flat_indices(batch_topk_indices(pre, m), batch, d_sae)
        pre_at = code.encoder_values(pre, x_in_detached, self.W_enc, self.b_enc, self.b_dec_for_encoder())
        f = code.restrict(pre_at.relu())
        x_hat, mse = self._reconstruct(code, f, x)
        aux = topk_aux_loss(self, x_in, x, x_hat, dead, self.cfg.aux_loss_coefficient)
        with torch.no_grad():
            positive = f[f > 0]
            if positive.numel():
                lr = self.cfg.topk_threshold_lr
                self.topk_threshold.mul_(1 - lr).add_(lr * positive.min().to(torch.float64))
        fired = code.count_per_latent(f)
        losses = {"mse_loss": mse, "auxiliary_reconstruction_loss": aux}
        return StepOutput(mse + aux, losses, x_hat.detach(), fired, int(fired.sum()) / batch)
