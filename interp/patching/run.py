"""The entry point of the registered analysis "patch" (see `interp.patching.spec`)."""

from __future__ import annotations

from ..models import HookedModel
from .attribution import attribution_patch
from .path import path_patch
from .result import PatchResult
from .spec import PatchConfig
from .sweep import patch
from .task import Task


def run(model: HookedModel, config: PatchConfig, task: Task, *, progress: bool = True) -> PatchResult:
    """One sweep as `config` says: exact (`patch`), AtP / AtP* (`attribution_patch`) or path
    patching of every head's direct effect on the logits (`path_patch`, receivers "resid")."""
    c = config
    if c.method != "exact" and c.layers is not None:
        raise ValueError(f"layers restrict exact patching only; method {c.method!r} patches every layer")
    if c.method == "exact":
        return patch(model, task, c.component, per_position=c.per_position, direction=c.direction,
                     normalize=c.normalize, layers=None if c.layers is None else list(c.layers),
                     memory_budget=c.memory_budget, progress=progress)
    if c.method in ("atp", "atp*"):
        return attribution_patch(model, task, c.component, per_position=c.per_position, direction=c.direction,
                                 normalize=c.normalize, attention_fix=c.method == "atp*")
    if c.per_position:
        raise ValueError("path patching here patches each head's whole path to the logits; per_position does not apply")
    return path_patch(model, task, "resid", direction=c.direction, normalize=c.normalize,
                      memory_budget=c.memory_budget, progress=progress)
