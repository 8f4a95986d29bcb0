"""Argument checks shared by the model layer, with messages that say what was expected."""

from __future__ import annotations

import torch


def check_layer(layer: int, n_layers: int) -> int:
    """Return `layer` if it names an existing layer, else raise IndexError naming the range."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int in [0, {n_layers - 1}], got {layer!r}")
    if not 0 <= layer < n_layers:
        raise IndexError(f"layer {layer} is out of range: this model has layers 0..{n_layers - 1}")
    return layer


def check_head(head: int, n_heads: int) -> int:
    """Return `head` if it names an existing head, else raise IndexError naming the range."""
    if isinstance(head, bool) or not isinstance(head, int):
        raise TypeError(f"head must be an int in [0, {n_heads - 1}], got {head!r}")
    if not 0 <= head < n_heads:
        raise IndexError(f"head {head} is out of range: this model has heads 0..{n_heads - 1}")
    return head


def check_tokens(tokens: torch.Tensor, d_vocab: int, n_ctx: int) -> torch.Tensor:
    """Accept `[pos]` or `[batch, pos]` integer token ids; return `[batch, pos]`."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor of shape [batch, pos], got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must hold integer token ids of shape [batch, pos], got dtype {tokens.dtype}")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[1] == 0 or tokens.shape[0] == 0:
        raise ValueError(f"tokens must have shape [batch, pos] with batch, pos >= 1, got {tuple(tokens.shape)}")
    if tokens.shape[1] > n_ctx:
        raise ValueError(f"tokens have {tokens.shape[1]} positions; this model's context is {n_ctx}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= d_vocab:
        raise ValueError(f"token ids must lie in [0, {d_vocab - 1}], got values in [{lo}, {hi}]")
    return tokens.long()
