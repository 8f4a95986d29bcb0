"""Standard ReLU SAE with the decoder-norm-weighted L1 penalty (Anthropic, April 2024 update).

f = ReLU((x - b_dec) @ W_enc + b_enc), x_hat = f @ W_dec + b_dec,
loss = E ||x - x_hat||^2 + l1_coefficient * E sum_i f_i ||W_dec,i||.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from analyses.sae.base import SAE, StepOutput
from analyses.sae.config import SAEConfig, register
from analyses.sae.sparse import Code


@dataclass(kw_only=True)
class StandardSAEConfig(SAEConfig):
    architecture = "standard"

    l1_coefficient: float = 1.0
    l1_warm_up_steps: int = 0
    lp_norm: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        self._check_coefficient("l1_coefficient")
        self._check_steps("l1_warm_up_steps")
        if self.lp_norm != 1.0:
            raise ValueError(f"lp_norm must be 1.0 (the L1 penalty), got {self.lp_norm!r}")


@register
class StandardSAE(SAE):
    config_class = StandardSAEConfig

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu()

    def coefficient_names(self):
        return {"l1": ("l1_coefficient", "l1_warm_up_steps")}

    def training_loss(self, x, coefficients, dead=None) -> StepOutput:
        x_in, x_in_detached, pre = self._encoder_code(x)
        code = Code.from_mask(pre > 0)
        f = code.encoder_values(pre, x_in_detached, self.W_enc, self.b_enc, self.b_dec_for_encoder())
        f = code.restrict(f)  # the dense layout holds every pre-activation; ReLU them
        x_hat, mse = self._reconstruct(code, f, x)
        l1 = coefficients["l1"] * code.weighted_sum(f, self.W_dec.norm(dim=1)) / x.shape[0]
        fired = code.count_per_latent(f)
        return StepOutput(mse + l1, {"mse_loss": mse, "l1_loss": l1}, x_hat.detach(), fired, code.nnz / x.shape[0])
