"""One circuit graph for every circuit method: nodes, edges, scores, a circuit mask, selection,
pruning, and the EAP-IG / MIB JSON format (docs/methods.md §5, §7).

Nodes, in MIB's names: `input`, each attention head `a{layer}.h{head}`, each MLP `m{layer}`,
and `logits`. A node's output is written to the residual stream; every node downstream reads
it, so there is an edge from each upstream node to each downstream *input*. A head has three
inputs (`<q>`, `<k>`, `<v>`), an MLP one, the logits one::

    input->a0.h0<q>    a0.h1->a1.h0<k>    a1.h0->m1    m2->logits

Upstream of the heads of layer l: `input` and every head and MLP of layers < l. Upstream of
MLP l: the same and layer l's heads, except with `parallel_attn_mlp` (GPT-NeoX), where a
layer's attention and MLP both read the block input. GPT-2 small (12 x 12) has 32,491 edges.

Storage, shared with the patching engine. *Senders* are the nodes that write (input, then per
layer its heads and its MLP); *receivers* are the inputs that read (per layer: the q input of
every head, then every head's k, then every head's v, then the MLP; finally logits) — EAP-IG's
forward / backward order, so a layer's q (k, v) inputs are one contiguous slice over heads.
Nodes are the senders followed by `logits`, so a sender's index is its node index. The senders
upstream of a receiver are always a prefix of the sender order (`n_upstream`). Dense tensors::

    exists      [n_senders, n_receivers]  bool, the edge exists (fixed by the shape)
    scores      [n_senders, n_receivers]  float64, NaN where there is no edge or no score
    in_graph    [n_senders, n_receivers]  bool, the edge is in the circuit (never outside exists)
    node_scores [n_nodes]                 float64, NaN where unset
    node_in_graph [n_nodes]               bool; `logits` is always in the graph (as in EAP-IG)

Selection (`top_n`, `threshold`, `greedy`) and `prune` return a new graph and leave this one
as it is. Ties between equal scores go to the edge whose sender comes first in sender order,
then whose receiver comes first in receiver order.

    graph = Graph.for_model(model).with_scores(scores)      # scores from an attribution method
    circuit = graph.top_n(200)                               # 200 edges by |score|, pruned
    circuit.to_frame(); circuit.figure()                     # the circuit diagram (circuits.figures)
    circuit.described(task="ioi", method="eap-ig").save("runs/")   # a bundle (analysis "circuit")
    circuit.to_json("ioi_gpt2.json")                         # MIB's submission format
"""

from __future__ import annotations

import heapq
import json
import math
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

import pandas as pd
import torch
from jaxtyping import Bool, Float

from circuits.specs import CIRCUIT
from interp.patching.edges import EdgeLayout
from interp.results import Meta, Result
from interp.results.registry import Analysis

if TYPE_CHECKING:
    from interp.models import HookedModel, ModelConfig

QKV = ("q", "k", "v")
# Bundles of the analysis "circuit" hold a graph (`Graph.save`) and, from `CircuitEvaluation.save`,
# its evaluation too; older evaluation bundles are called "circuit-evaluation".
GRAPH_ANALYSES = ("circuit", "circuit-evaluation")


class GraphFormatError(ValueError):
    """A graph file (EAP-IG / MIB JSON) cannot be read as a graph of the expected shape."""


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class GraphConfig:
    """The model shape a graph is built from; `d_model` and `model_name` are optional labels
    (EAP-IG's JSON needs `d_model`)."""

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool = False
    d_model: int | None = None
    model_name: str | None = None

    def __post_init__(self):
        _check_int(self.n_layers, "n_layers", 1)
        _check_int(self.n_heads, "n_heads", 1)
        if not isinstance(self.parallel_attn_mlp, bool):
            raise TypeError(f"parallel_attn_mlp must be True or False, got {self.parallel_attn_mlp!r}")
        if self.d_model is not None:
            _check_int(self.d_model, "d_model", 1)
        if self.model_name is not None and (not isinstance(self.model_name, str) or not self.model_name):
            raise ValueError(f"model_name must be a non-empty string or None, got {self.model_name!r}")

    def shape(self) -> dict[str, Any]:
        """The fields of EAP-IG's `cfg`: n_layers, n_heads, parallel_attn_mlp, d_model."""
        return {"n_layers": self.n_layers, "n_heads": self.n_heads,
                "parallel_attn_mlp": self.parallel_attn_mlp, "d_model": self.d_model}


def graph_config(model_or_cfg: Any) -> GraphConfig:
    """The `GraphConfig` of a `Graph`, a `GraphConfig`, a `HookedModel` or its `ModelConfig`
    (fields `n_layers n_heads parallel d_model name`)."""
    if isinstance(model_or_cfg, Graph):
        return model_or_cfg.cfg
    if isinstance(model_or_cfg, GraphConfig):
        return model_or_cfg
    cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
    missing = [f for f in ("n_layers", "n_heads", "parallel", "d_model") if not hasattr(cfg, f)]
    if missing:
        raise TypeError(f"expected a HookedModel, its cfg (interp.models.ModelConfig), a GraphConfig or a Graph; "
                        f"got {type(model_or_cfg).__name__}, which lacks {missing}")
    if getattr(cfg, "pre_ln", True) is False:
        raise ValueError(f"{getattr(cfg, 'name', 'this model')} normalises after each sublayer (post-LN), so its "
                         "residual stream is not a sum of node outputs and edges are not defined; circuit graphs "
                         "need a pre-norm model")
    return GraphConfig(cfg.n_layers, cfg.n_heads, bool(cfg.parallel), cfg.d_model, getattr(cfg, "name", None))


@dataclass(frozen=True)
class _Layout:
    """Names and index maps of one model shape; built once per shape (`_layout`)."""

    nodes: tuple[str, ...]
    receivers: tuple[str, ...]
    node_index: dict[str, int]
    receiver_index: dict[str, int]
    receiver_node: torch.Tensor  # [n_receivers] long: node index that owns each receiver
    receiver_qkv: tuple[str | None, ...]
    n_upstream: torch.Tensor  # [n_receivers] long: senders feeding the receiver (a prefix)
    node_layer: torch.Tensor  # [n_nodes] long: -1 for input, n_layers for logits
    node_head: torch.Tensor  # [n_nodes] long: -1 for non-heads
    exists: torch.Tensor  # [n_senders, n_receivers] bool
    eap_order: tuple[torch.Tensor, torch.Tensor]  # (sender, receiver) of every edge in EAP-IG's order

    @cached_property
    def edge_names(self) -> list[str]:
        """Every edge's name, in EAP-IG's order."""
        s, r = self.eap_order
        return [f"{self.nodes[i]}->{self.receivers[j]}" for i, j in zip(s.tolist(), r.tolist())]

    @cached_property
    def edge_position(self) -> dict[str, int]:
        """Edge name -> its position in EAP-IG's order."""
        return {name: i for i, name in enumerate(self.edge_names)}

    @cached_property
    def edge_flat(self) -> torch.Tensor:
        """Row-major flat indices (sender * n_receivers + receiver) of the edges, ascending."""
        return self.exists.reshape(-1).nonzero().squeeze(1)


@lru_cache(maxsize=16)
def _layout(n_layers: int, n_heads: int, parallel: bool) -> _Layout:
    """Index maps over the engine's edge layout (`interp.patching.edges.EdgeLayout`, which
    fixes the sender and receiver order): nodes are its senders plus `logits`."""
    edges = EdgeLayout.build(n_layers, n_heads, parallel)
    L, H = n_layers, n_heads
    nodes = list(edges.senders) + ["logits"]
    layer = list(edges.sender_layer) + [L]
    head = [int(n.split(".h")[1]) if n.startswith("a") else -1 for n in edges.senders] + [-1]
    node_index = {n: i for i, n in enumerate(nodes)}
    owner = [node_index[r.split("<")[0]] for r in edges.receivers]
    qkv = tuple(r[-2] if r.endswith(">") else None for r in edges.receivers)
    n_upstream = edges.exists.sum(0)  # upstream senders are a prefix of the sender order
    return _Layout(tuple(nodes), edges.receivers, node_index, {r: i for i, r in enumerate(edges.receivers)},
                   torch.tensor(owner), qkv, n_upstream, torch.tensor(layer), torch.tensor(head), edges.exists,
                   _eap_order(L, H, parallel))


def _eap_order(L: int, H: int, parallel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(sender, receiver) of every edge in the order EAP-IG's `Graph.from_model` adds them: per
    layer, for each upstream sender its edges to every head (q, k, v) — and, when parallel, to
    the MLP right after — then (not parallel) every edge to the MLP; finally the logits."""
    senders, receivers = [], []
    for l in range(L):
        first, base = 1 + l * (H + 1), l * (3 * H + 1)
        mlp = base + 3 * H
        s = torch.arange(first)
        heads = (base + torch.arange(3)[None, :] * H + torch.arange(H)[:, None]).reshape(-1)  # head-major, then qkv
        if parallel:
            per_sender = torch.cat([heads, torch.tensor([mlp])])
            senders.append(s.repeat_interleave(len(per_sender)))
            receivers.append(per_sender.repeat(first))
        else:
            senders += [s.repeat_interleave(3 * H), torch.arange(first + H)]
            receivers += [heads.repeat(first), torch.full((first + H,), mlp)]
    n_senders = 1 + L * (H + 1)
    senders.append(torch.arange(n_senders))
    receivers.append(torch.full((n_senders,), L * (3 * H + 1)))
    return torch.cat(senders), torch.cat(receivers)


def _names(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "none"


class Graph(Result):
    """A circuit graph of one model shape: edge and node scores and the circuit mask (a
    `Result` of the registered analysis "circuit").

    Build it with `Graph.for_model`; add scores with `with_scores`, a circuit with
    `with_circuit` or a selection (`top_n`, `threshold`, `greedy`); say how it was found with
    `described`. Tensors are described in the module docstring; treat them as read-only
    (every method returns a new graph, keeping the description).
    """

    spec: ClassVar[Analysis] = CIRCUIT

    def __init__(self, cfg: GraphConfig,
                 scores: Float[torch.Tensor, "n_senders n_receivers"] | None = None,
                 in_graph: Bool[torch.Tensor, "n_senders n_receivers"] | None = None,
                 node_scores: Float[torch.Tensor, " n_nodes"] | None = None,
                 node_in_graph: Bool[torch.Tensor, " n_nodes"] | None = None):
        """A graph of shape `cfg`. Omitted tensors default to: no scores (NaN), no edges in the
        circuit, node flags derived from the circuit's edges. Every tensor is checked against
        the shape (see `with_scores`, `with_circuit`)."""
        if not isinstance(cfg, GraphConfig):
            raise TypeError(f"cfg must be a GraphConfig, got {type(cfg).__name__}; use Graph.for_model(...)")
        self.cfg = cfg
        self._layout = _layout(cfg.n_layers, cfg.n_heads, cfg.parallel_attn_mlp)
        shape = (self.n_senders, self.n_receivers)
        self.scores = (torch.full(shape, math.nan, dtype=torch.float64) if scores is None
                       else self._checked_scores(scores))
        self.in_graph = (torch.zeros(shape, dtype=torch.bool) if in_graph is None
                         else self._checked_mask(in_graph, "in_graph"))
        self.node_scores = (torch.full((self.n_nodes,), math.nan, dtype=torch.float64) if node_scores is None
                            else self._checked_node_scores(node_scores))
        if node_in_graph is None:
            self.node_in_graph = self._incident_nodes(self.in_graph)
        else:
            self.node_in_graph = self._checked_node_flags(node_in_graph)
        self.task_name: str | None = None
        self.method: str | None = None
        self.run_parameters: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def for_model(cls, model_or_n_layers: "int | HookedModel | ModelConfig | GraphConfig", n_heads: int | None = None,
                  parallel_attn_mlp: bool = False, d_model: int | None = None,
                  model_name: str | None = None) -> "Graph":
        """An empty graph (no scores, no circuit) of a model's shape.

        Either `Graph.for_model(n_layers, n_heads, parallel_attn_mlp=False, d_model=None,
        model_name=None)` or `Graph.for_model(model)` with a `HookedModel` (or its `cfg`):
        `n_layers`, `n_heads`, `parallel`, `d_model` and `name` are read from it.
        """
        if n_heads is not None:
            return cls(GraphConfig(model_or_n_layers, n_heads, parallel_attn_mlp, d_model, model_name))
        if isinstance(model_or_n_layers, (int, float)):
            raise TypeError("Graph.for_model(n_layers, n_heads, ...) needs n_heads")
        if parallel_attn_mlp or d_model is not None:
            raise TypeError("give either a model (or its cfg) or n_layers, n_heads, ...; not both")
        cfg = graph_config(model_or_n_layers)
        if model_name is not None:
            cfg = GraphConfig(cfg.n_layers, cfg.n_heads, cfg.parallel_attn_mlp, cfg.d_model, model_name)
        return cls(cfg)

    def with_scores(self, scores: Float[torch.Tensor, "n_senders n_receivers"] | None = None,
                    node_scores: Float[torch.Tensor, " n_nodes"] | None = None) -> "Graph":
        """A copy with new edge scores `[n_senders, n_receivers]` and/or node scores `[n_nodes]`
        (whichever is given; the circuit is kept). Edge scores must follow this graph's
        sender/receiver order: finite or NaN (unscored) on edges, 0 or NaN where no edge
        exists (stored as NaN); a non-zero score on a non-edge means a different layout and
        is refused. Node scores are finite or NaN."""
        graph = Graph(self.cfg, self.scores if scores is None else scores, self.in_graph,
                      self.node_scores if node_scores is None else node_scores, self.node_in_graph)
        return graph._described_as(self)

    def with_circuit(self, edges: Bool[torch.Tensor, "n_senders n_receivers"] | Iterable[str]) -> "Graph":
        """A copy whose circuit is `edges`: a bool mask `[n_senders, n_receivers]` (only on
        existing edges) or edge names. Nodes are in the graph when an in-graph edge touches
        them (and `logits`, always). Not pruned; see `prune`."""
        if isinstance(edges, torch.Tensor):
            mask = self._checked_mask(edges, "the circuit mask")
        else:
            if isinstance(edges, str):
                raise TypeError("with_circuit takes a mask or a list of edge names, not one string")
            mask = torch.zeros_like(self.in_graph)
            for name in edges:
                mask[self.edge_index(name)] = True
        return Graph(self.cfg, self.scores, mask, self.node_scores)._described_as(self)

    def described(self, task: str | None = None, method: str | None = None,
                  parameters: dict[str, Any] | None = None) -> "Graph":
        """A copy that says how it was found, for its bundle: the task's name, the method (e.g.
        "eap-ig") and other parameters (JSON values; "graph" and "method" are taken)."""
        extra = dict(parameters or {})
        taken = [key for key in ("graph", "method") if key in extra]
        if taken:
            raise ValueError(f"parameters {taken} are written by the graph itself (its shape and method); "
                             "use other keys")
        graph = self._derived(self.in_graph, self.node_in_graph)
        graph.task_name, graph.method, graph.run_parameters = task, method, extra
        return graph

    def _described_as(self, other: "Graph") -> "Graph":
        self.task_name, self.method, self.run_parameters = other.task_name, other.method, dict(other.run_parameters)
        return self

    # ------------------------------------------------------------------ shape and names

    @property
    def n_senders(self) -> int:
        return len(self._layout.nodes) - 1

    @property
    def n_receivers(self) -> int:
        return len(self._layout.receivers)

    @property
    def n_nodes(self) -> int:
        return len(self._layout.nodes)

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node names: senders in order, then `logits`."""
        return self._layout.nodes

    @property
    def senders(self) -> tuple[str, ...]:
        return self._layout.nodes[:-1]

    @property
    def receivers(self) -> tuple[str, ...]:
        """Receiver names: per layer `a{l}.h{h}<q>` for every head, then `<k>`, `<v>`, then
        `m{l}`; last `logits`."""
        return self._layout.receivers

    @property
    def exists(self) -> Bool[torch.Tensor, "n_senders n_receivers"]:
        """Which (sender, receiver) pairs are edges; a copy."""
        return self._layout.exists.clone()

    @property
    def n_upstream(self) -> torch.Tensor:
        """`[n_receivers]` long: receiver r reads senders `0 .. n_upstream[r] - 1`; a copy."""
        return self._layout.n_upstream.clone()

    @property
    def receiver_node(self) -> torch.Tensor:
        """`[n_receivers]` long: the node index each receiver belongs to; a copy."""
        return self._layout.receiver_node.clone()

    @property
    def receiver_qkv(self) -> tuple[str | None, ...]:
        """'q', 'k' or 'v' for a head's receivers, None for MLPs and logits."""
        return self._layout.receiver_qkv

    @property
    def node_layer(self) -> torch.Tensor:
        """`[n_nodes]` long: layer of each node; -1 for input, n_layers for logits; a copy."""
        return self._layout.node_layer.clone()

    @property
    def n_edges(self) -> int:
        """Edges of the model's graph (GPT-2 small: 32,491)."""
        return len(self._layout.eap_order[0])

    @property
    def n_circuit_edges(self) -> int:
        """Edges in the circuit."""
        return int(self.in_graph.sum())

    @property
    def n_circuit_nodes(self) -> int:
        """Nodes in the circuit, `logits` not counted (EAP-IG's `count_included_nodes`)."""
        return int(self.node_in_graph[:-1].sum())

    def node_index(self, name: str) -> int:
        """Index of node `name` (`input`, `a{l}.h{h}`, `m{l}`, `logits`)."""
        try:
            return self._layout.node_index[name]
        except (KeyError, TypeError):
            raise KeyError(f"unknown node {name!r}; nodes are 'input', 'a{{layer}}.h{{head}}', 'm{{layer}}' and "
                           f"'logits' with layer in 0..{self.cfg.n_layers - 1}, head in 0..{self.cfg.n_heads - 1}"
                           ) from None

    def receiver_index(self, name: str) -> int:
        """Index of receiver `name` (`a{l}.h{h}<q>`, `<k>`, `<v>`, `m{l}`, `logits`)."""
        try:
            return self._layout.receiver_index[name]
        except (KeyError, TypeError):
            raise KeyError(f"unknown receiver {name!r}; receivers are 'a{{layer}}.h{{head}}<q>' (or <k>, <v>), "
                           f"'m{{layer}}' and 'logits' with layer in 0..{self.cfg.n_layers - 1}, head in "
                           f"0..{self.cfg.n_heads - 1}") from None

    def edge_index(self, name: str) -> tuple[int, int]:
        """(sender, receiver) of edge `name`, such as `input->a0.h0<q>` or `a0.h1->m0`."""
        if not isinstance(name, str) or name.count("->") != 1:
            raise KeyError(f"edge names are 'parent->child', such as 'input->a0.h0<q>' or 'a0.h0->m0'; got {name!r}")
        parent, child = name.split("->")
        if parent == "logits":
            raise KeyError(f"edge {name!r}: logits has no outgoing edges")
        sender, receiver = self.node_index(parent), self.receiver_index(child)
        if not self._layout.exists[sender, receiver]:
            raise KeyError(f"{name!r} is not an edge: {parent} is not upstream of {child} "
                           f"({'parallel attention and MLP' if self.cfg.parallel_attn_mlp else 'sequential blocks'})")
        return sender, receiver

    def edge_name(self, sender: int, receiver: int) -> str:
        """Name of the edge from sender index `sender` to receiver index `receiver`."""
        _check_int(sender, "sender", 0)
        _check_int(receiver, "receiver", 0)
        if sender >= self.n_senders or receiver >= self.n_receivers:
            raise IndexError(f"(sender, receiver) must be below ({self.n_senders}, {self.n_receivers}); "
                             f"got ({sender}, {receiver})")
        if not self._layout.exists[sender, receiver]:
            raise KeyError(f"no edge from {self.nodes[sender]} to {self.receivers[receiver]}")
        return f"{self.nodes[sender]}->{self.receivers[receiver]}"

    # ------------------------------------------------------------------ selection

    def top_n(self, n: int, absolute: bool = True, prune: bool = True, empty_ok: bool = False) -> "Graph":
        """The circuit of the `n` best-scoring edges (by |score|, or signed score with
        `absolute=False`), then pruned (see `prune`) unless `prune=False`."""
        key = self._selection_key(absolute)
        n = self._check_n(n)
        flat = self._layout.edge_flat
        values = key.reshape(-1)[flat]
        chosen = torch.zeros(len(flat), dtype=torch.bool)
        if n == len(flat):
            chosen[:] = True
        elif n > 0:
            # the n-th largest value; everything above it, then ties in edge order up to n
            kth = -torch.kthvalue(-values, n).values
            chosen = values > kth
            tied = (values == kth).nonzero().squeeze(1)
            chosen[tied[:n - int(chosen.sum())]] = True
        mask = torch.zeros(self.n_senders * self.n_receivers, dtype=torch.bool)
        mask[flat[chosen]] = True
        return self._selected(mask.view_as(self.in_graph), prune, empty_ok)

    def threshold(self, tau: float, absolute: bool = True, prune: bool = True, empty_ok: bool = False) -> "Graph":
        """The circuit of the edges whose score (|score| with `absolute`) is at least `tau`,
        then pruned unless `prune=False`. With `absolute`, `tau` must be >= 0."""
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau):
            raise ValueError(f"tau must be a finite number, got {tau!r}")
        if absolute and tau < 0:
            raise ValueError(f"tau must be >= 0 when thresholding |score| (absolute=True); got {tau}")
        key = self._selection_key(absolute)
        return self._selected(self._layout.exists & (key >= tau), prune, empty_ok)

    def greedy(self, n: int, absolute: bool = True, prune: bool = True, empty_ok: bool = False) -> "Graph":
        """MIB / EAP-IG's greedy circuit of `n` edges: start from `logits`; repeatedly add the
        best-scoring edge whose child is already in the circuit (its parent joins the circuit,
        making the parent's incoming edges candidates). Then pruned unless `prune=False`: an
        edge whose parent never connects to `input` does not count."""
        key = self._selection_key(absolute)
        n = self._check_n(n)
        upstream, owner = self._layout.n_upstream.tolist(), self._layout.receiver_node.tolist()
        inputs_of: list[list[int]] = [[] for _ in range(self.n_nodes)]
        for r, node in enumerate(owner):
            inputs_of[node].append(r)
        key_t = key.t().contiguous()  # rows are receivers: one slice per receiver
        heap: list[tuple[float, int, int]] = []

        def push_inputs(node: int) -> None:
            for r in inputs_of[node]:
                for s, value in enumerate(key_t[r, :upstream[r]].tolist()):
                    heapq.heappush(heap, (-value, s, r))

        mask = torch.zeros_like(self.in_graph)
        added = [False] * self.n_nodes
        added[-1] = True
        push_inputs(self.n_nodes - 1)
        for _ in range(n):
            _, s, r = heapq.heappop(heap)
            mask[s, r] = True
            if not added[s]:
                added[s] = True
                push_inputs(s)
        return self._selected(mask, prune, empty_ok)

    def prune(self, empty_ok: bool = False) -> "Graph":
        """A copy keeping only the circuit edges and nodes on a path from `input` to `logits`
        through circuit edges. Node flags become: on such a path (`logits` always); as in
        EAP-IG, the node flags this graph had play no part.

        A circuit that had edges but keeps none raises ValueError naming what is
        disconnected, unless `empty_ok` (then the empty circuit is returned, as MIB measures
        it)."""
        edges = self.in_graph
        from_input, to_logits = self._reachability(edges)
        kept = edges & from_input[:-1, None] & to_logits[self._layout.receiver_node][None, :]
        nodes = from_input & to_logits
        nodes[0] = bool(kept[0].any())
        nodes[-1] = True
        if not kept.any() and self.in_graph.any() and not empty_ok:
            raise ValueError(self._disconnected_message(edges, from_input, to_logits))
        return self._derived(kept, nodes)

    def _selected(self, mask: torch.Tensor, prune: bool, empty_ok: bool) -> "Graph":
        graph = self._derived(mask, self._incident_nodes(mask))
        return graph.prune(empty_ok) if prune else graph

    def _derived(self, in_graph: torch.Tensor, node_in_graph: torch.Tensor) -> "Graph":
        """A graph with this one's (already checked) scores and a circuit computed here,
        skipping the checks; the score tensors are shared, not copied."""
        graph = Graph.__new__(Graph)
        graph.cfg, graph._layout = self.cfg, self._layout
        graph.scores, graph.node_scores = self.scores, self.node_scores
        graph.in_graph, graph.node_in_graph = in_graph, node_in_graph
        return graph._described_as(self)

    def _selection_key(self, absolute: bool) -> torch.Tensor:
        """Scores to rank by (|score| with `absolute`), -inf where no edge; NaN scores on
        edges are refused."""
        if not isinstance(absolute, bool):
            raise TypeError(f"absolute must be True or False, got {absolute!r}")
        exists = self._layout.exists
        unscored = exists & self.scores.isnan()
        if unscored.any():
            s, r = unscored.nonzero()[0].tolist()
            raise ValueError(f"{int(unscored.sum())} of {self.n_edges} edges have no score (NaN), e.g. "
                             f"{self.edge_name(s, r)}; selection needs a score on every edge (with_scores)")
        key = self.scores.abs() if absolute else self.scores.clone()
        key[~exists] = -math.inf
        return key

    def _check_n(self, n: int) -> int:
        _check_int(n, "n", 0)
        if n > self.n_edges:
            raise ValueError(f"n = {n} is more than the {self.n_edges} edges of this graph")
        return n

    def _reachability(self, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[n_nodes]` bool each: reached from `input`, and reaching `logits`, through `edges`.
        Senders are processed in their (topological) order, one layer's heads at a time."""
        L, H = self.cfg.n_layers, self.cfg.n_heads
        owner = self._layout.receiver_node
        from_input = torch.zeros(self.n_nodes, dtype=torch.bool)
        from_input[0] = True
        for l in range(L):
            first, base = 1 + l * (H + 1), l * (3 * H + 1)
            heads = (from_input[:-1, None] & edges[:, base:base + 3 * H]).any(0)
            from_input[first:first + H] = heads.view(3, H).any(0)
            from_input[first + H] = (from_input[:-1] & edges[:, base + 3 * H]).any()
        from_input[-1] = (from_input[:-1] & edges[:, -1]).any()

        to_logits = torch.zeros(self.n_nodes, dtype=torch.bool)
        to_logits[-1] = True
        for l in reversed(range(L)):
            first = 1 + l * (H + 1)
            for group in (slice(first + H, first + H + 1), slice(first, first + H)):  # the MLP, then the heads
                to_logits[group] = (edges[group] & to_logits[owner][None, :]).any(1)
        to_logits[0] = (edges[0] & to_logits[owner]).any()
        return from_input, to_logits

    def _disconnected_message(self, edges, from_input, to_logits) -> str:
        n = int(self.in_graph.sum())
        parts = [f"no path from input to logits through the circuit's {n} edges, so pruning leaves nothing"]
        if not edges[0].any():
            parts.append("input has no circuit edge")
        if not edges[:, -1].any():
            parts.append("logits has no circuit edge")
        touched = self._incident_nodes(edges)
        names = self._layout.nodes
        reached = [names[i] for i in range(1, self.n_nodes - 1) if touched[i] and from_input[i]]
        reaching = [names[i] for i in range(1, self.n_nodes - 1) if touched[i] and to_logits[i]]
        parts.append(f"nodes reached from input: {_names(reached)}")
        parts.append(f"nodes that reach logits: {_names(reaching)}")
        return "; ".join(parts)

    def _incident_nodes(self, edges: torch.Tensor) -> torch.Tensor:
        """`[n_nodes]` bool: nodes touched by an edge of `edges`, and logits."""
        incoming = torch.zeros(self.n_nodes, dtype=torch.long).index_add_(
            0, self._layout.receiver_node, edges.any(0).long())
        nodes = incoming > 0
        nodes[:-1] |= edges.any(1)
        nodes[-1] = True
        return nodes

    # ------------------------------------------------------------------ checks

    def _checked_scores(self, scores: Any) -> torch.Tensor:
        scores = self._checked_tensor(scores, "scores", (self.n_senders, self.n_receivers), floating=True)
        exists = self._layout.exists
        if scores[exists].isinf().any():
            s, r = (exists & scores.isinf()).nonzero()[0].tolist()
            raise ValueError(f"scores must be finite or NaN (unscored) on edges; {self.edge_name(s, r)} is "
                             f"{scores[s, r].item()}")
        stray = ~exists & ~scores.isnan() & (scores != 0)
        if stray.any():
            s, r = stray.nonzero()[0].tolist()
            raise ValueError(f"scores[{s}, {r}] = {scores[s, r].item():g} but {self.nodes[s]} does not feed "
                             f"{self.receivers[r]} (no such edge); {int(stray.sum())} such entries. Scores must "
                             "follow Graph.senders x Graph.receivers, with 0 or NaN where no edge exists")
        scores = scores.to(torch.float64, copy=True)
        scores[~exists] = math.nan
        return scores

    def _checked_mask(self, mask: Any, what: str) -> torch.Tensor:
        mask = self._checked_tensor(mask, what, (self.n_senders, self.n_receivers), boolean=True)
        outside = mask & ~self._layout.exists
        if outside.any():
            s, r = outside.nonzero()[0].tolist()
            raise ValueError(f"{what} marks {int(outside.sum())} pairs that are not edges, e.g. "
                             f"{self.nodes[s]} -> {self.receivers[r]}")
        return mask.clone()

    def _checked_node_scores(self, scores: Any) -> torch.Tensor:
        scores = self._checked_tensor(scores, "node_scores", (self.n_nodes,), floating=True)
        if scores.isinf().any():
            i = int(scores.isinf().nonzero()[0])
            raise ValueError(f"node scores must be finite or NaN (unset); {self.nodes[i]} is {scores[i].item()}")
        return scores.to(torch.float64, copy=True)

    def _checked_node_flags(self, flags: Any) -> torch.Tensor:
        flags = self._checked_tensor(flags, "node_in_graph", (self.n_nodes,), boolean=True)
        if not flags[-1]:
            raise ValueError("node_in_graph must mark logits as in the graph (it always is, as in EAP-IG)")
        return flags.clone()

    @staticmethod
    def _checked_tensor(value: Any, what: str, shape: tuple[int, ...], floating: bool = False,
                        boolean: bool = False) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor of shape {list(shape)}, got {type(value).__name__}")
        if tuple(value.shape) != shape:
            raise ValueError(f"{what} must have shape {list(shape)} (this graph's senders x receivers or nodes), "
                             f"got {list(value.shape)}")
        if floating and not value.dtype.is_floating_point:
            raise TypeError(f"{what} must be a floating-point tensor, got {value.dtype}")
        if boolean and value.dtype != torch.bool:
            raise TypeError(f"{what} must be a bool tensor, got {value.dtype}")
        return value.detach().cpu()

    # ------------------------------------------------------------------ tables and figure

    def to_frame(self) -> pd.DataFrame:
        """One row per edge, in EAP-IG's edge order: `edge parent child qkv parent_layer
        child_layer sender receiver score in_graph` (qkv is 'q', 'k', 'v', or missing for
        MLPs and logits; layer -1 is input, n_layers is logits)."""
        return self._edges_frame(*self._layout.eap_order, self._layout.edge_names)

    def _edges_frame(self, s: torch.Tensor, r: torch.Tensor, edge_names: list[str] | None = None) -> pd.DataFrame:
        names, layer = self._layout.nodes, self._layout.node_layer
        owner = self._layout.receiver_node[r]
        if edge_names is None:
            edge_names = [f"{names[i]}->{self._layout.receivers[j]}" for i, j in zip(s.tolist(), r.tolist())]
        return pd.DataFrame({
            "edge": edge_names,
            "parent": [names[i] for i in s.tolist()],
            "child": [names[i] for i in owner.tolist()],
            "qkv": [self._layout.receiver_qkv[j] for j in r.tolist()],
            "parent_layer": layer[s].numpy(),
            "child_layer": layer[owner].numpy(),
            "sender": s.numpy(),
            "receiver": r.numpy(),
            "score": self.scores[s, r].numpy(),
            "in_graph": self.in_graph[s, r].numpy(),
        })

    def nodes_frame(self) -> pd.DataFrame:
        """One row per node: `node kind layer head score in_graph` (kind input/head/mlp/logits;
        head -1 for non-heads)."""
        kind = ["input"] + ["head" if n.startswith("a") else "mlp" for n in self.nodes[1:-1]] + ["logits"]
        return pd.DataFrame({"node": list(self.nodes), "kind": kind, "layer": self._layout.node_layer.numpy(),
                             "head": self._layout.node_head.numpy(), "score": self.node_scores.numpy(),
                             "in_graph": self.node_in_graph.numpy()})

    # ------------------------------------------------------------------ the Result protocol

    def meta(self) -> Meta:
        """Model, task, parameters (the graph's shape under "graph", the method, and what
        `described` added)."""
        return Meta(model=self.cfg.model_name or "", task=self.task_name,
                    parameters={"graph": self.cfg.shape(), "method": self.method, **self.run_parameters})

    def tables(self) -> dict[str, pd.DataFrame]:
        """`edges` (`to_frame`) and `nodes` (`nodes_frame`)."""
        return {"edges": self.to_frame(), "nodes": self.nodes_frame()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"scores": self.scores, "in_graph": self.in_graph, "node_scores": self.node_scores,
                "node_in_graph": self.node_in_graph}

    @classmethod
    def from_bundle(cls, path: str | os.PathLike) -> "Graph":
        """The graph stored in a bundle written by `Graph.save` or `CircuitEvaluation.save`."""
        from interp.results import read_bundle

        bundle = read_bundle(path)
        if bundle.meta.get("analysis") not in GRAPH_ANALYSES:
            raise ValueError(f"{path} is a {bundle.meta.get('analysis')!r} bundle, not a circuit graph "
                             f"(analysis one of {GRAPH_ANALYSES})")
        shape = (bundle.meta.get("parameters") or {}).get("graph")
        if not isinstance(shape, dict) or set(shape) != {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"}:
            raise ValueError(f"{path}: meta parameters['graph'] must hold n_layers, n_heads, parallel_attn_mlp, "
                             f"d_model; got {shape!r}")
        missing = [t for t in ("scores", "in_graph", "node_scores", "node_in_graph") if t not in bundle.tensor_names]
        if missing:
            raise ValueError(f"{path}: the bundle lacks the graph tensors {missing}")
        cfg = GraphConfig(**shape, model_name=bundle.meta["model"])
        graph = cls(cfg, bundle.tensor("scores"), bundle.tensor("in_graph"), bundle.tensor("node_scores"),
                    bundle.tensor("node_in_graph"))
        parameters = {k: v for k, v in bundle.meta["parameters"].items() if k not in ("graph", "method")}
        return graph.described(bundle.meta.get("task"), bundle.meta["parameters"].get("method"), parameters)

    # ------------------------------------------------------------------ EAP-IG / MIB JSON

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the graph in EAP-IG's `Graph.to_json` format (MIB's submission format),
        atomically: `cfg` {n_layers, n_heads, parallel_attn_mlp, d_model}; `nodes` {name:
        {in_graph, score (only where set)}}; `edges` {name: {score, in_graph}}, in EAP-IG's
        order. Every edge needs a finite score (EAP-IG's graphs always carry one) and the
        config a d_model."""
        if self.cfg.d_model is None:
            raise ValueError("EAP-IG's JSON records d_model; build the graph with d_model=... (or from a model)")
        s, r = self._layout.eap_order
        scores = self.scores[s, r]
        if scores.isnan().any():
            i = int(scores.isnan().nonzero()[0])
            raise ValueError(f"{int(scores.isnan().sum())} edges have no score, e.g. "
                             f"{self.edge_name(int(s[i]), int(r[i]))}; EAP-IG's JSON needs a score on every edge "
                             "(give one with with_scores, e.g. 1.0 on circuit edges and 0.0 elsewhere)")
        nodes = {}
        for name, flag, score in zip(self.nodes, self.node_in_graph.tolist(), self.node_scores.tolist()):
            nodes[name] = {"in_graph": flag} if math.isnan(score) else {"in_graph": flag, "score": score}
        edges = {name: {"score": value, "in_graph": flag}
                 for name, value, flag in zip(self._layout.edge_names, scores.tolist(), self.in_graph[s, r].tolist())}
        text = json.dumps({"cfg": self.cfg.shape(), "nodes": nodes, "edges": edges}, allow_nan=False)
        path = Path(path)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike, expected: Any = None, model_name: str | None = None) -> "Graph":
        """Read a graph written by EAP-IG's `Graph.to_json` (or `to_json` here).

        `expected` (a model, its cfg, a GraphConfig or a Graph) is the shape the file must
        have; n_layers, n_heads, parallel_attn_mlp and (when both say) d_model must agree.
        Every node and every edge of that shape must appear exactly once, with a bool
        `in_graph`, a finite `score` on edges (and optionally on nodes), no other fields.
        Anything else raises GraphFormatError naming the problem. Extra keys in `cfg` (EAP-IG
        keeps whatever its config held) are ignored."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise GraphFormatError(f"{path} is not a UTF-8 text file ({error}); expected EAP-IG's JSON") from None
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
        except json.JSONDecodeError as error:
            raise GraphFormatError(f"{path} is not valid JSON ({error}); truncated or not a graph file?") from None
        except _DuplicateKey as error:
            raise GraphFormatError(f"{path}: key {error.args[0]!r} appears twice in one JSON object") from None
        except _NonFinite as error:
            raise GraphFormatError(f"{path}: non-finite number {error.args[0]} (scores must be finite)") from None
        if not isinstance(data, dict):
            raise GraphFormatError(f"{path}: expected a JSON object with cfg, nodes, edges; got {type(data).__name__}")
        missing = [k for k in ("cfg", "nodes", "edges") if k not in data]
        if missing or set(data) - {"cfg", "nodes", "edges"}:
            raise GraphFormatError(f"{path}: expected exactly the keys cfg, nodes, edges; missing {missing}, "
                                   f"unexpected {sorted(set(data) - {'cfg', 'nodes', 'edges'})}")
        cfg = _read_cfg(path, data["cfg"], model_name)
        if expected is not None:
            want = graph_config(expected)
            for field in ("n_layers", "n_heads", "parallel_attn_mlp", "d_model"):
                ours, theirs = getattr(cfg, field), getattr(want, field)
                if ours != theirs and not (field == "d_model" and theirs is None):
                    raise GraphFormatError(f"{path} is a graph of another model shape: {field} = {ours!r} in the "
                                           f"file, expected {theirs!r} ({want.model_name or 'expected shape'})")
            if model_name is None and want.model_name is not None:
                cfg = GraphConfig(cfg.n_layers, cfg.n_heads, cfg.parallel_attn_mlp, cfg.d_model, want.model_name)
        graph = cls(cfg)
        node_flags, node_scores = _read_nodes(path, graph, data["nodes"])
        scores, in_graph = _read_edges(path, graph, data["edges"])
        return cls(cfg, scores, in_graph, node_scores, node_flags)

    def __repr__(self) -> str:
        return (f"Graph({self.cfg.model_name or 'model'}: {self.cfg.n_layers} layers x {self.cfg.n_heads} heads"
                f"{', parallel' if self.cfg.parallel_attn_mlp else ''}; {self.n_edges} edges, "
                f"{self.n_circuit_edges} in the circuit)")


class _DuplicateKey(Exception):
    pass


class _NonFinite(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constants(name: str) -> None:
    raise _NonFinite(name)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_cfg(path: Path, cfg: Any, model_name: str | None) -> GraphConfig:
    if not isinstance(cfg, dict):
        raise GraphFormatError(f"{path}: cfg must be an object, got {type(cfg).__name__}")
    missing = [k for k in ("n_layers", "n_heads", "parallel_attn_mlp", "d_model") if k not in cfg]
    if missing:
        raise GraphFormatError(f"{path}: cfg lacks {missing} (EAP-IG writes n_layers, n_heads, parallel_attn_mlp, "
                               "d_model)")
    try:
        return GraphConfig(cfg["n_layers"], cfg["n_heads"], cfg["parallel_attn_mlp"], cfg["d_model"], model_name)
    except (TypeError, ValueError) as error:
        raise GraphFormatError(f"{path}: bad cfg: {error}") from None


def _read_nodes(path: Path, graph: Graph, nodes: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(nodes, dict):
        raise GraphFormatError(f"{path}: nodes must be an object of name -> {{in_graph, score?}}")
    unknown = [n for n in nodes if n not in graph._layout.node_index]
    if unknown:
        raise GraphFormatError(f"{path}: unknown nodes {_names(unknown)} for a graph of {graph.cfg.n_layers} layers "
                               f"x {graph.cfg.n_heads} heads")
    absent = [n for n in graph.nodes if n not in nodes]
    if absent:
        raise GraphFormatError(f"{path}: nodes missing from the file: {_names(absent)}")
    flags = torch.zeros(graph.n_nodes, dtype=torch.bool)
    scores = torch.full((graph.n_nodes,), math.nan, dtype=torch.float64)
    for i, name in enumerate(graph.nodes):
        entry = nodes[name]
        if not isinstance(entry, dict) or "in_graph" not in entry:
            raise GraphFormatError(f"{path}: node {name!r} must be an object with in_graph; got {entry!r}")
        extra = set(entry) - {"in_graph", "score"}
        if extra & {"neurons", "neurons_scores"}:
            raise GraphFormatError(f"{path}: node {name!r} has neuron-level fields; neuron circuits are not supported")
        if extra:
            raise GraphFormatError(f"{path}: node {name!r} has unexpected fields {sorted(extra)}")
        if not isinstance(entry["in_graph"], bool):
            raise GraphFormatError(f"{path}: node {name!r}: in_graph must be true or false, got {entry['in_graph']!r}")
        flags[i] = entry["in_graph"]
        if "score" in entry:
            if not _is_number(entry["score"]) or not math.isfinite(entry["score"]):
                raise GraphFormatError(f"{path}: node {name!r}: score must be a finite number, got {entry['score']!r}")
            scores[i] = entry["score"]
    if not flags[-1]:
        raise GraphFormatError(f"{path}: logits has in_graph false; EAP-IG's logits node is always in the graph")
    return flags, scores


def _read_edges(path: Path, graph: Graph, edges: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(edges, dict):
        raise GraphFormatError(f"{path}: edges must be an object of name -> {{score, in_graph}}")
    position = graph._layout.edge_position
    seen = torch.zeros(graph.n_edges, dtype=torch.bool)
    where, values, flags, unknown = [], [], [], []
    for name, entry in edges.items():
        i = position.get(name)
        if i is None:
            unknown.append(name)
            continue
        if not isinstance(entry, dict) or set(entry) != {"score", "in_graph"}:
            raise GraphFormatError(f"{path}: edge {name!r} must be an object with exactly score and in_graph; "
                                   f"got {entry!r}")
        score, flag = entry["score"], entry["in_graph"]
        if not _is_number(score) or not math.isfinite(score):
            raise GraphFormatError(f"{path}: edge {name!r}: score must be a finite number, got {score!r}")
        if not isinstance(flag, bool):
            raise GraphFormatError(f"{path}: edge {name!r}: in_graph must be true or false, got {flag!r}")
        where.append(i)
        values.append(score)
        flags.append(flag)
    if unknown:
        try:
            graph.edge_index(unknown[0])
            why = ""
        except KeyError as error:
            why = f" ({error.args[0]})"
        raise GraphFormatError(f"{path}: {len(unknown)} unknown edges for a graph of {graph.cfg.n_layers} layers x "
                               f"{graph.cfg.n_heads} heads (parallel_attn_mlp={graph.cfg.parallel_attn_mlp}): "
                               f"{_names(unknown)}{why}")
    seen[where] = True
    if not seen.all():
        absent = [graph._layout.edge_names[i] for i in (~seen).nonzero().squeeze(1)[:8].tolist()]
        raise GraphFormatError(f"{path}: {int((~seen).sum())} of {graph.n_edges} edges are missing from the file, "
                               f"e.g. {_names(absent)}")
    s, r = graph._layout.eap_order
    index = torch.tensor(where, dtype=torch.long)
    scores = torch.full((graph.n_senders, graph.n_receivers), math.nan, dtype=torch.float64)
    in_graph = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.bool)
    scores[s[index], r[index]] = torch.tensor(values, dtype=torch.float64)
    in_graph[s[index], r[index]] = torch.tensor(flags, dtype=torch.bool)
    return scores, in_graph


__all__ = ["GRAPH_ANALYSES", "Graph", "GraphConfig", "GraphFormatError", "QKV", "graph_config"]
