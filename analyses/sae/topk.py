"""TopK SAE (Gao et al., 2024): keep the k largest pre-activations of each row (ReLU'd).

Training: loss = E ||x - x_hat||^2 + aux_loss_coefficient * AuxK, where AuxK reconstructs the
residual x - x_hat (detached) from the k_aux = d_in // 2 largest pre-activations among dead
latents (ReLU'd, no decoder bias), scaled by min(n_dead / k_aux, 1) as SAELens does. Decoder
rows are kept at unit norm after every step and start as W_enc = W_dec^T; the trainer starts
b_dec at the geometric median of the data.

Differences from SAELens 6 worth knowing: SAELens feeds the *pre-ReLU* top dead pre-activations
to AuxK (Gao et al. and OpenAI's code ReLU them, as here), and instead of unit-norm decoder rows
SAELens trains with `rescale_acts_by_decoder_norm=True` and folds the norms when saving. Files
with that flag set load and run here (the flag is honoured at inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from analyses.sae.base import SAE, StepOutput
from analyses.sae.config import SAEConfig, register
from analyses.sae.sparse import Code


def check_k(k, d_sae: int, *, integer: bool) -> None:
    kind = "an integer" if integer else "a number"
    if isinstance(k, bool) or not isinstance(k, (int, float)) or (integer and not isinstance(k, int)):
        raise ValueError(f"k must be {kind} with 1 <= k < d_sae={d_sae}, got {k!r}")
    if not 1 <= k < d_sae:
        raise ValueError(f"k must satisfy 1 <= k < d_sae={d_sae}, got k={k}")


@dataclass(kw_only=True)
class TopKSAEConfig(SAEConfig):
    architecture = "topk"
    inference_fields = ("k", "rescale_acts_by_decoder_norm")

    k: int = 100
    rescale_acts_by_decoder_norm: bool = False
    aux_loss_coefficient: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_k(self.k, self.d_sae, integer=True)
        self._check_coefficient("aux_loss_coefficient")


def topk_aux_loss(sae: SAE, x_in: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor, dead: torch.Tensor | None,
                  coefficient: float) -> torch.Tensor:
    """AuxK: reconstruct the residual x - x_hat [batch, d_in] (detached) from the top k_aux dead latents.

    Computed on the dead latents' columns only ([batch, n_dead] products), so it costs nothing
    while no latent is dead. x_in = x - b_dec with autograd (gradients reach b_dec too)."""
    n_dead = 0 if dead is None else int(dead.sum())
    if n_dead == 0 or coefficient == 0:
        return x.new_zeros(())
    residual = (x - x_hat).detach()
    d_in = residual.shape[-1]
    k_aux = max(1, d_in // 2)
    scale = min(n_dead / k_aux, 1.0)
    k_aux = min(k_aux, n_dead)
    dead_idx = dead.nonzero(as_tuple=True)[0]
    pre = x_in @ sae.W_enc[:, dead_idx] + sae.b_enc[dead_idx]
    top = pre.topk(k_aux, dim=-1, sorted=False)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    recons = acts @ sae.W_dec[dead_idx]
    return coefficient * scale * (recons - residual).pow(2).sum(-1).mean()


@register
class TopKSAE(SAE):
    config_class = TopKSAEConfig
    unit_norm_decoder = True

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        if self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        top = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())

    def decode(self, f):
        if self.cfg.rescale_acts_by_decoder_norm:
            f = f / self.W_dec.norm(dim=-1)
        return super().decode(f)

    def training_loss(self, x, coefficients, dead=None) -> StepOutput:
        if self.cfg.rescale_acts_by_decoder_norm:
            raise ValueError("rescale_acts_by_decoder_norm=True is supported at inference only: headlab's TopK "
                             "training keeps decoder rows at unit norm instead")
        x_in, x_in_detached, pre = self._encoder_code(x)
        top = pre.topk(self.cfg.k, dim=-1, sorted=False)
        code = Code.from_indices(top.indices, self.cfg.d_sae)
        pre_at = code.encoder_values(pre, x_in_detached, self.W_enc, self.b_enc, self.b_dec_for_encoder())
        f = code.restrict(pre_at.relu())
        x_hat, mse = self._reconstruct(code, f, x)
        aux = topk_aux_loss(self, x_in, x, x_hat, dead, self.cfg.aux_loss_coefficient)
        fired = code.count_per_latent(f)
        losses = {"mse_loss": mse, "auxiliary_reconstruction_loss": aux}
        return StepOutput(mse + aux, losses, x_hat.detach(), fired, int(fired.sum()) / x.shape[0])
