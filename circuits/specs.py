"""The registrations of the circuits package (torch-free): the analysis "circuit" and the
tasks of `circuits.tasks`. Entry points are resolved only when they run."""

from __future__ import annotations

from dataclasses import dataclass

from circuits import figures
from interp.results.config import Config, option
from interp.results.registry import (Analysis, Control, Demo, Figure, HeadMetric, Table, TaskBuilder, TaskUse,
                                     register, register_task)

METHODS = ("exact", "eap", "eap-ig", "eap-ig-activations", "acdc", "routes", "sad")
ABLATIONS = ("patching", "mean", "zero")
# name -> (builder, what it is); `circuits.tasks.TASKS` holds the same builders as functions.
TASK_BUILDERS = {
    "ioi": ("circuits.tasks.builders:ioi_task", "indirect-object identification, ABC-corrupted (zoo/ioi-small)"),
    "colored-objects": ("circuits.tasks.builders:colored_objects_task", "colour of the asked object"),
    "kept-object": ("circuits.tasks.builders:kept_object_task",
                    "the object not named again, ABC-corrupted: IOI's structure on objects (zoo/ioi-kept)"),
    "induction": ("circuits.tasks.builders:induction_task", "repeated random spans: predict the next repeat"),
    "constructed": ("circuits.tasks.constructed:constructed_task", "the task of zoo/constructed (known circuit)"),
}


@dataclass(frozen=True)
class CircuitConfig(Config):
    method: str = option("eap-ig", "how edges are scored (docs/methods.md §5)", choices=METHODS)
    steps: int = option(5, "EAP-IG's interpolation steps", ge=1)
    threshold: float = option(0.01, "ACDC's threshold on the change of its loss", ge=0)
    top_n: int = option(100, "edges kept in the saved circuit, by |score|, pruned to input->logits paths "
                             "(ACDC keeps its own circuit)", ge=1)
    ablation: str = option("patching", "how edges outside a circuit are removed when it is evaluated",
                           choices=ABLATIONS)
    n_resamples: int = option(1000, "bootstrap resamples of the prompts for the faithfulness intervals (0: none)",
                              ge=0)
    seed: int = option(0, "bootstrap seed", ge=0)
    json: str | None = option(None, "also write the scored graph as EAP-IG/MIB JSON (graph.to_json) to this file")


CIRCUIT = register(Analysis(
    name="circuit",
    summary="circuit discovery: every edge of the model's graph scored on a task, the top edges kept, and their "
            "faithfulness",
    how_to_read="The diagram runs from the input (left) to the logits (right); an edge's score is how much the "
                "task's behaviour drops when that edge is corrupted (MIB's sign), so blue (positive) edges carry the "
                "behaviour and red ones work against it, wider for larger |score|. The slider shows the n best edges instead of the saved "
                "circuit (not pruned to input-to-logits paths). The curve is the share of the full model's behaviour "
                "that a circuit of the top edges keeps (1 = all of it): CPR is its area (higher is better), CMD the "
                "area between it and 1 (0 is best).",
    run="circuits.discovery:run",
    config=CircuitConfig,
    tables=(Table("edges", ("edge", "parent", "child", "qkv", "parent_layer", "child_layer", "score", "in_graph"),
                  "one row per edge of the graph, in EAP-IG's order"),
            Table("nodes", ("node", "kind", "layer", "head", "score", "in_graph"), "one row per node"),
            Table("faithfulness", ("ranking", "fraction", "n_edges", "n_edges_kept", "faithfulness", "ci_low",
                                   "ci_high"), "faithfulness at MIB's edge fractions", optional=True),
            Table("summary", ("score", "value", "ci_low", "ci_high", "ranking"), "CPR and CMD", optional=True),
            Table("per_prompt", ("ranking", "fraction", "prompt", "metric", "faithfulness"), optional=True)),
    figures=(Figure("faithfulness", figures.draw_faithfulness, needs=("faithfulness",)),
             Figure("circuit", figures.draw_circuit, needs=("edges", "nodes"),
                    controls=(Control("top_n", "edges shown", figures.top_n_options, widget="slider"),))),
    head_metrics=(HeadMetric("nodes", "score", lambda meta, group: f"circuit node score "
                             f"({(meta.get('parameters') or {}).get('method')}, {meta.get('task')})",
                             "sum of the head's outgoing edge scores", "signed", select=figures.head_nodes,
                             how_to_read="The sum of the head's outgoing edge scores in the circuit search: "
                                         "positive, its output carries the behaviour; negative, it works against it; "
                                         "near 0, the circuit does not need it."),),
    task=TaskUse(required=True, default="ioi", pairs=True),
    requires="causal",
    demo=(Demo("circuit of IOI by EAP-IG, with its faithfulness curve",
               ("zoo/ioi-small", "--task", "ioi", "--n", "16", "--n-resamples", "200")),),
    aliases=("circuit-evaluation",),
    related=("patch", "heads", "pruning"),
))

for _name, (_build, _summary) in TASK_BUILDERS.items():
    register_task(TaskBuilder(_name, _build, _summary, pairs=True))
