"""The registration of activation patching (torch-free): its config, tables, figure, per-head
metric and head-page view. The entry point is `interp.patching.run:run`."""

from __future__ import annotations

from dataclasses import dataclass

from interp.patching import figures
from interp.patching.components import COMPONENTS
from interp.results.config import Config, option
from interp.results.registry import Analysis, Demo, Figure, HeadMetric, HeadView, Table, TaskUse, register

METHODS = ("exact", "atp", "atp*", "path")


@dataclass(frozen=True)
class PatchConfig(Config):
    component: str = option("z", "what to patch (exact, atp, atp*); path patching patches every head's path "
                                 "to the logits", choices=tuple(COMPONENTS))
    per_position: bool = option(False, "patch one position at a time")
    direction: str = option("denoise", "denoise: clean activations into the corrupted run; noise: the reverse",
                            choices=("denoise", "noise"))
    method: str = option("exact", "exact patching, attribution patching (AtP, AtP*), or path patching of each "
                                  "head's direct effect", choices=METHODS)
    normalize: bool = option(True, "report (m - m_corrupt) / (m_clean - m_corrupt): clean 1, corrupted 0")
    layers: tuple[int, ...] | None = option(None, "patch only these layers (exact; default all)", ge=0,
                                            min_items=1, index="layer")
    memory_budget: int | None = option(None, "bytes the batched patched runs may use (exact, path)", ge=1)


PATCH = register(Analysis(
    name="patch",
    summary="activation patching: the task metric after patching each component between the clean and "
            "corrupted runs",
    how_to_read="Each cell is one patch's effect on the task metric, its value minus the unpatched run's; "
                "normalised and denoising, 1 means the patch alone restores the clean behaviour. The components "
                "with large effects are those the task runs through; AtP estimates the same numbers from gradients.",
    run="interp.patching.run:run",
    config=PatchConfig,
    tables=(Table("values", ("value",), "one row per patch: a column per axis of the sweep (layer, head, pos, "
                                        "...), the metric after the patch, and the tokens of position axes"),),
    figures=(Figure("heatmap", figures.patch_heatmap, needs=("values",)),),
    head_metrics=(HeadMetric("values", "effect", figures.head_label, figures.effect_unit, "signed",
                             select=figures.head_effects,
                             how_to_read="The change in the task's metric when this head's activation is patched "
                                         "between the clean and corrupted runs (the unit says how it is normalised): "
                                         "far from 0, the behaviour runs through the head; near 0, it does not."),),
    head_views=(HeadView("Patching effect per position", figures.effects_per_position, needs=("values",)),),
    task=TaskUse(required=True, default="ioi", pairs=True),
    requires="causal",
    demo=(Demo("patching every head's output (IOI)", ("zoo/ioi-small", "--task", "ioi", "--n", "16")),
          Demo("patching the residual stream per position (IOI)",
               ("zoo/ioi-small", "--task", "ioi", "--component", "resid_pre", "--per-position", "--n", "16",
                "--template", "when-went")),
          Demo("patching every head's output (induction)", ("zoo/induction-2l", "--task", "induction", "--n", "16"))),
    aliases=("patching-exact", "patching-atp", "patching-atp*", "patching-path"),
    related=("heads", "circuit", "pruning"),
))
