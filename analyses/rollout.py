"""Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers").

Each layer's attention is averaged over heads, the residual connection is added as an
identity and rows are renormalised (docs/methods.md §1):

    Â^l = (mean_h A^{l,h} + I) / rowsum(mean_h A^{l,h} + I)

and rollout multiplies these from the input up, the new layer on the left:

    R^1 = Â^1,   R^l = Â^l R^{l-1}

`R^l[i, j]` is how much position i after block l (0-based index l-1) draws on input token j.
Padding is removed through a mask before renormalising, so a padded prompt gives the same
map as the same prompt alone.

    m = load_model("minilm")
    result = attention_rollout(m, ["The cat sat on the mat.", "It rained all day."])
    result.maps                   # [layer, batch, q, k]
    result.figure(prompt=0)       # heatmap over tokens after the last layer (layer=... for others)
    result.save("runs")           # a result bundle, analysis="rollout"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from interp.models import HookedModel, sites
from interp.patching import Task
from interp.results import Meta, Result
from interp.results.registry import Analysis

from .specs import ROLLOUT, RolloutConfig


@dataclass
class PromptAttention:
    """Attention patterns of a batch of prompts, with what is needed to read them.

    `patterns [layer, batch, head, q, k]` post-softmax; `mask [batch, pos]` True on real
    tokens, False on padding; `str_tokens[b]` the tokens of prompt b at its real positions;
    `tokens [batch, pos]` the token ids when they came from a model.
    """

    patterns: Float[torch.Tensor, "layer batch head q k"]
    mask: Bool[torch.Tensor, "batch pos"]
    str_tokens: list[list[str]] | None
    model_name: str
    tokens: Int[torch.Tensor, "batch pos"] | None = None


def attention_patterns(
    model: HookedModel,
    prompts: Sequence[str] | Int[torch.Tensor, "batch pos"],
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    batch_size: int = 32,
) -> PromptAttention:
    """Run `model` on `prompts` and keep every layer's attention pattern.

    `prompts` is a list of texts (each tokenized alone, then right-padded together with a
    mask, so padding never changes a prompt's attention: `HookedModel.collect`) or a
    `[batch, pos]` token tensor with an optional `attention_mask` (1 = real token).
    Patterns come back as float32 on the CPU.
    """
    layers = range(model.cfg.n_layers)
    collected = model.collect(prompts, [sites.pattern(layer) for layer in layers], attention_mask, batch_size)
    return PromptAttention(collected.stack("pattern", layers), collected.mask, collected.str_tokens,
                           model.cfg.name, collected.tokens)


def residual_attention(
    patterns: Float[torch.Tensor, "layer batch head q k"],
    mask: Bool[torch.Tensor, "batch pos"] | None = None,
) -> Float[torch.Tensor, "layer batch q k"]:
    """Â^l: heads averaged, identity added, rows renormalised, in float64.

    Each head's rows must be row-stochastic (non-negative, summing to 1) at every real query.
    With a `mask`, padded keys are dropped before renormalising and rows and columns of
    padded positions are 0 in the result.
    """
    patterns, mask = check_patterns(patterns, mask)
    real = mask.to(torch.float64)
    mean = patterns.to(torch.float64).mean(dim=2) * (real[:, :, None] * real[:, None, :])
    augmented = mean + torch.diag_embed(real)
    # Padded rows are all zero, so any positive floor leaves them zero.
    return augmented / augmented.sum(dim=-1, keepdim=True).clamp_min(1e-300)


def check_patterns(patterns, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check `patterns [layer, batch, head, q, k]` and `mask [batch, pos]`; return the
    patterns and the mask as bool (all True when None). Raises ValueError on a wrong shape,
    an empty axis, a prompt with no real token, or rows that are not row-stochastic."""
    if not isinstance(patterns, torch.Tensor) or not patterns.is_floating_point():
        raise ValueError(f"patterns must be a float tensor [layer, batch, head, q, k], got {_describe(patterns)}")
    if patterns.ndim != 5 or patterns.shape[-1] != patterns.shape[-2]:
        raise ValueError(f"patterns must have shape [layer, batch, head, q, k] with q == k, got {tuple(patterns.shape)}")
    if 0 in patterns.shape:
        raise ValueError(f"patterns must have at least one layer, prompt, head and position, got {tuple(patterns.shape)}")
    n_layers, batch, _, n_pos, _ = patterns.shape
    if mask is None:
        mask = torch.ones(batch, n_pos, dtype=torch.bool, device=patterns.device)
    elif not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (batch, n_pos):
        raise ValueError(f"mask must have shape [batch, pos] = {(batch, n_pos)} to match the patterns, "
                         f"got {_describe(mask)}")
    mask = mask.to(patterns.device).bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"every prompt needs at least one real (unmasked) token; prompts {empty} have none")
    if not torch.isfinite(patterns).all():
        raise ValueError("patterns hold NaN or infinite values")
    tol = 1e-3 if patterns.dtype in (torch.float32, torch.float64) else 2e-2
    minimum = float(patterns.min())
    if minimum < -tol:
        raise ValueError(f"patterns must be post-softmax (non-negative); found an entry of {minimum:.4g}")
    sums = patterns.to(torch.float64).sum(dim=-1)  # [layer, batch, head, q]
    error = (sums - 1).abs() * mask[None, :, None, :]
    if error.max() > tol:
        where = np.unravel_index(int(error.argmax()), tuple(error.shape))
        raise ValueError(f"patterns must be row-stochastic (each head's row sums to 1 over keys, post-softmax); "
                         f"layer {where[0]}, prompt {where[1]}, head {where[2]}, query {where[3]} sums to "
                         f"{float(sums[tuple(where)]):.6g}")
    return patterns, mask


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def resolve_source(source, prompts=None, mask=None) -> PromptAttention:
    """The attention an analysis reads: `source` is a `HookedModel` (with `prompts`: texts or
    tokens, `mask` its attention mask), a `PromptAttention`, or a patterns tensor
    `[layer, batch, head, q, k]` (with an optional `mask [batch, pos]`)."""
    if isinstance(source, HookedModel):
        if prompts is None:
            raise ValueError("with a model, pass the prompts too: a list of texts or a [batch, pos] token tensor")
        return attention_patterns(source, prompts, attention_mask=mask)
    if prompts is not None:
        raise ValueError("prompts go with a model; with patterns, pass only the patterns (and mask)")
    if isinstance(source, PromptAttention):
        if mask is not None:
            raise ValueError("a PromptAttention carries its own mask; do not pass another")
        return source
    patterns, checked = check_patterns(source, mask)
    return PromptAttention(patterns, checked, None, "patterns")


def attention_rollout(
    source: HookedModel | PromptAttention | Float[torch.Tensor, "layer batch head q k"],
    prompts: Sequence[str] | Int[torch.Tensor, "batch pos"] | None = None,
    mask: Bool[torch.Tensor, "batch pos"] | None = None,
) -> RolloutResult:
    """Attention rollout for every layer and prompt.

    Args:
        source: a `HookedModel` (then `prompts` are texts or tokens, `mask` the tokens'
            attention mask), a `PromptAttention` from `attention_patterns`, or patterns
            `[layer, batch, head, q, k]` (then `mask [batch, pos]` marks real tokens).
    Returns:
        `RolloutResult` whose `maps[l, b]` is R^{l+1} of prompt b (after block l),
        `[layer, batch, q, k]`, rows of real queries summing to 1, padding 0.
    """
    attention = resolve_source(source, prompts, mask)
    a_hat = residual_attention(attention.patterns, attention.mask)
    maps = [a_hat[0]]
    for layer in range(1, len(a_hat)):
        maps.append(a_hat[layer] @ maps[-1])
    return RolloutResult(maps=torch.stack(maps), mask=attention.mask, str_tokens=attention.str_tokens,
                         model_name=attention.model_name, layers=list(range(len(a_hat))))


def run(model: HookedModel, config: RolloutConfig, task: Task | None = None, *, progress: bool = True
        ) -> RolloutResult:
    """The registered analysis "rollout" (`analyses.specs`)."""
    return attention_rollout(model, list(config.texts))


@dataclass
class AttentionMaps(Result):
    """Token-to-token maps per layer: `maps [layer, batch, q, k]` for the blocks named in
    `layers` (0-based), `mask [batch, pos]` (True = real token), `str_tokens[b]` the real
    tokens of prompt b (None when built from bare patterns). NaN marks entries not computed.
    `figure(prompt=, layer=)` draws one prompt's map after one block (default the last)."""

    maps: Float[torch.Tensor, "layer batch q k"]
    mask: Bool[torch.Tensor, "batch pos"]
    str_tokens: list[list[str]] | None
    model_name: str
    layers: list[int]
    parameters: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, prompt, query, key) of real tokens with a computed value:
        columns layer, prompt, query, key, query_token, key_token (when known), value."""
        maps = self.maps.detach().cpu().numpy()
        real = self.mask.cpu().numpy()
        keep = real[None, :, :, None] & real[None, :, None, :] & np.isfinite(maps)
        index = np.nonzero(keep)
        frame = pd.DataFrame({"layer": np.asarray(self.layers)[index[0]], "prompt": index[1],
                              "query": index[2], "key": index[3], "value": maps[index]})
        if self.str_tokens is not None:
            # str_tokens list real tokens only; map padded positions to their rank among real ones.
            rank = np.cumsum(real, axis=1) - 1
            for column in ("query", "key"):
                frame[f"{column}_token"] = [self.str_tokens[b][rank[b, p]]
                                            for b, p in zip(frame["prompt"], frame[column])]
        return frame

    def meta(self) -> Meta:
        return Meta(model=self.model_name, parameters={"layers": self.layers, **self.parameters},
                    extra={"str_tokens": self.str_tokens})

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"maps": self.to_frame()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"maps": self.maps, "mask": self.mask}


@dataclass
class RolloutResult(AttentionMaps):
    """Attention rollout maps `[layer, batch, q, k]` (see `attention_rollout`)."""

    spec: ClassVar[Analysis] = ROLLOUT
