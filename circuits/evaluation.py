"""Evaluating circuits as MIB does (Mueller et al. 2025; docs/methods.md §7), independent of how the
model runs.

The patching engine provides `run_masks(masks) -> metric`: for each bool mask
`[n_senders, n_receivers]` (True = the edge is kept, in `Graph`'s sender/receiver order), the
task metric on every prompt of the model with every edge outside the mask ablated
(corrupted patching by default). The full model N is the mask `graph.exists`, the empty
circuit ∅ the all-False mask. Then

    f(C) = (m(C) - m(∅)) / (m(N) - m(∅)),   m = the metric's mean over prompts (as in MIB).

`faithfulness_curve` measures f at MIB's edge fractions: at fraction k the circuit is the
`int(k * n_edges)` best edges (`Graph.top_n`, or `Graph.greedy`), pruned to the edges on an
input -> logits path before it is measured — what MIB's `evaluate_area_under_curve` does
(`apply_topn(..., prune=True)`, then `evaluate_graph`, which prunes again). A selection that
keeps no connected edge is measured as the empty circuit (f = 0), as in MIB; the curve records
how many edges were kept. MIB ranks edges by signed score for CPR and by |score| for CMD.

    CPR = Σ (k_{i+1} - k_i) (f_i + f_{i+1}) / 2             (higher is better)
    CMD = Σ (k_{i+1} - k_i) (|1 - f_i| + |1 - f_{i+1}|) / 2   (0 is best)

over the fractions on a linear axis from 0.001 to 1 (MIB's default `log_scale=False`).

    evaluation = evaluate_circuit(graph, run_masks, task="ioi", method="eap-ig")
    evaluation.cpr, evaluation.cmd, evaluation.to_frame(), evaluation.figure()
    evaluation.save("runs/")        # one bundle (analysis "circuit"): the graph and its evaluation
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float

from circuits.graph import Graph
from circuits.specs import CIRCUIT
from interp.results import Meta, Result
from interp.results.registry import Analysis

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SELECTIONS = ("top_n", "greedy")
RunMasks = Callable[[Bool[torch.Tensor, "n n_senders n_receivers"]], Float[torch.Tensor, "n batch"]]
# m(N) and m(∅) closer than this, relative to their size, leave faithfulness undefined.
GAP_RTOL = 1e-6


# ---------------------------------------------------------------- running masks


def run_masks_checked(run_masks: RunMasks, masks: Bool[torch.Tensor, "n n_senders n_receivers"],
                      graph: Graph) -> Float[torch.Tensor, "n batch"]:
    """`run_masks(masks)` with each distinct mask run once, its output checked: a float
    tensor `[n_distinct, batch]`, finite, returned as float64 on CPU for every mask."""
    if not callable(run_masks):
        raise TypeError(f"run_masks must be a callable masks -> metric, got {type(run_masks).__name__}")
    flat = masks.reshape(len(masks), -1)
    distinct, inverse = torch.unique(flat, dim=0, return_inverse=True)
    query = distinct.view(-1, graph.n_senders, graph.n_receivers)
    out = run_masks(query)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"run_masks must return a tensor [n_masks, batch], got {type(out).__name__}")
    if out.ndim != 2 or out.shape[0] != len(query) or out.shape[1] == 0:
        raise ValueError(f"run_masks was given {len(query)} masks and must return a metric of shape "
                         f"[{len(query)}, batch]; it returned shape {list(out.shape)}")
    if not out.dtype.is_floating_point:
        raise TypeError(f"run_masks must return a floating-point metric, got {out.dtype}")
    out = out.detach().to("cpu", torch.float64)
    if not torch.isfinite(out).all():
        raise ValueError(f"run_masks returned {int((~torch.isfinite(out)).sum())} non-finite metric values")
    return out[inverse]


def _empty_and_full(graph: Graph) -> torch.Tensor:
    """`[2, n_senders, n_receivers]`: the empty circuit, then the full model."""
    return torch.stack([torch.zeros_like(graph.in_graph), graph.exists])


def check_gap(full: torch.Tensor, empty: torch.Tensor) -> None:
    """Refuse metrics `[batch]` of the full model and the empty circuit whose means agree
    (to GAP_RTOL): faithfulness divides by their difference."""
    top, bottom = full.mean(), empty.mean()
    if abs(top - bottom) <= GAP_RTOL * max(abs(top), abs(bottom)):
        raise ValueError(f"the full model and the empty circuit give the same mean metric ({top.item():.6g} vs "
                         f"{bottom.item():.6g}), so faithfulness is undefined: the metric does not depend on the "
                         "edges (are the corrupted prompts different from the clean ones?)")


def _normalised(metric: torch.Tensor, full: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """(metric - mean m(∅)) / (mean m(N) - mean m(∅)), elementwise; on the mean metric of a
    circuit it is MIB's faithfulness, on each prompt's a per-prompt value whose mean is that
    faithfulness (up to rounding)."""
    check_gap(full, empty)
    return (metric - empty.mean()) / (full.mean() - empty.mean())


# ---------------------------------------------------------------- one circuit


@dataclass
class NormalizedMetric:
    """A masked model's metric on each prompt, placed between the empty circuit (0) and the
    full model (1). `what` is "circuit" (faithfulness: only the circuit kept) or
    "complement" (completeness: only the circuit ablated)."""

    what: str
    n_edges: int
    metric: torch.Tensor  # [batch]
    full_metric: torch.Tensor  # [batch]
    empty_metric: torch.Tensor  # [batch]

    @property
    def per_prompt(self) -> torch.Tensor:
        """`[batch]`; its mean is `value`."""
        return _normalised(self.metric, self.full_metric, self.empty_metric)

    @property
    def value(self) -> float:
        """(mean m - mean m(∅)) / (mean m(N) - mean m(∅))."""
        return float(_normalised(self.metric.mean(), self.full_metric, self.empty_metric))


def _connected(graph: Graph) -> Graph:
    if not isinstance(graph, Graph):
        raise TypeError(f"expected a circuits.graph.Graph, got {type(graph).__name__}")
    if graph.n_circuit_edges == 0:
        raise ValueError("the circuit is empty (no edge in the graph); select one first (top_n, greedy, threshold)")
    return graph.prune()


def faithfulness(graph: Graph, run_masks: RunMasks) -> NormalizedMetric:
    """Faithfulness f(C) of the graph's circuit (pruned first; a circuit with no path from
    input to logits is refused, naming what is disconnected)."""
    circuit = _connected(graph)
    masks = torch.cat([circuit.in_graph[None], _empty_and_full(graph)])
    metric = run_masks_checked(run_masks, masks, graph)
    check_gap(metric[2], metric[1])
    return NormalizedMetric("circuit", circuit.n_circuit_edges, metric[0], metric[2], metric[1])


def completeness(graph: Graph, run_masks: RunMasks) -> NormalizedMetric:
    """The graph's circuit (pruned) knocked out of the full model: m(N \\ C) normalised like
    faithfulness, so 0 means removing the circuit removes the behaviour (complete) and 1
    that the rest of the model does it all."""
    circuit = _connected(graph)
    masks = torch.cat([(graph.exists & ~circuit.in_graph)[None], _empty_and_full(graph)])
    metric = run_masks_checked(run_masks, masks, graph)
    check_gap(metric[2], metric[1])
    return NormalizedMetric("complement", circuit.n_circuit_edges, metric[0], metric[2], metric[1])


# ---------------------------------------------------------------- the faithfulness curve


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """Edge fractions: a non-empty, strictly increasing sequence of numbers in (0, 1]."""
    if isinstance(fractions, (str, bytes)) or not hasattr(fractions, "__len__") or len(fractions) == 0:
        raise ValueError(f"fractions must be a non-empty sequence of numbers in (0, 1], got {fractions!r}")
    out = []
    for value in fractions:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"fractions must be finite numbers in (0, 1], got {value!r}")
        if not 0 < value <= 1:
            raise ValueError(f"each fraction of edges must lie in (0, 1], got {value}")
        out.append(float(value))
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"fractions must be strictly increasing (sorted, no repeats), got {out}")
    return tuple(out)


@dataclass
class FaithfulnessCurve:
    """Faithfulness of the top edges at each fraction of all `n_edges_total` edges.

    `n_edges[i] = int(fractions[i] * n_edges_total)` edges were selected by `selection`
    ranked by |score| (`absolute`) or signed score; `n_edges_kept[i]` remained after pruning
    and were measured. `circuit_metric` is `[n_fractions, batch]`, `full_metric` and
    `empty_metric` `[batch]`.
    """

    fractions: tuple[float, ...]
    n_edges_total: int
    n_edges: list[int]
    n_edges_kept: list[int]
    absolute: bool
    selection: str
    circuit_metric: torch.Tensor
    full_metric: torch.Tensor
    empty_metric: torch.Tensor

    @property
    def per_prompt(self) -> torch.Tensor:
        """`[n_fractions, batch]`: each prompt's metric placed between the *mean* m(∅) and m(N);
        the mean over prompts is `faithfulness`."""
        return _normalised(self.circuit_metric, self.full_metric, self.empty_metric)

    @property
    def faithfulness(self) -> torch.Tensor:
        """`[n_fractions]` MIB's f at each fraction, from the mean metrics."""
        return _normalised(self.circuit_metric.mean(1), self.full_metric, self.empty_metric)

    def cpr(self, log_scale: bool = False) -> float:
        return cpr(self, log_scale)

    def cmd(self, log_scale: bool = False) -> float:
        return cmd(self, log_scale)

    def to_frame(self) -> pd.DataFrame:
        """One row per fraction: `fraction n_edges n_edges_kept faithfulness metric`."""
        return pd.DataFrame({"fraction": list(self.fractions), "n_edges": self.n_edges,
                             "n_edges_kept": self.n_edges_kept, "faithfulness": self.faithfulness.numpy(),
                             "metric": self.circuit_metric.mean(1).numpy()})


def _curve_masks(graph: Graph, fractions: tuple[float, ...], absolute: bool,
                 selection: str) -> tuple[list[int], list[int], torch.Tensor]:
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if not isinstance(absolute, bool):
        raise TypeError(f"absolute must be True (rank by |score|, MIB's CMD) or False (signed, MIB's CPR); "
                        f"got {absolute!r}")
    select = graph.top_n if selection == "top_n" else graph.greedy
    requested, kept, masks = [], [], []
    for fraction in fractions:
        n = int(fraction * graph.n_edges)  # MIB's count: int(pct * n_edges)
        circuit = select(n, absolute=absolute, empty_ok=True)
        requested.append(n)
        kept.append(circuit.n_circuit_edges)
        masks.append(circuit.in_graph)
    return requested, kept, torch.stack(masks)


def faithfulness_curve(graph: Graph, run_masks: RunMasks, fractions: Sequence[float] = MIB_FRACTIONS, *,
                       absolute: bool, selection: Literal["top_n", "greedy"] = "top_n") -> FaithfulnessCurve:
    """f at each fraction of edges (see the module docstring), from one call of `run_masks`
    on the distinct circuits plus the full model and the empty circuit. `absolute` must be
    given: MIB ranks by signed score (False) for CPR and by |score| (True) for CMD."""
    if not isinstance(graph, Graph):
        raise TypeError(f"expected a circuits.graph.Graph, got {type(graph).__name__}")
    fractions = check_fractions(fractions)
    requested, kept, masks = _curve_masks(graph, fractions, absolute, selection)
    metric = run_masks_checked(run_masks, torch.cat([masks, _empty_and_full(graph)]), graph)
    check_gap(metric[-1], metric[-2])
    return FaithfulnessCurve(fractions, graph.n_edges, requested, kept, absolute, selection,
                             metric[:-2], metric[-1], metric[-2])


def _area(x: Sequence[float], y: torch.Tensor, log_scale: bool) -> torch.Tensor:
    """Trapezoids of y `[..., n]` over x `[n]` (log x with `log_scale`), as MIB sums them."""
    x = torch.tensor([math.log(v) for v in x] if log_scale else list(x), dtype=torch.float64)
    return ((x[1:] - x[:-1]) * (y[..., 1:] + y[..., :-1]) / 2).sum(-1)


def cpr(curve: FaithfulnessCurve, log_scale: bool = False) -> float:
    """MIB's CPR: area under f over the edge fractions (trapezoids, linear axis unless
    `log_scale`). Higher is better; MIB computes it on the signed ranking."""
    return float(_area(curve.fractions, curve.faithfulness, log_scale))


def cmd(curve: FaithfulnessCurve, log_scale: bool = False) -> float:
    """MIB's CMD: area under |1 - f| over the edge fractions. 0 is best; MIB computes it on
    the |score| ranking."""
    return float(_area(curve.fractions, (1 - curve.faithfulness).abs(), log_scale))


# ---------------------------------------------------------------- bootstrap


@dataclass
class Bootstrap:
    """Percentile intervals over prompts resampled with replacement: `faithfulness_low/high`
    `[n_fractions]` and the CPR / CMD intervals, at `confidence`; the resampled values are
    kept (`faithfulness_samples` `[n_resamples, n_fractions]`, `cpr_samples`, `cmd_samples`)."""

    confidence: float
    n_resamples: int
    seed: int
    faithfulness_low: torch.Tensor
    faithfulness_high: torch.Tensor
    cpr_low: float
    cpr_high: float
    cmd_low: float
    cmd_high: float
    faithfulness_samples: torch.Tensor
    cpr_samples: torch.Tensor
    cmd_samples: torch.Tensor


def bootstrap(curve: FaithfulnessCurve, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
              log_scale: bool = False) -> Bootstrap:
    """Resample the prompts with replacement `n_resamples` times (seeded; the same seed draws
    the same prompts for any curve of the same batch), recompute f at every fraction — m(N),
    m(∅) and m(C) all from the same resampled prompts — and CPR and CMD, and return
    percentile intervals at `confidence`. Refuses a resample where m(N) = m(∅)."""
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 2:
        raise ValueError(f"n_resamples must be an integer >= 2, got {n_resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, float) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a float in (0, 1), such as 0.95; got {confidence!r}")
    batch = curve.full_metric.shape[0]
    index = torch.randint(batch, (n_resamples, batch), generator=torch.Generator().manual_seed(seed))
    top, bottom = curve.full_metric[index].mean(1), curve.empty_metric[index].mean(1)  # [R]
    gap = top - bottom
    degenerate = gap.abs() <= GAP_RTOL * torch.maximum(top.abs(), bottom.abs())
    if degenerate.any():
        raise ValueError(f"{int(degenerate.sum())} of {n_resamples} resamples give m(N) = m(∅), so faithfulness is "
                         f"undefined there; use more prompts (batch is {batch})")
    circuit = curve.circuit_metric[:, index].mean(-1).t()  # [R, n_fractions]
    samples = (circuit - bottom[:, None]) / gap[:, None]
    cpr_samples = _area(curve.fractions, samples, log_scale)
    cmd_samples = _area(curve.fractions, (1 - samples).abs(), log_scale)
    q = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
    f_low, f_high = torch.quantile(samples, q, dim=0)
    cpr_low, cpr_high = torch.quantile(cpr_samples, q).tolist()
    cmd_low, cmd_high = torch.quantile(cmd_samples, q).tolist()
    return Bootstrap(confidence, n_resamples, seed, f_low, f_high, cpr_low, cpr_high, cmd_low, cmd_high,
                     samples, cpr_samples, cmd_samples)


# ---------------------------------------------------------------- AUROC


def auroc(graph: Graph, reference: Graph, level: Literal["edge", "node"] = "edge", absolute: bool = True) -> float:
    """ROC AUC of `graph`'s scores (|score| with `absolute`) as a classifier of `reference`'s
    circuit: over every edge (`level="edge"`: reference.in_graph) or every head and MLP
    (`level="node"`: node scores against reference.node_in_graph; input and logits, in every
    circuit, are left out). Ties count half (the Mann-Whitney statistic). Both graphs must
    have one shape; every item needs a score."""
    from scipy.stats import rankdata

    for name, g in (("graph", graph), ("reference", reference)):
        if not isinstance(g, Graph):
            raise TypeError(f"{name} must be a circuits.graph.Graph, got {type(g).__name__}")
    if graph.cfg.shape() | {"d_model": None} != reference.cfg.shape() | {"d_model": None}:
        raise ValueError(f"graph and reference have different shapes: {graph.cfg.shape()} vs {reference.cfg.shape()}")
    if not isinstance(absolute, bool):
        raise TypeError(f"absolute must be True or False, got {absolute!r}")
    if level == "edge":
        exists = graph.exists
        scores, truth, what = graph.scores[exists], reference.in_graph[exists], "edges"
    elif level == "node":
        scores, truth, what = graph.node_scores[1:-1], reference.node_in_graph[1:-1], "heads and MLPs"
    else:
        raise ValueError(f"level must be 'edge' or 'node', got {level!r}")
    if scores.isnan().any():
        hint = "with_scores(node_scores=...)" if level == "node" else "with_scores(...)"
        raise ValueError(f"{int(scores.isnan().sum())} of {len(scores)} {what} have no score (NaN); AUROC needs a "
                         f"score on each ({hint})")
    n_pos = int(truth.sum())
    n_neg = len(truth) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"the reference circuit has {n_pos} of {len(truth)} {what}; AUROC needs both members and "
                         "non-members")
    ranks = torch.from_numpy(rankdata((scores.abs() if absolute else scores).numpy()))
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ---------------------------------------------------------------- the whole evaluation


@dataclass
class CircuitEvaluation(Result):
    """MIB's evaluation of a scored graph: the faithfulness curve ranked by signed score
    (`signed`, for CPR) and by |score| (`absolute`, for CMD), each with its bootstrap
    intervals over prompts (None when `n_resamples=0`). A `Result` of the analysis "circuit":
    its bundle holds the graph too (`Graph.from_bundle` reads it), and its figures are the
    faithfulness curve (`figure()`) and the circuit (`figure("circuit")`)."""

    spec: ClassVar[Analysis] = CIRCUIT

    graph: Graph
    signed: FaithfulnessCurve
    absolute: FaithfulnessCurve
    signed_bootstrap: Bootstrap | None
    absolute_bootstrap: Bootstrap | None
    task: str | None = None
    method: str | None = None

    @property
    def cpr(self) -> float:
        """MIB's CPR: on the signed ranking."""
        return cpr(self.signed)

    @property
    def cmd(self) -> float:
        """MIB's CMD: on the |score| ranking."""
        return cmd(self.absolute)

    def _curves(self):
        return (("signed", self.signed, self.signed_bootstrap), ("absolute", self.absolute, self.absolute_bootstrap))

    def to_frame(self) -> pd.DataFrame:
        """One row per ranking and fraction: `ranking fraction n_edges n_edges_kept
        faithfulness metric ci_low ci_high` (CI columns NaN without a bootstrap)."""
        frames = []
        for ranking, curve, boot in self._curves():
            frame = curve.to_frame()
            frame.insert(0, "ranking", ranking)
            frame["ci_low"] = boot.faithfulness_low.numpy() if boot else math.nan
            frame["ci_high"] = boot.faithfulness_high.numpy() if boot else math.nan
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def summary_frame(self) -> pd.DataFrame:
        """`score value ci_low ci_high ranking` for CPR (signed) and CMD (absolute)."""
        b_s, b_a = self.signed_bootstrap, self.absolute_bootstrap
        return pd.DataFrame({"score": ["cpr", "cmd"], "value": [self.cpr, self.cmd],
                             "ci_low": [b_s.cpr_low if b_s else math.nan, b_a.cmd_low if b_a else math.nan],
                             "ci_high": [b_s.cpr_high if b_s else math.nan, b_a.cmd_high if b_a else math.nan],
                             "ranking": ["signed", "absolute"]})

    def per_prompt_frame(self) -> pd.DataFrame:
        """One row per ranking, fraction and prompt: `ranking fraction prompt metric
        faithfulness` (faithfulness per prompt, normalised by the mean m(N), m(∅))."""
        rows = []
        for ranking, curve, _ in self._curves():
            per_prompt = curve.per_prompt
            for i, fraction in enumerate(curve.fractions):
                rows.append(pd.DataFrame({"ranking": ranking, "fraction": fraction,
                                          "prompt": range(per_prompt.shape[1]),
                                          "metric": curve.circuit_metric[i].numpy(),
                                          "faithfulness": per_prompt[i].numpy()}))
        return pd.concat(rows, ignore_index=True)

    def meta(self) -> Meta:
        graph = self.graph.meta()
        boot = self.signed_bootstrap or self.absolute_bootstrap
        parameters = {**graph.parameters, "method": self.method or graph.parameters.get("method"),
                      "fractions": list(self.signed.fractions), "selection": self.signed.selection,
                      "n_resamples": boot.n_resamples if boot else 0, "confidence": boot.confidence if boot else None}
        return Meta(model=graph.model, task=self.task or graph.task, parameters=parameters,
                    seed=boot.seed if boot else None, extra={"cpr": self.cpr, "cmd": self.cmd})

    def tables(self) -> dict[str, pd.DataFrame]:
        """The graph's `edges` and `nodes`, then `faithfulness` (`to_frame`), `summary` and
        `per_prompt`."""
        return {**self.graph.tables(), "faithfulness": self.to_frame(), "summary": self.summary_frame(),
                "per_prompt": self.per_prompt_frame()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self.graph.tensors(), "signed_metric": self.signed.circuit_metric,
                "absolute_metric": self.absolute.circuit_metric, "full_metric": self.signed.full_metric,
                "empty_metric": self.signed.empty_metric}


def evaluate_circuit(graph: Graph, run_masks: RunMasks, fractions: Sequence[float] = MIB_FRACTIONS, *,
                     selection: Literal["top_n", "greedy"] = "top_n", n_resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95, task: str | None = None,
                     method: str | None = None) -> CircuitEvaluation:
    """MIB's evaluation of a scored graph: both faithfulness curves (signed and |score|
    rankings) from one call of `run_masks`, CPR and CMD, and bootstrap intervals over the
    prompts (`n_resamples=0` skips them; both curves use the same resampled prompts)."""
    if not isinstance(graph, Graph):
        raise TypeError(f"expected a circuits.graph.Graph, got {type(graph).__name__}")
    fractions = check_fractions(fractions)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 0:
        raise ValueError(f"n_resamples must be a non-negative integer (0: no intervals), got {n_resamples!r}")
    parts = [_curve_masks(graph, fractions, absolute, selection) for absolute in (False, True)]
    masks = torch.cat([parts[0][2], parts[1][2], _empty_and_full(graph)])
    metric = run_masks_checked(run_masks, masks, graph)
    n = len(fractions)
    curves = [FaithfulnessCurve(fractions, graph.n_edges, requested, kept, absolute, selection,
                                metric[i * n:(i + 1) * n], metric[-1], metric[-2])
              for i, (absolute, (requested, kept, _)) in enumerate(zip((False, True), parts))]
    check_gap(metric[-1], metric[-2])
    boots = [bootstrap(c, n_resamples, seed, confidence) if n_resamples else None for c in curves]
    return CircuitEvaluation(graph, curves[0], curves[1], boots[0], boots[1], task, method)


__all__ = ["MIB_FRACTIONS", "Bootstrap", "CircuitEvaluation", "FaithfulnessCurve", "NormalizedMetric", "RunMasks",
           "auroc", "bootstrap", "check_fractions", "check_gap", "cmd", "completeness", "cpr", "evaluate_circuit",
           "faithfulness", "faithfulness_curve", "run_masks_checked"]
