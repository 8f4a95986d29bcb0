"""Activations of one forward pass, keyed by site."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch
from jaxtyping import Float

from .errors import check_layer
from .interventions import select
from .sites import Site, parse

if TYPE_CHECKING:
    from .hooked import HookedModel


class Cache:
    """Activations captured by `HookedModel.run` / `run_with_cache`.

    `cache[site]` reads a site (`sites.z(3)`, `sites.z(3, 5)` for one head, the string
    "z(3, 5)", or a TransformerLens hook name such as "blocks.3.attn.hook_z"); the methods
    below name the ones analyses use most, with their shapes. `head_out` is computed from
    `z` when it was not captured itself.
    """

    def __init__(self, store: dict[Site, torch.Tensor], model: "HookedModel"):
        self._store = store
        self._model = model

    def __getitem__(self, key: Site | str) -> torch.Tensor:
        site = parse(key)
        whole = site.all_heads
        if whole in self._store:
            value = self._store[whole]
        elif whole.kind == "head_out" and Site("z", whole.layer) in self._store:
            value = self.head_out(whole.layer)
        else:
            kept = ", ".join(str(s) for s in sorted(self._store)[:8])
            raise KeyError(f"{site} was not captured in this run; it holds {len(self._store)} sites ({kept}"
                           f"{', ...' if len(self._store) > 8 else ''})")
        return value if site.head is None else value[select(value, site, None)]

    def __contains__(self, key: Site | str) -> bool:
        return parse(key).all_heads in self._store

    def __iter__(self) -> Iterator[Site]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def keys(self) -> list[Site]:
        return list(self._store)

    def _layer(self, kind: str, layer: int) -> torch.Tensor:
        check_layer(layer, self._model.cfg.n_layers)
        return self[Site(kind, layer)]

    def pattern(self, layer: int) -> Float[torch.Tensor, "batch head q k"]:
        """Post-softmax attention of every head: rows are queries, columns keys."""
        return self._layer("pattern", layer)

    def attn_scores(self, layer: int) -> Float[torch.Tensor, "batch head q k"]:
        """Pre-softmax attention scores (masked entries hold a large negative number)."""
        return self._layer("scores", layer)

    def q(self, layer: int) -> Float[torch.Tensor, "batch pos head d_head"]:
        """Queries before rotary embeddings."""
        return self._layer("q", layer)

    def k(self, layer: int) -> Float[torch.Tensor, "batch pos kv_head d_head"]:
        """Keys (before rotary embeddings) of each key/value head."""
        return self._layer("k", layer)

    def v(self, layer: int) -> Float[torch.Tensor, "batch pos kv_head d_head"]:
        """Values of each key/value head."""
        return self._layer("v", layer)

    def z(self, layer: int) -> Float[torch.Tensor, "batch pos head d_head"]:
        """Each head's attention-weighted values, before W_O."""
        return self._layer("z", layer)

    def head_out(self, layer: int) -> Float[torch.Tensor, "batch pos head d_model"]:
        """Each head's contribution to the attention output: z @ W_O, without the shared b_O.

        Summed over heads and added to b_O it gives the attention output before any
        post-attention norm (equal to `attn_out(layer)` in models without one)."""
        if Site("head_out", layer) in self._store:
            return self._store[Site("head_out", layer)]
        z = self.z(layer)
        return torch.einsum("bphe,hed->bphd", z, self._model.W_O(layer).to(z.dtype))

    def attn_out(self, layer: int) -> Float[torch.Tensor, "batch pos d_model"]:
        """The attention sublayer's output (for post-LN encoders such as BERT: after its
        residual add and LayerNorm, as Hugging Face's BertSelfOutput computes it)."""
        return self._layer("attn_out", layer)

    def mlp_out(self, layer: int) -> Float[torch.Tensor, "batch pos d_model"]:
        return self._layer("mlp_out", layer)

    def resid_pre(self, layer: int) -> Float[torch.Tensor, "batch pos d_model"]:
        """The residual stream entering block `layer`."""
        return self._layer("resid_pre", layer)

    def resid_mid(self, layer: int) -> Float[torch.Tensor, "batch pos d_model"]:
        return self._layer("resid_mid", layer)

    def resid_post(self, layer: int) -> Float[torch.Tensor, "batch pos d_model"]:
        """The residual stream leaving block `layer` (for post-LN encoders: after its LayerNorm)."""
        return self._layer("resid_post", layer)
