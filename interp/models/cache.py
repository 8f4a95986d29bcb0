"""Cached activations of one forward pass, read by layer in TransformerLens's hook names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch
from jaxtyping import Float

from .errors import check_layer

if TYPE_CHECKING:
    from .hooked import HookedModel


class Cache:
    """Activations of a `HookedModel.run_with_cache` call.

    `cache["blocks.0.attn.hook_z"]` reads any hook by its TransformerLens name; the methods
    below name the ones analyses use most, with their shapes.
    """

    def __init__(self, store: dict[str, torch.Tensor], model: "HookedModel"):
        self._store = store
        self._model = model

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._store[name]
        except KeyError:
            close = [k for k in self._store if name.split(".")[-1] in k][:5]
            raise KeyError(f"no activation named {name!r} in this cache; similar names: {close}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._store

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def keys(self) -> list[str]:
        return list(self._store)

    def _layer(self, layer: int, hook: str) -> torch.Tensor:
        check_layer(layer, self._model.cfg.n_layers)
        return self[f"blocks.{layer}.{hook}"]

    def pattern(self, layer: int) -> Float[torch.Tensor, "batch head q k"]:
        """Post-softmax attention of every head: rows are queries, columns keys."""
        return self._layer(layer, "attn.hook_pattern")

    def attn_scores(self, layer: int) -> Float[torch.Tensor, "batch head q k"]:
        """Pre-softmax attention scores (masked entries hold a large negative number)."""
        return self._layer(layer, "attn.hook_attn_scores")

    def z(self, layer: int) -> Float[torch.Tensor, "batch pos head d_head"]:
        """Each head's attention-weighted values, before W_O."""
        return self._layer(layer, "attn.hook_z")

    def head_out(self, layer: int) -> Float[torch.Tensor, "batch pos head d_model"]:
        """Each head's contribution to the residual stream: z @ W_O, without the shared b_O.

        In a pre-LN model, summed over heads and added to b_O it gives `attn_out(layer)`.
        """
        w_o = self._model.W_O(layer).to(self.z(layer).dtype)
        return torch.einsum("bphe,hed->bphd", self.z(layer), w_o)

    def attn_out(self, layer: int) -> Float[torch.Tensor, "batch pos d_model"]:
        """The attention sublayer's output (for post-LN encoders such as BERT: after its
        residual add and LayerNorm, as Hugging Face's BertSelfOutput computes it)."""
        return self._layer(layer, "hook_attn_out")

    def mlp_out(self, layer: int) -> Float[torch.Tensor, "batch pos d_model"]:
        return self._layer(layer, "hook_mlp_out")

    def resid_pre(self, layer: int) -> Float[torch.Tensor, "batch pos d_model"]:
        """The residual stream entering block `layer`."""
        return self._layer(layer, "hook_resid_pre")

    def resid_mid(self, layer: int) -> Float[torch.Tensor, "batch pos d_model"]:
        return self._layer(layer, "hook_resid_mid")

    def resid_post(self, layer: int) -> Float[torch.Tensor, "batch pos d_model"]:
        """The residual stream leaving block `layer` (for post-LN encoders: after its LayerNorm)."""
        return self._layer(layer, "hook_resid_post")
