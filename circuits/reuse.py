"""Circuit component reuse: do two tasks' circuits on one model share their heads?
(Merullo et al., 2023, "Circuit Component Reuse Across Tasks in Transformer Language Models":
the IOI and Colored Objects circuits of GPT-2 Medium share most of their heads.)

    reuse = compare_circuits(model, ioi_task(model), colored_objects_task(model), top_k=6, top_n=100)
    reuse.overlap.head_spearman, reuse.overlap.shared_heads, reuse.overlap.edge_jaccard
    reuse.to_frame()               # one row per head: both importances, in which top set
    reuse.intervention_frame()     # per task: metric clean, shared heads ablated, random heads ablated

Three comparisons:

- head importance: a head's importance for a task is |its node score| (`graph.node_scores`, the
  sum of its outgoing edge scores; absolute because methods differ in sign); the two tasks'
  importances over all heads are correlated (Pearson, and Spearman with tied ranks averaged);
- overlap: the `top_k` heads by importance and the `top_n` edges by |score| of each task,
  their intersection and Jaccard index |A ∩ B| / |A ∪ B|;
- intervention: the heads in both top sets are zero-ablated together (`ablation`) and each
  task's metric is read with `task.evaluate`; as a control, `n_random` random sets of as many
  heads drawn from the heads outside the shared set. Shared components that both tasks use
  should cost both more than the control does.

And one intervention that moves one task's circuit toward the other's (in the spirit of
Merullo et al.'s, who made Colored Objects' inhibition heads attend as in IOI):
`transplant_attention(model, source, target, heads)` gives each head, at the target's answer
position, the source task's mean attention on each role (`ROLES`) and reads the target's metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from interp.models import HookedModel
from interp.models.ablation import ablation, check_heads
from interp.patching import Task

from .discovery import find_circuit
from .graph import Graph

Head = tuple[int, int]


@dataclass(frozen=True)
class HeadOverlap:
    """How two graphs of one model shape agree on heads and edges (see the module docstring).

    `importance_a`, `importance_b`: `[n_layers, n_heads]` |node score| of each head.
    Head and edge lists are in rank order (best first); shared lists in the order of `a`.
    """

    importance_a: torch.Tensor
    importance_b: torch.Tensor
    head_pearson: float
    head_spearman: float
    top_heads_a: list[Head]
    top_heads_b: list[Head]
    shared_heads: list[Head]
    head_jaccard: float
    top_edges_a: list[str]
    top_edges_b: list[str]
    shared_edges: list[str]
    edge_jaccard: float


@dataclass(frozen=True)
class Reuse:
    """`compare_circuits`'s result: the two graphs, their overlap and the ablation test.

    `ablation_scores[task name]`: `{"clean": metric, "shared": metric with the shared heads
    ablated, "random": [metric with each random control set ablated]}`; `random_heads`: those
    control sets. Empty when no head is shared (nothing to ablate).
    """

    task_a: str
    task_b: str
    method: str
    graph_a: Graph
    graph_b: Graph
    overlap: HeadOverlap
    random_heads: list[list[Head]]
    ablation_scores: dict[str, dict]

    def to_frame(self) -> pd.DataFrame:
        """One row per head: `layer head importance_<a> importance_<b> top_<a> top_<b> shared`."""
        o = self.overlap
        n_layers, n_heads = o.importance_a.shape
        heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
        shared = set(o.shared_heads)
        return pd.DataFrame({
            "layer": [h[0] for h in heads], "head": [h[1] for h in heads],
            f"importance_{self.task_a}": o.importance_a.reshape(-1).tolist(),
            f"importance_{self.task_b}": o.importance_b.reshape(-1).tolist(),
            f"top_{self.task_a}": [h in set(o.top_heads_a) for h in heads],
            f"top_{self.task_b}": [h in set(o.top_heads_b) for h in heads],
            "shared": [h in shared for h in heads],
        })

    def intervention_frame(self) -> pd.DataFrame:
        """One row per task: `task clean shared_ablated drop_shared random_ablated_mean
        drop_random_mean drop_random_std n_shared n_random` (drop = clean - ablated)."""
        rows = []
        for task, s in self.ablation_scores.items():
            random_drops = torch.tensor([s["clean"] - r for r in s["random"]], dtype=torch.float64)
            rows.append({"task": task, "clean": s["clean"], "shared_ablated": s["shared"],
                         "drop_shared": s["clean"] - s["shared"],
                         "random_ablated_mean": sum(s["random"]) / len(s["random"]),
                         "drop_random_mean": random_drops.mean().item(),
                         "drop_random_std": random_drops.std().item() if len(random_drops) > 1 else math.nan,
                         "n_shared": len(self.overlap.shared_heads), "n_random": len(s["random"])})
        return pd.DataFrame(rows)


def head_importance(graph: Graph) -> torch.Tensor:
    """`[n_layers, n_heads]`: |node score| of every head of `graph` (float64). A graph
    without node scores on its heads (NaN) is refused."""
    n_layers, n_heads = graph.cfg.n_layers, graph.cfg.n_heads
    index = torch.tensor([graph.node_index(f"a{layer}.h{head}") for layer in range(n_layers) for head in range(n_heads)])
    scores = graph.node_scores[index]
    if scores.isnan().any():
        raise ValueError(f"graph ({graph.task_name}, {graph.method}) has no node score on "
                         f"{int(scores.isnan().sum())} of its {len(index)} heads; head importance needs them all "
                         "(find_circuit sets node scores)")
    return scores.abs().reshape(n_layers, n_heads)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of `x` (1-D), ties given their average rank."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for value in x.unique():
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = (x.norm() * y.norm()).item()
    return (x @ y).item() / denominator if denominator > 0 else math.nan


def _top_heads(importance: torch.Tensor, k: int) -> list[Head]:
    """The `k` most important heads, best first; ties go to the earlier head (layer, then head)."""
    n_heads = importance.shape[1]
    order = torch.argsort(-importance.reshape(-1), stable=True)[:k]
    return [(int(i) // n_heads, int(i) % n_heads) for i in order]


def _top_edges(graph: Graph, n: int) -> list[str]:
    """The `n` edges of `graph` with the largest |score| (`graph.top_n`, unpruned), best first."""
    chosen = graph.top_n(n, prune=False).in_graph
    senders, receivers = chosen.nonzero(as_tuple=True)
    ranked = sorted(zip(senders.tolist(), receivers.tolist()), key=lambda e: -abs(graph.scores[e].item()))
    return [graph.edge_name(s, r) for s, r in ranked]


def _jaccard(a: list, b: list) -> float:
    union = set(a) | set(b)
    return len(set(a) & set(b)) / len(union) if union else math.nan


def compare_graphs(graph_a: Graph, graph_b: Graph, top_k: int = 5, top_n: int = 50) -> HeadOverlap:
    """Head-importance correlation and top-set overlap of two scored graphs of one model shape."""
    if graph_a.cfg.shape() != graph_b.cfg.shape():
        raise ValueError(f"the graphs have different shapes: {graph_a.cfg.shape()} and {graph_b.cfg.shape()}")
    n_total = graph_a.cfg.n_layers * graph_a.cfg.n_heads
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n_total:
        raise ValueError(f"top_k must be an integer from 1 to the {n_total} heads, got {top_k!r}")
    if isinstance(top_n, bool) or not isinstance(top_n, int) or not 1 <= top_n <= graph_a.n_edges:
        raise ValueError(f"top_n must be an integer from 1 to the {graph_a.n_edges} edges, got {top_n!r}")
    imp_a, imp_b = head_importance(graph_a), head_importance(graph_b)
    heads_a, heads_b = _top_heads(imp_a, top_k), _top_heads(imp_b, top_k)
    edges_a, edges_b = _top_edges(graph_a, top_n), _top_edges(graph_b, top_n)
    flat_a, flat_b = imp_a.reshape(-1), imp_b.reshape(-1)
    return HeadOverlap(
        importance_a=imp_a, importance_b=imp_b,
        head_pearson=_pearson(flat_a, flat_b), head_spearman=_pearson(_ranks(flat_a), _ranks(flat_b)),
        top_heads_a=heads_a, top_heads_b=heads_b, shared_heads=[h for h in heads_a if h in set(heads_b)],
        head_jaccard=_jaccard(heads_a, heads_b),
        top_edges_a=edges_a, top_edges_b=edges_b, shared_edges=[e for e in edges_a if e in set(edges_b)],
        edge_jaccard=_jaccard(edges_a, edges_b))


def random_control_heads(n_layers: int, n_heads: int, exclude: list[Head], n_sets: int,
                         seed: int = 0) -> list[list[Head]]:
    """`n_sets` sets of `len(exclude)` heads drawn uniformly (without replacement within a set)
    from the heads not in `exclude`, reproducible from `seed`."""
    pool = [(layer, head) for layer in range(n_layers) for head in range(n_heads) if (layer, head) not in set(exclude)]
    if len(pool) < len(exclude):
        raise ValueError(f"a control set needs {len(exclude)} heads outside the shared set, but only {len(pool)} "
                         "heads are left; use a smaller top_k")
    gen = torch.Generator().manual_seed(seed)
    return [sorted(pool[i] for i in torch.randperm(len(pool), generator=gen)[:len(exclude)].tolist())
            for _ in range(n_sets)]


def compare_circuits(model: HookedModel, task_a: Task, task_b: Task, method: str = "eap-ig", *,
                     top_k: int = 5, top_n: int = 50, n_random: int = 10, seed: int = 0,
                     **find_options) -> Reuse:
    """Score `model`'s edges for both tasks with `find_circuit(model, task, method,
    **find_options)`, compare the graphs (`compare_graphs`), and ablate the shared heads and
    `n_random` control sets of as many non-shared heads (`random_control_heads`, from `seed`),
    reading each task's metric with `task.evaluate`."""
    for name, task in (("task_a", task_a), ("task_b", task_b)):
        if not isinstance(task, Task):
            raise TypeError(f"{name} must be an interp.patching.Task, got {type(task).__name__}")
    if task_a.name == task_b.name:
        raise ValueError(f"the two tasks must have different names (they key the results), both are {task_a.name!r}")
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 1:
        raise ValueError(f"n_random must be an integer >= 1, got {n_random!r}")
    find_options.setdefault("progress", False)
    graph_a = find_circuit(model, task_a, method, **find_options)
    graph_b = find_circuit(model, task_b, method, **find_options)
    overlap = compare_graphs(graph_a, graph_b, top_k, top_n)
    controls, scores = [], {}
    if overlap.shared_heads:
        controls = random_control_heads(model.cfg.n_layers, model.cfg.n_heads, overlap.shared_heads, n_random, seed)
        for task in (task_a, task_b):
            scores[task.name] = {"clean": task.evaluate(model),
                                 "shared": task.evaluate(model, ablation(model, overlap.shared_heads)),
                                 "random": [task.evaluate(model, ablation(model, heads)) for heads in controls]}
    return Reuse(task_a.name, task_b.name, method, graph_a, graph_b, overlap, controls, scores)


ROLES = ("answer", "wrong", "first", "other")


def role_masks(task: Task) -> torch.Tensor:
    """`[batch, pos, 4]` bool: which role (`ROLES`) each key position up to the answer position
    plays in each clean prompt. "answer": the answer token's mentions; "wrong": the wrong
    token's (IOI: both subject mentions; kept object: both mentions of the repeated object);
    "first": position 0 (BOS where the model prepends it), unless it is one of those; "other":
    the rest. Positions after the answer position (padding) have no role."""
    batch, n_pos = task.clean.shape
    positions = torch.arange(n_pos)
    live = positions[None, :] <= task.answer_pos[:, None]
    answer = (task.clean == task.answer[:, None]) & live
    wrong = (task.clean == task.wrong[:, None]) & live & ~answer
    first = (positions[None, :] == 0) & ~answer & ~wrong
    other = live & ~answer & ~wrong & ~first
    return torch.stack([answer, wrong, first, other], dim=-1)


def _pattern_rows(model: HookedModel, task: Task, heads: list[Head]) -> torch.Tensor:
    """`[len(heads), batch, pos]`: each head's attention from the answer position (clean run)."""
    from interp.models import sites

    with torch.no_grad():
        _, cache = model.run(task.clean, capture=[sites.pattern(layer) for layer in sorted({h[0] for h in heads})],
                             stop_early=True)
    rows = torch.arange(task.batch)
    return torch.stack([cache[sites.pattern(layer)][rows, head, task.answer_pos].float().cpu()
                        for layer, head in heads])


def attention_roles(model: HookedModel, task: Task, heads: list[Head]) -> torch.Tensor:
    """`[len(heads), 4]`: each head's attention from the answer position on each role
    (`ROLES`, `role_masks`), averaged over the task's prompts. Rows sum to 1."""
    patterns = _pattern_rows(model, task, heads)
    return torch.einsum("hbp,bpr->hr", patterns.double(), role_masks(task).double()) / task.batch


@dataclass(frozen=True)
class AttentionTransplant:
    """`transplant_attention`'s result. `source_roles`, `target_roles`: `[len(heads), 4]`
    attention on `ROLES` from the answer position in each task; `before`, `after`: the target
    task's score without and with the transplant."""

    heads: list[Head]
    source: str
    target: str
    source_roles: torch.Tensor
    target_roles: torch.Tensor
    before: float
    after: float

    def to_frame(self) -> pd.DataFrame:
        """One row per head and role: attention in the source and in the target task."""
        return pd.DataFrame([{"layer": layer, "head": head, "role": role,
                              f"attention_{self.source}": self.source_roles[i, r].item(),
                              f"attention_{self.target}": self.target_roles[i, r].item()}
                             for i, (layer, head) in enumerate(self.heads) for r, role in enumerate(ROLES)])


def _redistribute(rows: torch.Tensor, masks: torch.Tensor, roles: torch.Tensor) -> torch.Tensor:
    """`rows [batch, pos]` (attention of one head from the answer position) rewritten so that role
    r gets total mass `roles[r]`, spread over its positions as `rows` spreads it (evenly where
    `rows` puts nothing there); a role with no position in a prompt gives its mass to "other"."""
    masks = masks.to(rows.dtype)
    present = masks.amax(dim=1)                                                   # [batch, 4]
    mass = roles.to(rows.dtype)[None, :] * present
    mass[:, ROLES.index("other")] += (roles.to(rows.dtype)[None, :] * (1 - present)).sum(-1)
    within = rows[:, :, None] * masks                                             # [batch, pos, 4]
    total = within.sum(dim=1, keepdim=True)
    even = masks / masks.sum(dim=1, keepdim=True).clamp(min=1)
    share = torch.where(total > 0, within / total.clamp(min=torch.finfo(rows.dtype).tiny), even)
    return (share * mass[:, None, :]).sum(-1)


def transplant_attention(model: HookedModel, source: Task, target: Task, heads: list[Head],
                         batch_size: int = 16) -> AttentionTransplant:
    """Move the target task's circuit toward the source task's (in the spirit of Merullo et al.'s
    intervention on Colored Objects): each of `heads`, at the target's answer position, attends
    to the roles (`ROLES`: the answer's mentions, the wrong token's, position 0, the rest) as
    it does on average in the source task, each role's mass spread over the target prompt's
    positions of that role as the head itself spreads it there. Returns the target's score
    before and after (`target.evaluate`), with `heads` in (layer, head) order."""
    from interp.models import Splice, sites

    for name, task in (("source", source), ("target", target)):
        if not isinstance(task, Task):
            raise TypeError(f"{name} must be an interp.patching.Task, got {type(task).__name__}")
    heads = check_heads(model.cfg, heads, distinct=True, allow_empty=False)
    source_roles = attention_roles(model, source, heads)
    target_roles = attention_roles(model, target, heads)
    scores = []
    for start in range(0, target.batch, batch_size):
        part = target.rows(slice(start, start + batch_size))
        masks, rows = role_masks(part), torch.arange(part.batch)

        def rewrite(pattern: torch.Tensor, i: int, part=part, masks=masks, rows=rows) -> torch.Tensor:
            new = pattern.clone()
            old = pattern[rows, part.answer_pos.to(pattern.device)]
            new[rows, part.answer_pos.to(pattern.device)] = _redistribute(
                old.double().cpu(), masks, source_roles[i]).to(pattern.device, pattern.dtype)
            return new

        interventions = [Splice(sites.pattern(layer, head), fn=lambda p, i=i: rewrite(p, i))
                         for i, (layer, head) in enumerate(heads)]
        scores.append((part.evaluate(model, interventions, batch_size=part.batch), part.batch))
    after = sum(s * n for s, n in scores) / target.batch
    return AttentionTransplant(heads, source.name, target.name, source_roles.float(), target_roles.float(),
                               target.evaluate(model), after)
