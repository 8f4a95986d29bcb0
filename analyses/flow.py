"""Attention flow (Abnar & Zuidema, 2020): attribution as max-flow through the layers.

The layered graph has a node (l, i) for every layer l = 0..L and position i; an edge
(l, i) -> (l-1, j) has capacity Â^l[i, j], the head-averaged attention with the residual
added and rows renormalised (see `analyses.rollout.residual_attention`). The flow from
output node (l, u) to input node (0, v) is the value of a maximum flow between them, and each
output's flows are normalised to sum to 1 over the inputs. Rollout multiplies along paths;
flow takes bottlenecks. After one layer both equal Â^1.

Speed: one sparse graph per prompt serves every (layer, output, input) triple: nodes are
numbered layer by layer, edges only go down, so the graph for outputs after block l is the
leading block of the full one (sliced once per layer), and source and sink are just node
numbers. Each max-flow is `scipy.sparse.csgraph.maximum_flow` (Dinic's algorithm), far
faster than the networkx Edmonds–Karp of the paper's code (see benchmarks/flow.py).

Integer scaling: scipy's max-flow takes integer capacities and keeps capacities and flows as
int32 (larger values wrap around silently: a capacity of 3e9 gives a flow of 0). Capacities
are Â rounded to multiples of 1/`scale`, `scale` = 2^30 by default, so no capacity or flow
can exceed 2^31 - 1 (Â <= 1 and an output's total flow <= 1). A flow value is the capacity of
a minimum cut, so its error is at most 0.5/scale per edge of that cut: about 1e-9 relative in
practice (the tests hold it to 1e-6 against networkx on the unrounded capacities). `scale`
must lie in [2^20, 2^30]: coarser rounding (say `scale=1`, capacities 0 or 1) gives flows that
are wrong, not merely imprecise.

    result = attention_flow(load_model("minilm"), ["The cat sat on the mat."])
    result.maps                   # [layer, batch, q, k], rows of real queries sum to 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Bool, Float, Int
from scipy.sparse.csgraph import maximum_flow
from tqdm.auto import tqdm

from interp.models import HookedModel
from interp.patching import Task
from interp.results.registry import Analysis

from .rollout import AttentionMaps, PromptAttention, resolve_source, residual_attention
from .specs import FLOW, MAX_FLOW_SCALE, MIN_FLOW_SCALE, FlowConfig


class FlowGraph:
    """The layered flow graph of one prompt, built once and reused for every max-flow.

    `a_hat [layer, n, n]`: Â of each block over the prompt's real tokens only, rows summing
    to 1 (numpy or torch). Node (l, i) is numbered l * n + i.
    """

    def __init__(self, a_hat: Float[np.ndarray, "layer n n"] | Float[torch.Tensor, "layer n n"],
                 scale: int = FlowConfig.scale):
        if (isinstance(scale, bool) or not isinstance(scale, (int, np.integer))
                or not MIN_FLOW_SCALE <= scale <= MAX_FLOW_SCALE):
            raise ValueError(f"scale must be an int in [2**20, 2**30] (scipy's max-flow holds int32 capacities; "
                             f"coarser rounding gives wrong flows), got {scale!r}")
        a_hat = _check_a_hat(a_hat)
        n_layers, n, _ = a_hat.shape
        self.n_layers, self.n_pos, self.scale = n_layers, n, int(scale)
        capacity = np.rint(a_hat * self.scale).astype(np.int32)
        layer, row, col = np.nonzero(capacity)
        full = sp.csr_array((capacity[layer, row, col], ((layer + 1) * n + row, layer * n + col)),
                            shape=((n_layers + 1) * n,) * 2)
        full.sort_indices()
        # Outputs after block l reach only layers 0..l+1: the leading block of the graph.
        self._graphs = [full[: (l + 2) * n, : (l + 2) * n].tocsr() for l in range(n_layers)]

    def flows_from(self, layer: int, output: int, inputs: Sequence[int] | None = None) -> Float[np.ndarray, "inputs"]:
        """Max-flow values (unnormalised, in units of attention) from `output` after block
        `layer` (0-based) to each of `inputs` (default all positions)."""
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be an int in [0, {self.n_layers - 1}], got {layer!r}")
        positions = range(self.n_pos) if inputs is None else inputs
        for position in (output, *positions):
            if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or not 0 <= position < self.n_pos:
                raise ValueError(f"positions must be ints in [0, {self.n_pos - 1}], got {position!r}")
        graph, source = self._graphs[layer], (layer + 1) * self.n_pos + int(output)
        return np.array([maximum_flow(graph, source, int(v)).flow_value for v in positions],
                        dtype=np.float64) / self.scale


def _check_a_hat(a_hat) -> np.ndarray:
    if isinstance(a_hat, torch.Tensor):
        a_hat = a_hat.detach().cpu().numpy()
    a_hat = np.asarray(a_hat, dtype=np.float64)
    if a_hat.ndim != 3 or a_hat.shape[1] != a_hat.shape[2] or 0 in a_hat.shape:
        raise ValueError(f"a_hat must have shape [layer, n, n] with layer, n >= 1, got {a_hat.shape}")
    if not np.isfinite(a_hat).all() or a_hat.min() < 0:
        raise ValueError("a_hat must hold finite, non-negative capacities")
    worst = np.abs(a_hat.sum(axis=-1) - 1).max()
    if worst > 1e-6:
        raise ValueError(f"a_hat must be row-stochastic over the prompt's real tokens (rows sum to 1); "
                         f"a row is off by {worst:.3g}")
    return a_hat


def attention_flow(
    source: HookedModel | PromptAttention | Float[torch.Tensor, "layer batch head q k"],
    prompts: Sequence[str] | Int[torch.Tensor, "batch pos"] | None = None,
    mask: Bool[torch.Tensor, "batch pos"] | None = None,
    *,
    layers: Sequence[int] | None = None,
    queries: Sequence[int] | None = None,
    scale: int = FlowConfig.scale,
    progress: bool = True,
) -> FlowResult:
    """Attention flow from outputs to input tokens, per layer and prompt.

    Args:
        source, prompts, mask: as for `attention_rollout` (a model with texts or tokens,
            a `PromptAttention`, or patterns `[layer, batch, head, q, k]` with a mask).
        layers: blocks (0-based) whose outputs to explain; default all.
        queries: output positions to explain (padded positions are skipped); default all.
        scale: integer scaling of capacities (see the module docstring).
    Returns:
        `FlowResult` with `maps [len(layers), batch, q, k]`: normalised flows, rows of
        explained real queries summing to 1; 0 on padding; NaN in rows not computed.
    """
    attention = resolve_source(source, prompts, mask)
    a_hat = residual_attention(attention.patterns, attention.mask).cpu()
    n_layers, batch, n_pos, _ = a_hat.shape
    layers = _check_indices("layers", list(range(n_layers)) if layers is None else layers, n_layers)
    queries = _check_indices("queries", list(range(n_pos)) if queries is None else queries, n_pos)
    real = attention.mask.cpu()
    maps = torch.full((len(layers), batch, n_pos, n_pos), float("nan"), dtype=torch.float64)
    bar = tqdm(total=batch * len(layers), desc="flow", disable=not progress)
    for b in range(batch):
        keep = real[b].nonzero().flatten()
        maps[:, b, ~real[b], :] = 0
        maps[:, b, :, ~real[b]] = 0
        graph = FlowGraph(a_hat[:, b][:, keep][:, :, keep], scale=scale)
        rank = {int(p): r for r, p in enumerate(keep)}
        for slot, layer in enumerate(layers):
            for query in (q for q in queries if q in rank):
                flows = torch.from_numpy(graph.flows_from(layer, rank[query]))
                maps[slot, b, query, keep] = flows / flows.sum()
            bar.update()
    bar.close()
    return FlowResult(maps=maps, mask=real, str_tokens=attention.str_tokens, model_name=attention.model_name,
                      layers=layers, parameters={"scale": int(scale), "queries": queries})


def run(model: HookedModel, config: FlowConfig, task: Task | None = None, *, progress: bool = True) -> FlowResult:
    """The registered analysis "flow" (`analyses.specs`)."""
    return attention_flow(model, list(config.texts), layers=config.layers, queries=config.queries,
                          scale=config.scale, progress=progress)


def _check_indices(name: str, values: Sequence[int], size: int) -> list[int]:
    values = list(values)
    if not values:
        raise ValueError(f"{name} must name at least one index in [0, {size - 1}], got none")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < size]
    if bad:
        raise ValueError(f"{name} must be ints in [0, {size - 1}], got {bad[:5]}")
    return [int(v) for v in dict.fromkeys(values)]


@dataclass
class FlowResult(AttentionMaps):
    """Normalised attention-flow maps `[layer, batch, q, k]` (see `attention_flow`)."""

    spec: ClassVar[Analysis] = FLOW
