"""Salient operations of one head: the source tokens its OV circuit amplifies most, each with
the targets it maps them to (Elhelo & Geva, 2024).

A token's salience is ‖e W_V W_O‖ / ‖e‖, computed over the whole vocabulary in chunks; the
most salient sources are then listed with the top-k entries of their map row e · W_VO · U.

    salient_operations(model, layer=1, head=4)     # DataFrame: rank, token, ratio, targets
"""

from __future__ import annotations

import pandas as pd
import torch

from interp.models import HookedModel

from .scores import DEFAULT_MAX_BYTES, check_k, source_embeddings, top_targets


def salient_operations(model: HookedModel, layer: int, head: int, *, n: int = 20, k: int = 10,
                       embedding: str = "E", chunk: int = 8192, skip_special: bool = True,
                       max_bytes: int = DEFAULT_MAX_BYTES) -> pd.DataFrame:
    """The `n` source tokens with the largest ‖e W_VO‖/‖e‖ for head (layer, head).

    Returns one row per source, most salient first: `rank`, `token_id`, `token`,
    `norm_ratio`, and `targets` (its top-`k` target tokens, best first). Special tokens are
    left out unless `skip_special=False`; so are tokens whose embedding is zero.
    """
    W_V = model.W_V(layer, head).float()   # [d_model, d_head]  (checks layer and head)
    W_O = model.W_O(layer, head).float()   # [d_head, d_model]
    if isinstance(n, bool) or isinstance(k, bool) or not isinstance(n, int) or not isinstance(k, int) or n < 1 or k < 1:
        raise ValueError(f"n and k must be ints >= 1, got n={n!r}, k={k!r}")
    check_k(model, k, "k (targets listed per source)")
    vocab = model.cfg.d_vocab
    ratio = torch.empty(vocab, device=model.device)
    for start in range(0, vocab, chunk):
        ids = torch.arange(start, min(start + chunk, vocab), device=model.device)
        e = source_embeddings(model, ids, layer, embedding)     # [chunk, d_model]
        ratio[ids] = (e @ W_V @ W_O).norm(dim=-1) / e.norm(dim=-1)
    ratio = torch.nan_to_num(ratio, nan=-torch.inf, posinf=-torch.inf)
    if skip_special:
        special = [i for i in model.tokenizer.all_special_ids if i < vocab]
        ratio[special] = -torch.inf
    best = ratio.topk(min(n, int(torch.isfinite(ratio).sum()))).indices
    x = source_embeddings(model, best, layer, embedding)
    top, _ = top_targets(x, W_V[None], W_O[None], model.W_U().float(), k, max_bytes)
    tok = model.tokenizer
    return pd.DataFrame({
        "rank": range(1, len(best) + 1),
        "token_id": best.tolist(),
        "token": [tok.decode([i]) for i in best.tolist()],
        "norm_ratio": ratio[best].tolist(),
        "targets": [[tok.decode([i]) for i in row] for row in top[0].tolist()],
    })
