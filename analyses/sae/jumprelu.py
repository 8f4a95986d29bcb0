"""JumpReLU SAE (Rajamanoharan et al., 2024): f = z * H(z - threshold), z the pre-activation.

Training: loss = E ||x - x_hat||^2 + l0_coefficient * E sum_i H(z_i - threshold_i). The Heaviside
step has no useful derivative, so both the JumpReLU and the L0 term pass gradients to the
threshold through straight-through pseudo-derivatives with a rectangle kernel of width
`jumprelu_bandwidth` (eps):
  d JumpReLU / d threshold = -(threshold / eps) * rect((z - threshold) / eps),
  d H / d threshold        = -(1 / eps) * rect((z - threshold) / eps),
and the JumpReLU passes d/dz = H(z - threshold); nothing else reaches z (DeepMind's variant,
SAELens's default `jumprelu_ste_to_input=False`). Thresholds are kept >= 0 (clamped before each
training step, as SAELens does) and parameterised directly (not as a log).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from analyses.sae.base import SAE, StepOutput
from analyses.sae.config import SAEConfig, register
from analyses.sae.sparse import Code


class JumpReLUFunction(torch.autograd.Function):
    """(f, l0): f = z * H(z - threshold) and the given l0 = sum H(z - threshold), with the
    straight-through threshold gradients above; z gets H(z - threshold) from f and nothing from l0.

    z and the masks `above` (z > threshold) and `band` (|z - threshold| < bandwidth / 2, the
    rectangle kernel's support) share one layout: `[nnz]` entries with `threshold` per entry, or
    dense `[batch, d_sae]` with `threshold [d_sae]`.
    """

    @staticmethod
    def forward(ctx, z, threshold, above, band, l0, bandwidth):
        ctx.save_for_backward(threshold, above, band)
        ctx.bandwidth = bandwidth
        return torch.where(above, z, 0.0), l0

    @staticmethod
    def backward(ctx, grad_f, grad_l0):
        threshold, above, band = ctx.saved_tensors
        if band.shape == threshold.shape:
            in_band, count = torch.where(band, grad_f, 0.0), band.to(grad_f.dtype)
        else:  # dense: the band is a small share of the batch's entries, so index it
            rows, cols = band.nonzero(as_tuple=True)
            in_band = torch.zeros_like(threshold).index_add_(0, cols, grad_f[rows, cols])
            count = torch.bincount(cols, minlength=threshold.shape[0]).to(grad_f.dtype)
        grad_threshold = -(threshold * in_band + grad_l0 * count) / ctx.bandwidth
        return torch.where(above, grad_f, 0.0), grad_threshold, None, None, None, None


@dataclass(kw_only=True)
class JumpReLUSAEConfig(SAEConfig):
    architecture = "jumprelu"

    jumprelu_init_threshold: float = 0.01
    jumprelu_bandwidth: float = 0.05
    l0_coefficient: float = 1.0
    l0_warm_up_steps: int = 0

    def __post_init__(self):
        super().__post_init__()
        self._check_coefficient("l0_coefficient")
        self._check_coefficient("jumprelu_init_threshold")
        self._check_steps("l0_warm_up_steps")
        if not self.jumprelu_bandwidth > 0:
            raise ValueError(f"jumprelu_bandwidth must be > 0, got {self.jumprelu_bandwidth!r}")


@register
class JumpReLUSAE(SAE):
    config_class = JumpReLUSAEConfig

    def __init__(self, cfg: JumpReLUSAEConfig, *, seed: int = 0):
        super().__init__(cfg, seed=seed)
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), float(cfg.jumprelu_init_threshold),
                                                 dtype=cfg.torch_dtype, device=cfg.device))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu() * (pre > self.threshold)

    def coefficient_names(self):
        return {"l0": ("l0_coefficient", "l0_warm_up_steps")}

    def training_loss(self, x, coefficients, dead=None) -> StepOutput:
        with torch.no_grad():
            self.threshold.clamp_(min=0.0)
        eps = self.cfg.jumprelu_bandwidth
        x_in, x_in_detached, pre = self._encoder_code(x)
        with torch.no_grad():
            # Every position whose output or pseudo-derivative can be non-zero: z > threshold - eps/2.
            # Masks, not float products: in the dense layout each fresh [batch, d_sae] float
            # tensor costs as much as a product.
            code = Code.from_mask(pre > self.threshold - 0.5 * eps)
        z = code.encoder_values(pre, x_in_detached, self.W_enc, self.b_enc, self.b_dec_for_encoder())
        threshold = code.per_latent(self.threshold)
        with torch.no_grad():
            above, band = z > threshold, z < threshold + 0.5 * eps  # band: within the kept positions
            if not code.is_sparse:
                band &= code.mask
        fired = code.count_per_latent(above)
        f, l0 = JumpReLUFunction.apply(z, threshold, above, band, fired.sum().to(z.dtype), eps)
        x_hat, mse = self._reconstruct(code, f, x)
        l0 = coefficients["l0"] * l0 / x.shape[0]
        return StepOutput(mse + l0, {"mse_loss": mse, "l0_loss": l0}, x_hat.detach(), fired,
                          int(fired.sum()) / x.shape[0])
