"""Sparse autoencoders (SAEs) on activation tensors: architectures, training, metrics, SAELens files.

An SAE rewrites an activation vector x [d_in] (a residual stream, an MLP output, a layer's
concatenated head outputs z) as a sparse, non-negative combination of many learned directions:
latents f = act((x - b_dec) @ W_enc + b_enc) [d_sae], reconstruction x_hat = f @ W_dec + b_dec.
Each row of W_dec is a "feature" direction; few latents are non-zero for any one input.

This package works on tensors only, independent of any model (the model sites that produce the
activations live elsewhere):

- architectures, one module each, registered by SAELens's names: `standard` (ReLU + decoder-norm-
  weighted L1), `topk` (Gao et al.), `batchtopk` (Bussmann et al.; runs and saves as a JumpReLU
  with its learned global threshold), `jumprelu` (Rajamanoharan et al.). Build one with
  `make_sae("topk", d_in=768, d_sae=6144, k=32)` or `TopKSAE(TopKSAEConfig(...))`; parameters
  and config fields are named and shaped as in SAELens 6.
- `train.train_saes`: trains one or several SAEs on one stream of activation batches, with
  atomic, resumable checkpoints. The training step is exact but cheap: only the active latents
  enter the decoder and the backward passes (`sparse.Code`).
- `metrics.evaluate`: explained variance, MSE, cosine similarity, L0, L1, L2 ratio, feature
  density, dead and dense latents, under SAELens's names.
- `saelens_io.save_sae` / `load_sae`: SAELens's folder format (`cfg.json`,
  `sae_weights.safetensors`, optional `sparsity.safetensors`), checked against SAELens itself.
- `synthetic`: activations with known ground-truth features (Sharkey et al.) and the mean max
  cosine similarity (MMCS) that scores how well an SAE recovered them.
"""

from analyses.sae.base import SAE, StepOutput, check_activations
from analyses.sae.batchtopk import BatchTopKSAE, BatchTopKSAEConfig
from analyses.sae.config import SAEConfig, architectures, sae_class
from analyses.sae.jumprelu import JumpReLUSAE, JumpReLUSAEConfig
from analyses.sae.standard import StandardSAE, StandardSAEConfig
from analyses.sae.topk import TopKSAE, TopKSAEConfig


def make_sae(architecture: str, *, seed: int = 0, **config) -> SAE:
    """A freshly initialised SAE: `make_sae("topk", d_in=768, d_sae=6144, k=32, seed=0)`."""
    cls = sae_class(architecture)
    return cls(cls.config_class(**config), seed=seed)


__all__ = [
    "SAE", "SAEConfig", "StepOutput", "check_activations", "make_sae", "sae_class", "architectures",
    "StandardSAE", "StandardSAEConfig", "TopKSAE", "TopKSAEConfig", "BatchTopKSAE", "BatchTopKSAEConfig",
    "JumpReLUSAE", "JumpReLUSAEConfig",
]
