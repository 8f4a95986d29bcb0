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


def rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """z * H(z - threshold) with the straight-through threshold gradient (elementwise shapes)."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad * (z > threshold)
        grad_threshold = -(threshold / eps) * rectangle((z - threshold) / eps) * grad
        return grad_z, grad_threshold.sum_to_size(threshold.shape), None


class StepFunction(torch.autograd.Function):
    """H(z - threshold) with the straight-through threshold gradient; no gradient to z."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(1.0 / eps) * rectangle((z - threshold) / eps) * grad
        return None, grad_threshold.sum_to_size(threshold.shape), None


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
            # every position whose output or pseudo-derivative can be non-zero: z > threshold - eps/2,
            # with a margin so that rounding in (z - threshold) / eps cannot drop one (extra
            # positions have zero output and zero pseudo-derivative)
            mask = pre > self.threshold - 0.5 * (1 + 1e-4) * eps
        code = Code.from_mask(mask)
        z = code.encoder_values(pre, x_in_detached, self.W_enc, self.b_enc, self.b_dec_for_encoder())
        threshold = code.per_latent(self.threshold)
        f = JumpReLUFunction.apply(z, threshold, eps)
        x_hat, mse = self._reconstruct(code, f, x)
        l0 = coefficients["l0"] * StepFunction.apply(z, threshold, eps).sum() / x.shape[0]
        fired = code.count_per_latent(f)
        return StepOutput(mse + l0, {"mse_loss": mse, "l0_loss": l0}, x_hat.detach(), fired,
                          int(fired.sum()) / x.shape[0])
