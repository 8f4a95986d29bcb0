"""Head importance and iterative pruning (Michel, Levy & Neubig, 2019; docs/methods.md §2).

Every head's output (its z, before W_O) gets a gate ξ_h, 1 by default: MHA(x) = Σ_h ξ_h Att_h(x).
The importance of head h on a task is I_h = E |∂L/∂ξ_h|, the gradient of the task's *loss*
with respect to the gate, in absolute value, averaged over the task's batches (the authors
accumulate it per batch; batches of one prompt give the per-example expectation exactly).
Importances are normalised per layer by the L2 norm over that layer's heads and then ranked
across the whole model.

Pruning removes the least important heads in steps of a fraction of all heads, either in the
order of one importance computation ("once") or recomputing importance after every step with
the pruned heads gated off ("exact"), and records the task's metric at each step; random orders
give the baseline curve. Pruning here is zero ablation of z (`interp.models.ablation`);
`analyses.head_removal` makes the smaller model whose outputs equal the ablated one.

The task is an `interp.patching.Task`: its loss (the answer's cross-entropy, or the task's
own loss) drives importance, its score (the mean metric, or the task's own score) is what the
curves record.

    task = ioi_task(model, n=64)
    result = pruning_curve(model, task)             # orders "once", "exact", "random"
    result.to_frame()                               # order, fraction, n_pruned, metric, metric_std
    result.heads_to_prune(0.4)                      # [(layer, head), ...]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Iterable

import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from interp.models import HookedModel
from interp.models.ablation import ablation, check_heads, head_gates
from interp.patching import Task
from interp.results import Meta, Result
from interp.results.registry import Analysis

from .specs import ORDERS, PRUNING, PruningConfig


# ---------------------------------------------------------------- importance


def head_importance(model: HookedModel, task: Task, pruned: Iterable[tuple[int, int]] = (),
                    normalize: bool = True) -> Float[torch.Tensor, "n_layers n_heads"]:
    """I_h = mean over the task's batches of |∂loss/∂ξ_h| (ξ: `interp.models.ablation.head_gates`
    on each head's z; the loss: `Task.losses`), with the `pruned` heads' gates at 0 (their
    importance is reported as 0). `normalize` divides each layer by its L2 norm."""
    _check_task(task)
    pruned = check_heads(model.cfg, pruned)
    gates = torch.ones(model.cfg.n_layers, model.cfg.n_heads, device=model.device)
    for layer, head in pruned:
        gates[layer, head] = 0.0
    gates.requires_grad_(True)
    total, n_batches = torch.zeros_like(gates), 0
    for loss in task.losses(model, head_gates(model, gates)):
        (grad,) = torch.autograd.grad(loss, gates)
        total += grad.abs()
        n_batches += 1
    if n_batches == 0:
        raise ValueError(f"task {task.name!r} gave no batches: its dataset is empty")
    importance = (total / n_batches).detach()
    for layer, head in pruned:
        importance[layer, head] = 0.0
    return normalize_per_layer(importance) if normalize else importance


def normalize_per_layer(importance: Float[torch.Tensor, "n_layers n_heads"]) -> Float[torch.Tensor, "n_layers n_heads"]:
    """Each layer's importances divided by their L2 norm (a layer of zeros stays zero)."""
    return importance / importance.norm(dim=1, keepdim=True).clamp_min(torch.finfo(importance.dtype).tiny)


def least_important(importance: torch.Tensor, exclude: Iterable[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """Every head not in `exclude`, least important first (ties: lower layer, then head)."""
    exclude = set(exclude)
    n_heads = importance.shape[1]
    order = torch.argsort(importance.flatten().cpu(), stable=True).tolist()
    return [(i // n_heads, i % n_heads) for i in order if (i // n_heads, i % n_heads) not in exclude]


# ---------------------------------------------------------------- pruning curves


def pruning_curve(model: HookedModel, task: Task, step: float = PruningConfig.step,
                  orders: Iterable[str] = PruningConfig.orders, n_random: int = PruningConfig.n_random,
                  seed: int = PruningConfig.seed, max_fraction: float = PruningConfig.max_fraction,
                  progress: bool = False) -> "PruningResult":
    """The task's score (`Task.evaluate`) after pruning 0, step, 2·step, ... (up to
    `max_fraction`) of all heads.

    Orders: "once" (importance computed on the full model), "exact" (recomputed after each
    step with the pruned heads gated off), "random" (`n_random` seeded random orders; the curve
    is their mean, `metric_std` their standard deviation).
    """
    _check_task(task)
    config = PruningConfig(step=step, orders=tuple(orders) if not isinstance(orders, str) else orders,
                           n_random=n_random, seed=seed, max_fraction=max_fraction)
    orders = list(config.orders)
    total = model.cfg.n_layers * model.cfg.n_heads
    counts = sorted({round(k * step * total) for k in range(int(max_fraction / step + 1e-9) + 1)})
    metric = _MetricCache(model, task)
    n_curves = sum(n_random if order == "random" else 1 for order in orders)
    bar = tqdm(total=len(counts) * n_curves, desc=f"pruning {task.name}", disable=not progress)

    raw = head_importance(model, task, normalize=False) if {"once", "exact"} & set(orders) else None
    importance = None if raw is None else normalize_per_layer(raw)
    rows, pruning_orders = [], {}
    if "once" in orders:
        pruning_orders["once"] = least_important(importance)
        rows += _curve_rows("once", pruning_orders["once"], counts, total, metric, bar)
    if "exact" in orders:
        pruned: list[tuple[int, int]] = []
        for n in counts:
            if n > len(pruned):
                current = head_importance(model, task, pruned) if pruned else importance
                pruned += least_important(current, exclude=pruned)[: n - len(pruned)]
        pruning_orders["exact"] = pruned + least_important(importance, exclude=pruned)
        rows += _curve_rows("exact", pruning_orders["exact"], counts, total, metric, bar)
    if "random" in orders:
        generator = torch.Generator().manual_seed(seed)
        runs = []
        for _ in range(n_random):
            perm = torch.randperm(total, generator=generator).tolist()
            heads = [(i // model.cfg.n_heads, i % model.cfg.n_heads) for i in perm]
            runs.append(pd.DataFrame(_curve_rows("random", heads, counts, total, metric, bar)))
        stacked = pd.concat(runs)
        grouped = stacked.groupby(["fraction", "n_pruned"], as_index=False)["metric"]
        merged = grouped.mean().merge(grouped.std(ddof=0).rename(columns={"metric": "metric_std"}))
        rows += merged.assign(order="random").to_dict("records")
    bar.close()
    curve = pd.DataFrame(rows)[["order", "fraction", "n_pruned", "metric", "metric_std"]]
    parameters = {**config.as_parameters(), "metric": task.metric_name}
    del parameters["seed"]
    return PruningResult(model_name=model.cfg.name, task_name=task.name, metric_name=task.metric_name,
                         importance=importance, raw_importance=raw, curve=curve, orders=pruning_orders,
                         parameters=parameters, seed=seed)


def run(model: HookedModel, config: PruningConfig, task: Task, *, progress: bool = True) -> "PruningResult":
    """The registered analysis "pruning" (`analyses.specs`); `config.metric` replaces a
    next-token task's metric."""
    if config.metric is not None:
        if not task.has_pairs or task.score is not None:
            raise ValueError(f"metric {config.metric!r} applies to next-token tasks; task {task.name!r} has its own "
                             f"score ({task.metric_name})")
        task = dataclasses.replace(task, metric=config.metric)
    kwargs = {k: v for k, v in config.as_kwargs().items() if k != "metric"}
    return pruning_curve(model, task, **kwargs, progress=progress)


class _MetricCache:
    """The task's score with a set of heads zero-ablated, computed once per set."""

    def __init__(self, model: HookedModel, task: Task):
        self.model, self.task, self.values = model, task, {}

    def __call__(self, heads: list[tuple[int, int]]) -> float:
        key = frozenset(heads)
        if key not in self.values:
            with torch.no_grad():
                self.values[key] = self.task.evaluate(self.model, ablation(self.model, heads))
        return self.values[key]


def _curve_rows(order: str, heads: list[tuple[int, int]], counts: list[int], total: int,
                metric: _MetricCache, bar) -> list[dict]:
    rows = []
    for n in counts:
        rows.append({"order": order, "fraction": n / total, "n_pruned": n, "metric": metric(heads[:n]),
                     "metric_std": 0.0})
        bar.update()
    return rows


def _check_task(task: Task) -> None:
    if not isinstance(task, Task):
        raise TypeError(f"task must be an interp.patching.Task (e.g. circuits.tasks.ioi_task, "
                        f"analyses.sentence_pairs.sentence_pair_task), got {type(task).__name__}")


@dataclass
class PruningResult(Result):
    """Importance of every head and the metric-vs-fraction-pruned curves.

    Attributes:
        importance: `[n_layers, n_heads]` per-layer L2-normalised importance on the full model
            (None when only random orders ran); raw_importance: the same before normalising.
        curve: one row per (order, step): order, fraction, n_pruned, metric, metric_std.
        orders: the pruning order of every head for "once" and "exact".
    """

    spec: ClassVar[Analysis] = PRUNING
    model_name: str
    task_name: str
    metric_name: str
    importance: torch.Tensor | None
    raw_importance: torch.Tensor | None
    curve: pd.DataFrame
    orders: dict[str, list[tuple[int, int]]]
    parameters: dict = field(default_factory=dict)
    seed: int | None = None

    def to_frame(self) -> pd.DataFrame:
        return self.curve.copy()

    def importance_frame(self) -> pd.DataFrame:
        """One row per head: layer, head, importance (normalised), raw_importance, rank (0 = the
        first pruned)."""
        if self.importance is None:
            raise ValueError("no importance was computed (random orders only)")
        n_layers, n_heads = self.importance.shape
        rank = {head: i for i, head in enumerate(least_important(self.importance))}
        return pd.DataFrame([{"layer": l, "head": h, "importance": self.importance[l, h].item(),
                              "raw_importance": self.raw_importance[l, h].item(), "rank": rank[(l, h)]}
                             for l in range(n_layers) for h in range(n_heads)])

    def heads_to_prune(self, fraction: float, order: str = "exact") -> list[tuple[int, int]]:
        """The first round(fraction · all heads) heads of a pruning order."""
        if order not in self.orders:
            raise ValueError(f"order {order!r} was not computed; available: {list(self.orders)}")
        total = len(self.orders[order])
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1] (at most all {total} heads), got {fraction}")
        return self.orders[order][: round(fraction * total)]

    def largest_fraction_within(self, tolerance: float = 0.05, order: str = "exact") -> float:
        """The largest fraction pruned such that every step up to it keeps the metric within
        `tolerance` (relative) of the unpruned model's."""
        rows = self.curve[self.curve["order"] == order].sort_values("n_pruned")
        if rows.empty:
            raise ValueError(f"order {order!r} was not computed")
        base = rows["metric"].iloc[0]
        ok = (rows["metric"] >= base - tolerance * abs(base)).cummin()
        return float(rows["fraction"][ok].max())

    def meta(self) -> Meta:
        return Meta(model=self.model_name, task=self.task_name, parameters=self.parameters, seed=self.seed)

    def tables(self) -> dict[str, pd.DataFrame]:
        """curve, and importance when it was computed."""
        tables = {"curve": self.to_frame()}
        if self.importance is not None:
            tables["importance"] = self.importance_frame()
        return tables

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.importance is None:
            return {}
        return {"importance": self.importance, "raw_importance": self.raw_importance}
