"""Attention sinks: sink rates, massive activations, sink tokens by hidden state, reference
frames, and attention redistribution (docs/methods.md §3).

- Sink rate (Gu et al., 2024): for key k, α_k^{l,h} = mean of A^{l,h}[i, k] over the real
  queries i that can see k (causal: i >= k; encoder: every real query). Head (l, h) has a
  sink at k when α_k > ε. The sink rate at k is the percentage of all L·H heads with a sink
  at k, per prompt, then averaged over the prompts that have a real token at k.
- Massive activations (Sun et al., 2024): residual entries with |x| > `abs_threshold` and
  |x| > `ratio` × the median |x| of the same hidden state (same layer, prompt, position).
- Sink tokens by hidden state (Kang et al., 2025): φ(x) = max over sink dims d of
  |x_d / RMS(x)|; a token is a sink at a layer when φ > τ. Without given dims, the sink dims
  are those holding a massive activation anywhere.
- Reference frames (Ruscio et al., 2025): see `reference_frame` for the exact rule.
- Attention redistribution (Kang et al., 2025): `redistribution` gives interventions that edit
  chosen heads' patterns so attention on sink tokens is scaled by p and the freed mass goes to
  the other tokens in proportion to their attention.

Pitfalls the code keeps visible: whether a BOS token was prepended (`SinkResult.bos_prepended`)
changes everything; in causal models a late key is seen by few queries, so its α is the
average of very few numbers (the last key's α is one query attending to itself), and on short
prompts even a uniform head passes ε at k = 0 (α_0 = H_n / n, 0.61 for n = 3, 0.07 for
n = 64). Use prompts of some length (the reference setting is 64 tokens).

    m = load_model("minilm")
    result = sink_analysis(m, ["The cat sat on the mat.", ...])
    result.rate_at(0), result.rate_at(-1)     # % of heads with a sink at [CLS], at [SEP]
    result.summary()                          # DataFrame: key, rate, n_prompts, token
    result.model_frame                        # "bidirectional"
    result.save("runs")                       # a result bundle, analysis="sinks"
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from interp.models import HookedModel, Splice, sites
from interp.models.ablation import check_heads
from interp.models.tokens import bos_token_id
from interp.patching import Task
from interp.results import Meta, Result
from interp.results.registry import Analysis

from .heads import random_prompts
from .rollout import check_patterns
from .specs import SINKS, SinksConfig

FRAMES = ("none", "centralized", "distributed", "bidirectional")


# ---------------------------------------------------------------------------- sink rate


def sink_scores(
    patterns: Float[torch.Tensor, "layer batch head q k"],
    mask: Bool[torch.Tensor, "batch pos"] | None = None,
    is_causal: bool = True,
) -> Float[torch.Tensor, "batch layer head k"]:
    """α_k for every prompt, head and key: the mean of A[i, k] over the real queries that can
    see k (causal: i >= k; encoder: all real queries). NaN at padded keys.

    `patterns` must be row-stochastic at real queries (checked); `mask` is True on real tokens.
    """
    patterns, mask = check_patterns(patterns, mask)
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be True or False, got {is_causal!r}")
    n_pos = patterns.shape[-1]
    real = mask.to(torch.float64)
    sees = real[:, :, None] * real[:, None, :]  # [batch, q, k]
    if is_causal:
        _check_causal(patterns, mask)
        sees = sees * torch.ones(n_pos, n_pos, dtype=torch.float64, device=sees.device).tril()
    total = (patterns.to(torch.float64) * sees[None, :, None]).sum(dim=-2)  # [layer, batch, head, k]
    alpha = total / sees.sum(dim=1)[None, :, None].clamp_min(1)
    alpha = alpha.masked_fill(~mask[None, :, None, :], float("nan"))
    return alpha.permute(1, 0, 2, 3).float().cpu()


CAUSAL_SLACK = 1e-6  # attention above the diagonal beyond rounding means the pattern is not causal


def _check_causal(patterns: torch.Tensor, mask: torch.Tensor) -> None:
    """Refuse attention to later keys: with is_causal=True those weights would be dropped."""
    real = mask[:, :, None] & mask[:, None, :]                         # [batch, q, k]
    above = torch.ones(real.shape[-1], real.shape[-1], dtype=torch.bool, device=real.device).triu(1)
    leaked = (patterns.abs() * (real & above)[None, :, None]).amax()
    if leaked > CAUSAL_SLACK:
        where = ((patterns.abs() * (real & above)[None, :, None]) == leaked).nonzero()[0].tolist()
        raise ValueError(f"is_causal=True but the patterns attend to later keys (layer {where[0]}, prompt {where[1]}, "
                         f"head {where[2]}: query {where[3]} gives {float(leaked):.3g} to key {where[4]}); "
                         "pass is_causal=False for bidirectional attention (encoders)")


# ---------------------------------------------------------------------------- frames


def reference_frame(anchors: Sequence[int], n_real: int) -> str:
    """Classify a set of anchor (sink) key positions of one prompt with `n_real` real tokens.

    Rule:
    - "none": no anchor;
    - "bidirectional": anchors at both the first (0) and the last (n_real - 1) real token,
      e.g. [CLS] and [SEP] (needs n_real >= 2);
    - "centralized": exactly one anchor (wherever it is, typically the first token);
    - "distributed": two or more anchors, not at both ends.
    """
    anchors = set(int(k) for k in anchors)
    if not anchors:
        return "none"
    if n_real >= 2 and {0, n_real - 1} <= anchors:
        return "bidirectional"
    return "centralized" if len(anchors) == 1 else "distributed"


def _mode(labels: Sequence[str]) -> str:
    """Most common label; ties go to the earlier one in FRAMES."""
    counts = Counter(labels)
    return max(FRAMES, key=lambda frame: (counts[frame], -FRAMES.index(frame)))


# ---------------------------------------------------------------------------- result


@dataclass
class SinkResult(Result):
    """Sink analysis of a batch of prompts.

    `alpha [batch, layer, head, k]`: α_k per prompt and head (NaN at padding);
    `mask [batch, pos]` True on real tokens; `str_tokens[b]` the real tokens of prompt b;
    `bos_prepended`: whether every prompt starts with the tokenizer's BOS (causal) or [CLS]
    (encoder) token (None when built from bare patterns); `massive`: the massive-activation
    table (see `find_massive`); `phi [layer, batch, pos]` with `sink_dims` and `tau`: the
    hidden-state sink score (see `sink_token_scores`), None when not computed.
    `frame_min_rate`: the model-level anchor threshold of `model_frame`, in percent.
    """

    spec: ClassVar[Analysis] = SINKS
    alpha: Float[torch.Tensor, "batch layer head k"]
    mask: Bool[torch.Tensor, "batch pos"]
    epsilon: float
    is_causal: bool
    model_name: str
    str_tokens: list[list[str]] | None = None
    bos_prepended: bool | None = None
    massive: pd.DataFrame | None = None
    phi: Float[torch.Tensor, "layer batch pos"] | None = None
    sink_dims: list[int] = field(default_factory=list)
    tau: float | None = None
    frame_min_rate: float = SinksConfig.frame_min_rate
    parameters: dict = field(default_factory=dict)
    seed: int | None = None

    @property
    def has_sink(self) -> Bool[torch.Tensor, "batch layer head k"]:
        """α_k > ε (False at padding)."""
        return self.alpha > self.epsilon

    @property
    def n_real(self) -> Int[torch.Tensor, "batch"]:
        return self.mask.sum(dim=1)

    def prompt_rates(self) -> Float[torch.Tensor, "batch k"]:
        """Per prompt, the percentage of all L·H heads with a sink at each key (NaN at padding)."""
        rates = 100 * self.has_sink.float().mean(dim=(1, 2))
        return rates.masked_fill(~self.mask, float("nan"))

    @property
    def rate(self) -> Float[torch.Tensor, "k"]:
        """Sink rate at each key position: `prompt_rates` averaged over the prompts with a
        real token there (NaN where none has)."""
        return torch.nanmean(self.prompt_rates(), dim=0)

    def rate_at(self, position: int) -> float:
        """Sink rate at one position, averaged over prompts; a negative position counts from
        the end of each prompt's real tokens (-1: the last one, e.g. [SEP])."""
        index = self._positions(position)
        rows = self.prompt_rates()[torch.arange(len(index)), index.clamp_min(0)]
        rows = rows[index >= 0]
        if len(rows) == 0:
            raise ValueError(f"no prompt has a real token at position {position}")
        return float(rows.mean())

    def head_rate_at(self, position: int) -> Float[torch.Tensor, "layer head"]:
        """Fraction of prompts in which each head has a sink at `position` (negative: from the
        end of each prompt), over the prompts that have it."""
        index = self._positions(position)
        keep = index >= 0
        if not keep.any():
            raise ValueError(f"no prompt has a real token at position {position}")
        sinks = self.has_sink[torch.arange(len(index)), :, :, index.clamp_min(0)]  # [batch, layer, head]
        return sinks[keep].float().mean(dim=0)

    def _positions(self, position: int) -> Int[torch.Tensor, "batch"]:
        """Absolute key index per prompt (-1 where the prompt is too short)."""
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
            raise TypeError(f"position must be an int (negative: from the end of each prompt), got {position!r}")
        n = self.n_real
        index = n + position if position < 0 else torch.full_like(n, position)
        return torch.where((index >= 0) & (index < n), index, torch.full_like(n, -1))

    def _anchors(self, sinks: Bool[torch.Tensor, "k"], n_real: int) -> list[int]:
        # In a causal model the last key's α is one query's self-attention: never an anchor.
        limit = n_real - 1 if self.is_causal else n_real
        return [k for k in range(limit) if sinks[k]]

    def head_frames(self) -> list[list[str]]:
        """`frames[l][h]`: per head, the most common `reference_frame` over prompts of its
        sink keys (α_k > ε). Causal models never count their last key (seen by itself only)."""
        n_layers, n_heads = self.alpha.shape[1:3]
        labels = [[[] for _ in range(n_heads)] for _ in range(n_layers)]
        for b, n in enumerate(self.n_real.tolist()):
            sinks = self.has_sink[b]
            for layer in range(n_layers):
                for head in range(n_heads):
                    labels[layer][head].append(reference_frame(self._anchors(sinks[layer, head], n), n))
        return [[_mode(per_head) for per_head in row] for row in labels]

    @property
    def model_frame(self) -> str:
        """The model's frame: per prompt, anchors are the keys where at least `frame_min_rate`
        percent of all heads have a sink; `reference_frame` of those; most common over prompts."""
        rates = self.prompt_rates()
        labels = []
        for b, n in enumerate(self.n_real.tolist()):
            labels.append(reference_frame(self._anchors(rates[b] >= self.frame_min_rate, n), n))
        return _mode(labels)

    def summary(self) -> pd.DataFrame:
        """One row per key position: key, rate (% of heads), n_prompts (prompts with a real
        token there), token (when every such prompt has the same token there, else "")."""
        rate = self.rate.numpy()
        counts = self.mask.sum(dim=0).numpy()
        tokens = []
        for k in range(len(rate)):
            seen = {self.str_tokens[b][k] for b in range(len(self.mask)) if self.mask[b, k]} if self.str_tokens else set()
            tokens.append(seen.pop() if len(seen) == 1 else "")
        return pd.DataFrame({"key": np.arange(len(rate)), "rate": rate, "n_prompts": counts, "token": tokens})

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, head, key position): mean α over the prompts with a real token
        there (`alpha`), the fraction of those prompts with a sink there (`sink_fraction`),
        and the head's reference frame (`frame`)."""
        alpha = torch.nanmean(self.alpha, dim=0)  # [layer, head, k]
        real = self.mask.float().sum(dim=0).clamp_min(1)
        fraction = self.has_sink.float().sum(dim=0) / real
        frames = self.head_frames()
        n_layers, n_heads, n_pos = alpha.shape
        layer, head, key = np.meshgrid(np.arange(n_layers), np.arange(n_heads), np.arange(n_pos), indexing="ij")
        return pd.DataFrame({"layer": layer.ravel(), "head": head.ravel(), "key": key.ravel(),
                             "alpha": alpha.numpy().ravel(), "sink_fraction": fraction.numpy().ravel(),
                             "frame": [frames[l][h] for l, h in zip(layer.ravel(), head.ravel())]})

    def meta(self) -> Meta:
        parameters = {"epsilon": self.epsilon, "is_causal": self.is_causal, "bos_prepended": self.bos_prepended,
                      "sink_dims": self.sink_dims, "tau": self.tau, "frame_min_rate": self.frame_min_rate,
                      **self.parameters}
        return Meta(model=self.model_name, parameters=parameters, seed=self.seed,
                    extra={"str_tokens": self.str_tokens, "model_frame": self.model_frame})

    def tables(self) -> dict[str, pd.DataFrame]:
        """heads (`to_frame`), rates (`summary`) and, when computed, massive."""
        tables = {"heads": self.to_frame(), "rates": self.summary()}
        if self.massive is not None:
            tables["massive"] = self.massive
        return tables

    def tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"alpha": self.alpha, "mask": self.mask}
        if self.phi is not None:
            tensors["phi"] = self.phi
        return tensors


def sink_rates(
    patterns: Float[torch.Tensor, "layer batch head q k"],
    mask: Bool[torch.Tensor, "batch pos"] | None = None,
    is_causal: bool = True,
    epsilon: float = SinksConfig.epsilon,
    model_name: str = "patterns",
) -> SinkResult:
    """`SinkResult` from bare patterns `[layer, batch, head, q, k]` (see `sink_scores`)."""
    epsilon = SinksConfig(epsilon=epsilon).epsilon
    alpha = sink_scores(patterns, mask, is_causal)
    _, mask = check_patterns(patterns, mask)
    return SinkResult(alpha=alpha, mask=mask.cpu(), epsilon=epsilon, is_causal=is_causal, model_name=model_name)


def sink_analysis(
    model: HookedModel,
    prompts: Sequence[str] | Int[torch.Tensor, "batch pos"],
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    epsilon: float = SinksConfig.epsilon,
    abs_threshold: float = SinksConfig.abs_threshold,
    ratio: float = SinksConfig.ratio,
    tau: float = SinksConfig.tau,
    sink_dims: Sequence[int] | None = None,
    frame_min_rate: float = SinksConfig.frame_min_rate,
    batch_size: int = SinksConfig.batch_size,
) -> SinkResult:
    """Sink rates, massive activations and hidden-state sink tokens of `model` on `prompts`
    (texts, each tokenized alone and right-padded as `HookedModel.collect` does, or a token
    tensor with a mask).

    Massive activations are searched in every block's output (`resid_post`). φ is computed
    on `sink_dims`, or when None on the dims of the massive activations found; with neither,
    `phi` is None. Patterns and residuals come from one pass of `model.collect`.
    """
    config = SinksConfig(epsilon=epsilon, abs_threshold=abs_threshold, ratio=ratio, tau=tau,
                         frame_min_rate=frame_min_rate, batch_size=batch_size)
    layers = range(model.cfg.n_layers)
    wanted = [sites.pattern(layer) for layer in layers] + [sites.resid_post(layer) for layer in layers]
    collected = model.collect(prompts, wanted, attention_mask, batch_size)
    alpha = sink_scores(collected.stack("pattern", layers), collected.mask, model.cfg.is_causal)
    hidden = collected.stack("resid_post", layers)
    massive = find_massive(hidden, collected.mask, abs_threshold, ratio, collected.str_tokens)
    dims = sorted(set(massive["dim"].tolist())) if sink_dims is None else [int(d) for d in sink_dims]
    phi = sink_token_scores(hidden, dims) if dims else None
    tok = model.tokenizer
    start = {bos_token_id(tok)} if model.cfg.is_causal else {tok.cls_token_id}
    first = collected.tokens[:, 0].tolist()
    return SinkResult(alpha=alpha, mask=collected.mask, epsilon=config.epsilon, is_causal=model.cfg.is_causal,
                      model_name=model.cfg.name, str_tokens=collected.str_tokens,
                      bos_prepended=all(i in start for i in first), massive=massive, phi=phi, sink_dims=dims,
                      tau=config.tau, frame_min_rate=config.frame_min_rate,
                      parameters={"abs_threshold": config.abs_threshold, "ratio": config.ratio,
                                  "n_prompts": len(first)})


def run(model: HookedModel, config: SinksConfig, task: Task | None = None, *, progress: bool = True) -> SinkResult:
    """The registered analysis "sinks" (`analyses.specs`): on the given texts, or on seeded
    random-token prompts."""
    if config.texts:
        prompts, seed = list(config.texts), None
    else:
        prompts, seed = random_prompts(model, config.n_prompts, config.length, seed=config.seed), config.seed
    result = sink_analysis(model, prompts, epsilon=config.epsilon, abs_threshold=config.abs_threshold,
                           ratio=config.ratio, tau=config.tau, frame_min_rate=config.frame_min_rate,
                           batch_size=config.batch_size)
    result.seed = seed
    if seed is not None:
        result.parameters.update(random_prompts=config.n_prompts, length=config.length)
    return result


# ---------------------------------------------------------------------------- hidden states


def _check_hidden(hidden, mask) -> torch.Tensor:
    """Check `hidden [layer, batch, pos, d_model]` (finite at real tokens) and `mask [batch,
    pos]`; return the mask as bool on the CPU (all True when None)."""
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 4 or 0 in hidden.shape:
        shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise ValueError(f"hidden must be a non-empty tensor [layer, batch, pos, d_model], got {shape}")
    if mask is None:
        mask = torch.ones(hidden.shape[1:3], dtype=torch.bool)
    elif not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(hidden.shape[1:3]):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must have shape [batch, pos] = {tuple(hidden.shape[1:3])} to match hidden, got {shape}")
    mask = mask.bool().cpu()
    bad = (~torch.isfinite(hidden.detach().cpu())) & mask[None, :, :, None]
    if bad.any():
        where = bad.nonzero()[0].tolist()
        raise ValueError(f"hidden holds NaN or infinite values at real tokens (first at layer {where[0]}, prompt "
                         f"{where[1]}, position {where[2]}, dim {where[3]}); no threshold can be judged on them")
    return mask


def find_massive(
    hidden: Float[torch.Tensor, "layer batch pos d_model"],
    mask: Bool[torch.Tensor, "batch pos"] | None = None,
    abs_threshold: float = SinksConfig.abs_threshold,
    ratio: float = SinksConfig.ratio,
    str_tokens: list[list[str]] | None = None,
) -> pd.DataFrame:
    """Massive activations: entries with |x| > `abs_threshold` and |x| > `ratio` × the median
    |x| of the same hidden state `hidden[l, b, p, :]`, at real tokens only.

    Returns one row per entry, largest |value| first: layer, batch, position, token (when
    `str_tokens` is given, else ""), dim, value, ratio (|value| / median |x|).
    """
    mask = _check_hidden(hidden, mask)
    SinksConfig(abs_threshold=abs_threshold, ratio=ratio)  # checks both
    size = hidden.detach().float().cpu().abs()
    median = size.median(dim=-1, keepdim=True).values
    hits = (size > abs_threshold) & (size > ratio * median) & mask[None, :, :, None]
    layer, batch, pos, dim = hits.nonzero(as_tuple=True)
    values = hidden.detach().float().cpu()[layer, batch, pos, dim]
    frame = pd.DataFrame({
        "layer": layer.numpy(), "batch": batch.numpy(), "position": pos.numpy(),
        "token": [str_tokens[b][p] for b, p in zip(batch.tolist(), pos.tolist())] if str_tokens else [""] * len(layer),
        "dim": dim.numpy(), "value": values.numpy(),
        "ratio": (values.abs() / median[layer, batch, pos, 0].clamp_min(1e-30)).numpy()})
    return frame.sort_values("value", key=np.abs, ascending=False, kind="stable").reset_index(drop=True)


def sink_token_scores(
    hidden: Float[torch.Tensor, "layer batch pos d_model"],
    sink_dims: Sequence[int],
) -> Float[torch.Tensor, "layer batch pos"]:
    """φ(x) = max over `sink_dims` d of |x_d / RMS(x)|, RMS over d_model (Kang et al., 2025).
    A token is a sink at a layer where φ > τ (20 in the paper). Padded positions are scored
    too; mask them out. Note φ <= sqrt(d_model) always (one entry cannot exceed the RMS by
    more), so τ = 20 is unreachable for d_model <= 400 (minilm: at most 19.6); lower τ there."""
    _check_hidden(hidden, None)
    dims = [int(d) for d in sink_dims]
    d_model = hidden.shape[-1]
    if not dims or min(dims) < 0 or max(dims) >= d_model:
        raise ValueError(f"sink_dims must be a non-empty list of dims in [0, {d_model - 1}], got {list(sink_dims)}")
    x = hidden.detach().float().cpu()
    rms = x.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-30)
    return (x[..., dims] / rms).abs().amax(dim=-1)


# ---------------------------------------------------------------------------- redistribution


def redistribute(
    pattern: Float[torch.Tensor, "batch head q k"],
    sink: Bool[torch.Tensor, "batch k"],
    p: float,
) -> Float[torch.Tensor, "batch head q k"]:
    """Scale attention on `sink` keys by `p` and give the freed mass (1 - p) · Σ_sink A to
    the other keys in proportion to their attention, so rows still sum to 1 and keys with
    zero attention (causally hidden, padding) stay zero. A row with no attention outside
    the sinks (e.g. the first query of a causal model) is left unchanged."""
    on_sink = pattern * sink[:, None, None, :]
    rest = pattern - on_sink
    freed = (1 - p) * on_sink.sum(dim=-1, keepdim=True)
    other = rest.sum(dim=-1, keepdim=True)
    movable = other > 0
    scale = torch.where(movable, 1 + freed / other.clamp_min(1e-30), torch.ones_like(other))
    return torch.where(movable, p * on_sink + rest * scale, pattern)


def redistribution(
    model: HookedModel,
    heads: Sequence[tuple[int, int]],
    sink_positions: Sequence[int] | Bool[torch.Tensor, "batch k"] | Bool[torch.Tensor, "k"],
    p: float = 0.6,
) -> list[Splice]:
    """Interventions applying `redistribute` to the patterns of the chosen `heads`
    [(layer, head), ...] (one `Splice` on `pattern(layer, head)` each); other heads are
    untouched. `sink_positions` are key indices shared by all prompts, or a bool mask `[k]` /
    `[batch, k]` of sink keys. Compose with other interventions:
    `model.run(tokens, interventions=redistribution(...) + more)`.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"p must be a number in [0, 1], got {p!r}")
    heads = check_heads(model.cfg, heads, allow_empty=False)
    if not isinstance(sink_positions, torch.Tensor) and len(sink_positions) == 0:
        raise ValueError("sink_positions must name at least one key position, got none")
    edit = partial(_redistribute_one_head, sink_positions=sink_positions, p=p)
    return [Splice(sites.pattern(layer, head), fn=edit) for layer, head in heads]


def _redistribute_one_head(pattern: Float[torch.Tensor, "batch q k"], sink_positions, p: float
                           ) -> Float[torch.Tensor, "batch q k"]:
    sink = _sink_mask(sink_positions, pattern.shape[0], pattern.shape[-1]).to(pattern.device)
    return redistribute(pattern[:, None], sink, p)[:, 0]


def _sink_mask(positions, batch: int, n_keys: int) -> Bool[torch.Tensor, "batch k"]:
    if isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        if positions.shape not in ((n_keys,), (batch, n_keys)):
            raise ValueError(f"a sink mask must have shape [k] = ({n_keys},) or [batch, k] = {(batch, n_keys)}, "
                             f"got {tuple(positions.shape)}")
        return positions.expand(batch, n_keys)
    index = [int(k) for k in positions]
    if min(index) < -n_keys or max(index) >= n_keys:
        raise ValueError(f"sink_positions must lie in [0, {n_keys - 1}] for {n_keys} positions, got {index}")
    sink = torch.zeros(batch, n_keys, dtype=torch.bool)
    sink[:, index] = True
    return sink
