"""Head detectors: previous-token, induction and duplicate-token scores for every head.

Each score is the mean attention a head pays, on generated probe sequences, from a set of
query positions to the one key position that the head's job names (the scores of
TransformerLens's head detector and of Olsson et al., 2022, "In-context learning and induction
heads"). A probe is a random span of `span` distinct plain tokens written twice:

    causal model:  <bos> s1 s2 ... sn s1 s2 ... sn
    encoder:       [CLS] s1 s2 ... sn s1 s2 ... sn [SEP]

- previous_token: every span token after the first attends to the token right before it.
- duplicate_token: each token of the repeat attends to its own earlier occurrence.
- induction: each token of the repeat attends to the token right after its earlier
  occurrence (the token it should predict next).

    scores = detect_heads(load_model("zoo/induction-2l"))
    scores.top("induction")            # DataFrame: layer, head, score (best first)
    scores.figure()                    # heatmaps layers x heads, one per kind
    scores.save("runs")                # a result bundle, analysis="heads"

Options and their defaults are `analyses.specs.HeadsConfig`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from interp.models import HookedModel, Intervention, sites
from interp.models.tokens import bos_token_id
from interp.patching import Task
from interp.results import Meta, Result
from interp.results.registry import Analysis

from .specs import HEADS, KINDS, HeadsConfig

# TransformerLens's head detector calls them "previous_token_head", ...; both spellings work.
_ALIASES = {f"{kind}_head": kind for kind in KINDS}


@dataclass(frozen=True)
class Probe:
    """Probe sequences and where their span lies.

    `tokens [batch, pos]`; the first occurrence of span token t is at `start + t`, its repeat
    at `start + span + t` (t = 0 .. span-1).
    """

    tokens: Int[torch.Tensor, "batch pos"]
    start: int
    span: int


def probe_positions(kind: str, start: int, span: int) -> tuple[Int[torch.Tensor, "n"], Int[torch.Tensor, "n"]]:
    """The (query, key) position pairs that score `kind` on a probe whose span starts at
    `start`: returns `queries [n]`, `keys [n]`, with query `queries[i]` scored on key `keys[i]`."""
    kind = _kind(kind)
    _check_int("span", span, 2)
    _check_int("start", start, 0)
    repeat = torch.arange(start + span, start + 2 * span)
    if kind == "previous_token":
        queries = torch.arange(start + 1, start + 2 * span)
        return queries, queries - 1
    if kind == "duplicate_token":
        return repeat, repeat - span
    return repeat, repeat - span + 1  # induction


def pattern_scores(
    pattern: Float[torch.Tensor, "batch head q k"],
    queries: Int[torch.Tensor, "n"],
    keys: Int[torch.Tensor, "n"],
) -> Float[torch.Tensor, "head"]:
    """Mean over the batch and the pairs of `pattern[b, h, queries[i], keys[i]]`: how much of
    each head's attention goes, on average, from each query to its designated key."""
    if pattern.ndim != 4 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"pattern must have shape [batch, head, q, k] with q == k, got {tuple(pattern.shape)}")
    if queries.ndim != 1 or queries.shape != keys.shape or len(queries) == 0:
        raise ValueError(f"queries and keys must be equal-length non-empty 1-d tensors, "
                         f"got shapes {tuple(queries.shape)} and {tuple(keys.shape)}")
    n_pos = pattern.shape[-1]
    if min(queries.min(), keys.min()) < 0 or max(queries.max(), keys.max()) >= n_pos:
        raise ValueError(f"positions must lie in [0, {n_pos - 1}] for a pattern over {n_pos} positions")
    return pattern[:, :, queries, keys].mean(dim=(0, 2))


def make_probe(model: HookedModel, n_sequences: int, span: int, seed: int = 0) -> Probe:
    """`n_sequences` probes for `model`: each a span of `span` distinct random plain tokens
    (never a special token of the tokenizer), written twice, with BOS first for a causal
    model and [CLS] ... [SEP] around it for an encoder. Same seed, same probes."""
    _check_int("n_sequences", n_sequences, 1)
    _check_int("span", span, 2)
    prefix, suffix = _specials_around(model)
    plain = _plain_token_ids(model)
    if span > len(plain):
        raise ValueError(f"span must be at most the {len(plain)} plain tokens of {model.cfg.name}'s "
                         f"vocabulary (a span holds distinct tokens), got {span}")
    length = len(prefix) + 2 * span + len(suffix)
    if length > model.cfg.n_ctx:
        raise ValueError(f"span {span} makes probes of {length} positions; {model.cfg.name} takes at most "
                         f"{model.cfg.n_ctx}, so span must be at most {(model.cfg.n_ctx - len(prefix) - len(suffix)) // 2}")
    gen = torch.Generator().manual_seed(seed)
    spans = torch.stack([plain[torch.randperm(len(plain), generator=gen)[:span]] for _ in range(n_sequences)])
    around = [torch.tensor(ids, dtype=torch.long).repeat(n_sequences, 1) for ids in (prefix, suffix)]
    return Probe(tokens=torch.cat([around[0], spans, spans, around[1]], dim=1), start=len(prefix), span=span)


def random_prompts(model: HookedModel, n_sequences: int, length: int | None = None,
                   seed: int = 0) -> Int[torch.Tensor, "batch pos"]:
    """`n_sequences` prompts of `length` random plain tokens each (drawn with replacement),
    wrapped like `make_probe`'s (BOS first for a causal model, [CLS] ... [SEP] for an encoder):
    text-free probes for analyses such as attention sinks. `length=None`: 63 tokens (64
    positions with BOS, the sink-rate reference setting), or as many as the context leaves.
    Same seed, same prompts."""
    _check_int("n_sequences", n_sequences, 1)
    prefix, suffix = _specials_around(model)
    if length is None:
        length = min(63, model.cfg.n_ctx - len(prefix) - len(suffix))
    _check_int("length", length, 1)
    if len(prefix) + length + len(suffix) > model.cfg.n_ctx:
        raise ValueError(f"length must be at most {model.cfg.n_ctx - len(prefix) - len(suffix)} for "
                         f"{model.cfg.name}, got {length}")
    plain = _plain_token_ids(model)
    gen = torch.Generator().manual_seed(seed)
    body = plain[torch.randint(len(plain), (n_sequences, length), generator=gen)]
    around = [torch.tensor(ids, dtype=torch.long).repeat(n_sequences, 1) for ids in (prefix, suffix)]
    return torch.cat([around[0], body, around[1]], dim=1)


def detect_heads(
    model: HookedModel,
    n_sequences: int = HeadsConfig.n_sequences,
    span: int = HeadsConfig.span,
    seed: int = HeadsConfig.seed,
    kinds: Sequence[str] = HeadsConfig.kinds,
    batch_size: int = HeadsConfig.batch_size,
    interventions: Sequence[Intervention] = (),
    progress: bool = True,
) -> HeadScores:
    """Score every head of `model` as a previous-token, induction and duplicate-token head.

    Args:
        n_sequences, span, seed: the probes (see `make_probe`); span >= 2.
        kinds: which scores, any of "previous_token", "induction", "duplicate_token" (or
            TransformerLens's names "previous_token_head", ...).
        batch_size: probes per forward pass.
        interventions: interventions active while scoring (`interp.models.interventions`),
            e.g. `interp.models.ablation.ablation(model, [(0, 3)])` to see which scores collapse.
    Returns:
        `HeadScores` holding one `[layer, head]` tensor per kind.
    """
    config = HeadsConfig(n_sequences=n_sequences, span=span, seed=seed, kinds=_kinds(kinds), batch_size=batch_size)
    kinds = config.kinds
    probe = make_probe(model, n_sequences, span, seed)
    pairs = {kind: probe_positions(kind, probe.start, probe.span) for kind in kinds}
    n_layers = model.cfg.n_layers
    totals = {kind: torch.zeros(n_layers, model.cfg.n_heads) for kind in kinds}
    capture = [sites.pattern(layer) for layer in range(n_layers)]
    batches = torch.split(probe.tokens, batch_size)
    for tokens in tqdm(batches, desc="heads", disable=not progress):
        with torch.no_grad():
            _, cache = model.run(tokens, interventions=interventions, capture=capture)
        for kind, (queries, keys) in pairs.items():
            for layer in range(n_layers):
                totals[kind][layer] += pattern_scores(cache.pattern(layer).float().cpu(), queries, keys) * len(tokens)
    scores = {kind: total / n_sequences for kind, total in totals.items()}
    parameters = {**config.as_parameters(), "is_causal": model.cfg.is_causal,
                  "interventions": [describe(i) for i in interventions]}
    del parameters["seed"]
    return HeadScores(scores=scores, model_name=model.cfg.name, seed=seed, parameters=parameters)


def run(model: HookedModel, config: HeadsConfig, task: Task | None = None, *, progress: bool = True) -> HeadScores:
    """The registered analysis "heads" (`analyses.specs`)."""
    return detect_heads(model, **config.as_kwargs(), progress=progress)


@dataclass
class HeadScores(Result):
    """Per-head detector scores: `scores[kind]` is a `[layer, head]` tensor of mean attention
    (between 0 and 1) to the key each kind names."""

    spec: ClassVar[Analysis] = HEADS
    scores: dict[str, Float[torch.Tensor, "layer head"]]
    model_name: str
    seed: int
    parameters: dict = field(default_factory=dict)

    def __getitem__(self, kind: str) -> Float[torch.Tensor, "layer head"]:
        kind = _kind(kind)
        if kind not in self.scores:
            raise KeyError(f"no {kind!r} scores here; scored kinds: {list(self.scores)}")
        return self.scores[kind]

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per (layer, head, kind) with its score."""
        rows = [(layer, head, kind, float(score[layer, head]))
                for kind, score in self.scores.items()
                for layer in range(score.shape[0]) for head in range(score.shape[1])]
        return pd.DataFrame(rows, columns=["layer", "head", "kind", "score"])

    def meta(self) -> Meta:
        return Meta(model=self.model_name, parameters=self.parameters, seed=self.seed)

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"scores": self.to_frame()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.scores)

    def top(self, kind: str, k: int = 1) -> pd.DataFrame:
        """The `k` heads with the highest `kind` score: columns layer, head, score, best first."""
        score = self[kind]
        _check_int("k", k, 1)
        values, flat = score.flatten().topk(min(k, score.numel()))
        n_heads = score.shape[1]
        return pd.DataFrame({"layer": (flat // n_heads).tolist(), "head": (flat % n_heads).tolist(),
                             "score": values.tolist()})

    def figure(self, name: str | None = None, kind: str | None = None) -> go.Figure:
        """Heatmaps of layers x heads (`analyses.figures.draw_detector_scores`), cells labelled
        "L{l}H{h}"; all kinds side by side, or only `kind`."""
        return super().figure(name, kind=None if kind is None else _kind(kind))


def describe(intervention: Intervention) -> str:
    """An intervention as a short label for a bundle's parameters, e.g. "Zero z(0, 3)"."""
    positions = "" if intervention.positions is None else f" at {intervention.positions}"
    return f"{type(intervention).__name__} {intervention.site}{positions}"


def _kind(kind: str) -> str:
    name = _ALIASES.get(kind, kind) if isinstance(kind, str) else kind
    if name not in KINDS:
        raise ValueError(f"unknown head kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return name


def _kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = [kinds]
    names = tuple(dict.fromkeys(_kind(kind) for kind in kinds))
    if not names:
        raise ValueError(f"kinds must name at least one of {', '.join(KINDS)}, got none")
    return names


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _specials_around(model: HookedModel) -> tuple[list[int], list[int]]:
    """Token ids before and after a probe's spans, by the model layer's one rule
    (`interp.models.tokens`): BOS (else EOS) for a causal model, the tokenizer's [CLS] and
    [SEP] for an encoder."""
    tok = model.tokenizer
    if model.cfg.is_causal:
        first = bos_token_id(tok)
        return ([first] if first is not None else []), []
    return ([tok.cls_token_id] if tok.cls_token_id is not None else [],
            [tok.sep_token_id] if tok.sep_token_id is not None else [])


def _plain_token_ids(model: HookedModel) -> Int[torch.Tensor, "n"]:
    """Every token id of the vocabulary that is not a special token."""
    vocab = min(model.cfg.d_vocab, len(model.tokenizer))
    plain = torch.ones(vocab, dtype=torch.bool)
    special = [i for i in model.tokenizer.all_special_ids if i is not None and i < vocab]
    plain[special] = False
    return plain.nonzero().flatten()
