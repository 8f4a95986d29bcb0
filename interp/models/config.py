"""The model facts every analysis needs, in TransformerLens's names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Shape and kind of a loaded model.

    `family` is the architecture family ("gpt2", "gpt_neox", "llama", "mistral", "qwen2",
    "gemma2", "bert"); `architecture` the Hugging Face class name.
    `n_kv_heads` is the number of key/value heads: equal to `n_heads` for multi-head attention,
    fewer under grouped-query attention (query head h reads key/value head `kv_head(h)`).
    `is_causal` is False for encoders (BERT-style), whose attention sees every position.
    `has_lm_head` is False when the checkpoint carries no trained unembedding head (a plain
    sentence encoder): then `HookedModel.__call__` returns final hidden states, not logits, and
    `HookedModel.W_U` is the tied token embedding.
    `pre_ln` says the norm sits before each sublayer (GPT-2, Llama, ...) rather than after (BERT);
    only pre-norm models have "processed" (norm-folded) weights.
    `parallel` says attention and MLP both read the block's input (GPT-NeoX), so there is no
    residual stream between them (no resid_mid).
    """

    name: str
    architecture: str
    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    is_causal: bool
    has_lm_head: bool
    pre_ln: bool
    parallel: bool

    def kv_head(self, head: int) -> int:
        """The key/value head that query head `head` reads."""
        return head // (self.n_heads // self.n_kv_heads)
