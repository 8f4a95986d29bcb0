"""Per-head ablation and gating, as interventions: one implementation for every analysis.

Each acts on a head's z (its attention-weighted values, before W_O), so removing head h of
layer l removes exactly its term z W_O from the attention output (the shared b_O stays);
under grouped-query attention it is a *query* head that goes, the key/value head it reads
stays for the other query heads of its group.

    model.run(tokens, interventions=ablation(model, [(0, 3), (2, 1)]))             # z := 0
    means = z_means(model, prompts)                                                  # [layer, pos, head, d_head]
    model.run(tokens, interventions=ablation(model, heads, kind="mean", means=means))
    gates = torch.ones(model.cfg.n_layers, model.cfg.n_heads, requires_grad=True)
    loss_fn(model.run(tokens, interventions=head_gates(model, gates))[0]).backward()  # gates.grad: dL/dgate
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from jaxtyping import Float

from . import sites
from .errors import check_head, check_layer
from .interventions import Intervention, Mean, Scale, Zero

if TYPE_CHECKING:
    from .config import ModelConfig
    from .hooked import HookedModel

KINDS = ("zero", "mean")


def check_heads(cfg: "ModelConfig", heads: Iterable[tuple[int, int]], distinct: bool = False,
                allow_empty: bool = True) -> list[tuple[int, int]]:
    """`heads` as a sorted list of distinct (layer, query head) pairs, each checked against the
    model's shape (IndexError naming the range; TypeError for a non-integer index). A head named
    twice is dropped, or refused with `distinct=True` (where acting on a head twice would
    change the result); no heads at all are refused with `allow_empty=False`."""
    try:
        pairs = [tuple(pair) for pair in heads]
    except TypeError as err:
        raise TypeError(f"heads must be an iterable of (layer, head) pairs, got {heads!r}") from err
    if not pairs and not allow_empty:
        raise ValueError("heads must name at least one (layer, head) pair, got none")
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"heads must be (layer, head) pairs, got {pair!r}")
        check_layer(pair[0], cfg.n_layers)
        check_head(pair[1], cfg.n_heads)
    if distinct and len(set(pairs)) != len(pairs):
        twice = sorted({pair for pair in pairs if pairs.count(pair) > 1})
        raise ValueError(f"heads must be distinct; named more than once: {twice}")
    return sorted(set(pairs))


def ablation(model: "HookedModel", heads: Iterable[tuple[int, int]], kind: str = "zero",
             means: Float[torch.Tensor, "layer ... head d_head"] | None = None) -> list[Intervention]:
    """Interventions that ablate `heads` [(layer, head), ...]: `kind="zero"` sets their z to 0,
    `kind="mean"` to `means[layer, ..., head]`, from `z_means`: `[layer, head, d_head]` (one
    mean over all positions) or `[layer, pos, head, d_head]` (per position; the prompts must
    then have `pos` positions). No heads: no interventions."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    heads = check_heads(model.cfg, heads)
    if kind == "zero":
        if means is not None:
            raise ValueError("means go with kind='mean'; zero ablation takes none")
        return [Zero(sites.z(layer, head)) for layer, head in heads]
    _check_means(model.cfg, means)
    return [Mean(sites.z(layer, head), value=means[layer, ..., head, :]) for layer, head in heads]


def _check_means(cfg: "ModelConfig", means) -> None:
    expected = f"[layer, head, d_head] = {(cfg.n_layers, cfg.n_heads, cfg.d_head)} or [layer, pos, head, d_head]"
    if not isinstance(means, torch.Tensor):
        raise TypeError(f"kind='mean' needs means, a tensor {expected} (see z_means), got {type(means).__name__}")
    shape = tuple(means.shape)
    if means.ndim not in (3, 4) or shape[0] != cfg.n_layers or shape[-2:] != (cfg.n_heads, cfg.d_head):
        raise ValueError(f"means must have shape {expected}, got {shape}")


def head_gates(model: "HookedModel", gates: Float[torch.Tensor, "layer head"]) -> list[Intervention]:
    """One `Scale` per layer multiplying each head's z by its gate `gates[layer, head]`, so that
    gradients with respect to `gates` (when it requires grad) reach it: the head-importance
    gates of Michel et al. (2019). A gate of 0 is zero ablation."""
    c = model.cfg
    if not isinstance(gates, torch.Tensor) or tuple(gates.shape) != (c.n_layers, c.n_heads):
        got = tuple(gates.shape) if isinstance(gates, torch.Tensor) else type(gates).__name__
        raise ValueError(f"gates must be a tensor [layer, head] = {(c.n_layers, c.n_heads)}, got {got}")
    return [Scale(sites.z(layer), factor=gates[layer][:, None]) for layer in range(c.n_layers)]


def z_means(model: "HookedModel", prompts: Sequence[str] | torch.Tensor, attention_mask: torch.Tensor | None = None,
            per_position: bool = True, batch_size: int = 32) -> Float[torch.Tensor, "layer ... head d_head"]:
    """Every head's z averaged over `prompts` (texts or a `[batch, pos]` token tensor with an
    optional attention mask), real tokens only, float32 on the model's device:
    `[layer, pos, head, d_head]` per position (each position over the prompts that reach it),
    or `[layer, head, d_head]` over every real token when `per_position=False`."""
    layers = range(model.cfg.n_layers)
    collected = model.collect(prompts, [sites.z(layer) for layer in layers], attention_mask, batch_size)
    z = collected.stack("z", layers)                              # [layer, batch, pos, head, d_head]
    real = collected.mask.float()[None, :, :, None, None]         # [1, batch, pos, 1, 1]
    dims = (1, 2) if not per_position else (1,)
    count = real.sum(dim=dims)
    if not bool((count > 0).all()):
        raise ValueError("z_means: some position has no real (unmasked) token in any prompt, so it has no mean")
    return ((z * real).sum(dim=dims) / count).to(model.device)
