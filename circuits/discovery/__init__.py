"""Circuit discovery: each method scores the edges of a model's graph for a task and returns
one `circuits.graph.Graph`.

    graph = find_circuit(model, task, "eap-ig", steps=5)
    circuit = graph.top_n(200)                     # or .threshold(t), .greedy(n)
    evaluation = evaluate(model, task, graph)      # faithfulness at MIB's edge fractions, CPR, CMD

Methods (docs/methods.md §5): "exact" (each edge patched alone, the ground truth the others
approximate), "eap", "eap-ig" (inputs variant; "eap-ig-activations" for the other), "acdc"
(also selects its circuit), "routes" (information-flow routes, no counterfactual), "sad"
(sparse attention decomposition of QK forms; scores only q, k and logits edges).

One sign convention, MIB's (EAP-IG attributes a loss, the negated metric): a positive score
means the edge carries the behaviour. "exact", "eap" and the "eap-ig" variants score minus the
change of the task metric when the edge is corrupted (`interp.patching.edges` returns the
change itself); "acdc" scores the increase of its loss when the edge is removed; "routes" and
"sad" give non-negative importances. So a signed ranking (MIB's CPR) puts the edges that
support the behaviour first, and edges that work against it last; |score| (MIB's CMD) ranks
both kinds.
"""

from __future__ import annotations

from interp.models import HookedModel
from interp.patching import Task
from interp.patching.edges import CircuitRunner, eap, eap_ig, edge_patch

from ..evaluation import CircuitEvaluation, MIB_FRACTIONS, evaluate_circuit
from ..graph import Graph
from ..specs import METHODS, CircuitConfig
from .acdc import acdc
from .routes import routes_scores, token_routes
from .sad import sad_scores


def find_circuit(model: HookedModel, task: Task, method: str, *, steps: int = CircuitConfig.steps,
                 threshold: float = CircuitConfig.threshold, loss: str = "kl", ablation: str = "patching",
                 memory_budget: int | None = None, progress: bool = True, **options) -> Graph:
    """Score every edge of `model`'s graph on `task` with `method` (see `METHODS`).

    steps: EAP-IG's interpolation steps. threshold, loss, ablation: ACDC's (its circuit is the
    returned graph's `in_graph`; other methods leave the circuit to a selection such as
    `graph.top_n`). `options` go to the method (e.g. `n_start` for "sad").
    Node scores are the sums of each node's outgoing edge scores (node-level attribution,
    for gradient methods exactly the attribution of the node's output).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    graph = Graph.for_model(model)
    in_graph = None
    if method == "exact":
        _, scores, _, _ = edge_patch(model, task, memory_budget=memory_budget, progress=progress)
    elif method == "eap":
        _, scores, _, _ = eap(model, task)
    elif method in ("eap-ig", "eap-ig-activations"):
        variant = "activations" if method.endswith("activations") else "inputs"
        _, scores, _, _ = eap_ig(model, task, steps=steps, variant=variant, progress=progress)
    elif method == "acdc":
        _, in_graph, scores = acdc(model, task, threshold, loss=loss, ablation=ablation,
                                   memory_budget=memory_budget, progress=progress, **options)
    elif method == "routes":
        _, scores = routes_scores(model, task)
    else:
        _, scores = sad_scores(model, task, **options)
    if method in ("exact", "eap", "eap-ig", "eap-ig-activations"):
        scores = -scores  # metric change -> loss change (module docstring)
    node_scores = _node_scores(graph, scores)
    graph = graph.with_scores(scores.nan_to_num(0.0) if method == "sad" else scores, node_scores=node_scores)
    graph = graph.described(task.name, method)
    return graph if in_graph is None else graph.with_circuit(in_graph)


def _node_scores(graph: Graph, scores):
    import torch

    out = torch.full((graph.n_nodes,), float("nan"), dtype=torch.float64)
    out[: graph.n_senders] = torch.nansum(scores.double(), dim=1)
    return out


def circuit_runner(model: HookedModel, task: Task, ablation: str = "patching",
                   memory_budget: int | None = None) -> CircuitRunner:
    """The runner whose `run_masks` evaluation functions call (cached clean and corrupted runs)."""
    return CircuitRunner(model, task, ablation, memory_budget)


def evaluate(model: HookedModel, task: Task, graph: Graph, *, ablation: str = CircuitConfig.ablation,
             fractions=MIB_FRACTIONS, selection: str = "top_n", method: str | None = None,
             runner: CircuitRunner | None = None, **options) -> CircuitEvaluation:
    """Faithfulness of `graph`'s top edges at MIB's fractions, CPR, CMD, with bootstrap
    intervals over the task's prompts (`circuits.evaluation.evaluate_circuit`), running the
    model with every edge outside each circuit ablated (`ablation`: "patching", "mean", "zero")."""
    expected = Graph.for_model(model).cfg.shape()
    if graph.cfg.shape() != expected:
        raise ValueError(f"the graph is for a model of shape {graph.cfg.shape()}; {model.cfg.name} has {expected}")
    runner = runner or circuit_runner(model, task, ablation)
    return evaluate_circuit(graph, runner.run_masks, fractions, selection=selection, task=task.name,
                            method=method, **options)


def run(model: HookedModel, config: CircuitConfig, task: Task, *, progress: bool = True) -> CircuitEvaluation:
    """The registered analysis "circuit": score every edge with `config.method`, keep the
    `top_n` edges (ACDC: its own circuit), evaluate the circuit's faithfulness, and, with
    `config.json`, write the scored graph as EAP-IG/MIB JSON too."""
    graph = find_circuit(model, task, config.method, steps=config.steps, threshold=config.threshold,
                         progress=progress)
    if config.method != "acdc":
        graph = graph.top_n(config.top_n, empty_ok=True)
    graph = graph.described(task.name, config.method,
                            {k: v for k, v in config.as_parameters().items() if k not in ("method", "seed")})
    evaluation = evaluate(model, task, graph, ablation=config.ablation, method=config.method,
                          n_resamples=config.n_resamples, seed=config.seed)
    if config.json is not None:
        graph.to_json(config.json)
    return evaluation


__all__ = ["METHODS", "acdc", "circuit_runner", "evaluate", "find_circuit", "routes_scores", "run", "sad_scores",
           "token_routes"]
