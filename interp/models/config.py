"""The model facts every analysis needs, in TransformerLens's names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Shape and kind of a loaded model.

    `is_causal` is False for encoders (BERT-style), whose attention sees every position.
    `has_lm_head` is False when the checkpoint carries no trained unembedding head (a plain
    sentence encoder): then `HookedModel.__call__` returns final hidden states, not logits, and
    `HookedModel.W_U` is the tied token embedding.
    `pre_ln` says LayerNorm sits before each sublayer (GPT-2) rather than after (BERT); only
    pre-LN models have "processed" (LayerNorm-folded) weights.
    """

    name: str
    architecture: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    is_causal: bool
    has_lm_head: bool
    pre_ln: bool
