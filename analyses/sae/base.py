"""The SAE base class: parameters, input checks, encode/decode/forward, and the training loss
each architecture builds from its own activation and penalty."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
import torch.nn.functional as F
from torch import nn

from analyses.sae.config import SAEConfig
from analyses.sae.sparse import Code


def check_activations(x, d_in: int, what: str = "activations", width: str = "d_in") -> None:
    """Refuse anything but a finite floating tensor [..., d_in] (`width` names the last dimension)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor [..., {width}={d_in}], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be floating point, got {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != d_in:
        raise ValueError(f"{what} must have shape [..., {width}={d_in}], got {list(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{what} are empty: shape {list(x.shape)}")
    # a NaN or inf makes the sum non-finite: one cheap pass, the elementwise check only then
    if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf ({int((~torch.isfinite(x)).sum())} of {x.numel()} values)")


@dataclass
class StepOutput:
    """One training forward pass.

    loss: the scalar to differentiate; losses: its terms under SAELens's names (mse_loss, l1_loss,
    l0_loss, auxiliary_reconstruction_loss); sae_out: the reconstruction [batch, d_in] (detached);
    fired: [d_sae] number of rows in which each latent was active; l0: mean active latents per row.
    """

    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    sae_out: torch.Tensor
    fired: torch.Tensor
    l0: float


class SAE(nn.Module):
    """A sparse autoencoder with SAELens's parameter names and shapes.

    W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in] (+ threshold [d_sae] for
    JumpReLU). encode: f = act((x - b_dec) @ W_enc + b_enc) (b_dec subtracted only when
    cfg.apply_b_dec_to_input); decode: x_hat = f @ W_dec + b_dec.

    Subclasses set `config_class`, implement `activation(pre)` (inference) and `training_loss`.
    `seed` makes the initialisation reproducible whatever the global RNG state.
    """

    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    # TopK-style architectures keep every decoder row at unit norm (Gao et al.)
    unit_norm_decoder: ClassVar[bool] = False

    def __init__(self, cfg: SAEConfig, *, seed: int = 0):
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        dtype, device = cfg.torch_dtype, torch.device(cfg.device)
        gen = torch.Generator().manual_seed(seed)
        # SAELens/Anthropic initialisation: kaiming-uniform decoder rows rescaled to a fixed norm,
        # encoder = decoder transposed, biases zero.
        bound = (6.0 / cfg.d_in) ** 0.5  # kaiming_uniform_ on a [d_sae, d_in] matrix (fan_in = d_in)
        W_dec = (torch.rand(cfg.d_sae, cfg.d_in, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        norm = 1.0 if self.unit_norm_decoder else cfg.decoder_init_norm
        if norm is not None:
            W_dec = W_dec / W_dec.norm(dim=1, keepdim=True) * norm
        W_dec = W_dec.to(dtype=dtype, device=device)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype, device=device))

    @property
    def architecture(self) -> str:
        return self.cfg.architecture

    # ---- inference ------------------------------------------------------------------------

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """x - b_dec (or x), in the SAE's dtype."""
        x = x.to(self.W_enc.dtype)
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def hidden_pre(self, x: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        """Pre-activations (x - b_dec) @ W_enc + b_enc."""
        check_activations(x, self.cfg.d_in)
        return self._input(x) @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        """Latent activations [..., d_sae] of activations x [..., d_in]."""
        return self.activation(self.hidden_pre(x))

    def decode(self, f: Float[torch.Tensor, "... d_sae"]) -> Float[torch.Tensor, "... d_in"]:
        """Reconstruction f @ W_dec + b_dec [..., d_in] of latents f [..., d_sae]."""
        check_activations(f, self.cfg.d_sae, "latent activations", "d_sae")
        return f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_in"]:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scale: float) -> None:
        """Make an SAE trained on activations multiplied by `scale` read raw activations (SAELens's
        name): W_enc *= scale, W_dec /= scale, b_dec /= scale. Every pre-activation, latent and
        threshold stays the same, and x_hat comes out in raw units. Decoder rows then have norm
        1 / scale (TopK's unit norm holds in training units)."""
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        if getattr(self.cfg, "rescale_acts_by_decoder_norm", False):
            raise ValueError("cannot fold a scale into an SAE with rescale_acts_by_decoder_norm=True "
                             "(its latents depend on the decoder norms)")
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    # ---- training -------------------------------------------------------------------------

    def coefficient_names(self) -> dict[str, tuple[str, str | None]]:
        """Sparsity coefficients: name -> (config field of its value, config field of its warm-up
        steps or None), as SAELens's `get_coefficients`."""
        return {}

    def training_loss(self, x: torch.Tensor, coefficients: dict[str, float],
                      dead: torch.Tensor | None = None) -> StepOutput:
        """Loss on a batch x [batch, d_in] (checked by the trainer). `coefficients` holds the current
        (warmed-up) sparsity coefficients; `dead` [d_sae] bool marks latents that have not fired
        within the dead-latent window (used by TopK's auxiliary loss)."""
        raise NotImplementedError

    def _encoder_code(self, x: torch.Tensor):
        """(x_in with autograd, x_in detached, pre [batch, d_sae] without autograd)."""
        x_in = self._input(x)
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, x_in.detach() if x_in.requires_grad else x_in, self.W_enc)
        return x_in, x_in.detach(), pre

    def _reconstruct(self, code: Code, f: torch.Tensor, x: torch.Tensor):
        """(x_hat [batch, d_in], mse_loss = mean over rows of ||x - x_hat||^2)."""
        x_hat = code.decode(f, self.W_dec) + self.b_dec
        return x_hat, F.mse_loss(x_hat, x, reduction="sum") / x.shape[0]

    def b_dec_for_encoder(self):
        return self.b_dec if self.cfg.apply_b_dec_to_input else None

    @torch.no_grad()
    def after_step(self) -> None:
        """Constraints applied after each optimiser step (unit-norm decoder rows, thresholds >= 0)."""
        if self.unit_norm_decoder:
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
