"""`Result`: the one protocol of every analysis result, written once.

A result class names its registration (`spec`, an `interp.results.registry.Analysis`) and
implements `meta()` (model, task, parameters, seed and any analysis-specific keys) and
`tables()` (name -> DataFrame, as the registration declares them), plus `tensors()` when it
keeps some. The base gives it the rest, the same for every analysis:

    result.to_frame()             # its main table (the registration's first)
    result.figure(name=None, ...) # a registered figure, drawn from the tables (as the dashboard does)
    result.save(runs_dir, name=None) -> Path   # a bundle: meta.json, tables, tensors
    result.bundle_meta()          # the meta a bundle of it holds (before write_bundle adds its keys)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from interp.results.write import write_bundle

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go
    import torch

    from interp.results.registry import Analysis

# Keys of a bundle's meta that `Meta.extra` may not take (they have their own fields, or are
# written by write_bundle).
_RESERVED = ("analysis", "model", "task", "parameters", "seed", "headlab_version", "created", "contents")


@dataclass(frozen=True)
class Meta:
    """What a bundle records about the run besides its parts: `model` (its name), `task`
    (the task's name, or None), `parameters` (JSON values), `seed` (None when nothing was
    random), and `extra`: analysis-specific keys stored at the top level of meta.json (e.g.
    the prompts' tokens)."""

    model: str
    task: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Result:
    """Base of every analysis result (see the module docstring)."""

    spec: ClassVar[Analysis]

    def meta(self) -> Meta:
        raise NotImplementedError(f"{type(self).__name__} must implement meta()")

    def tables(self) -> dict[str, pd.DataFrame]:
        raise NotImplementedError(f"{type(self).__name__} must implement tables()")

    def tensors(self) -> dict[str, torch.Tensor]:
        """Tensors saved with the bundle (none by default)."""
        return {}

    def bundle_meta(self) -> dict[str, Any]:
        """analysis, model, task, parameters, seed and the extra keys, as meta.json will hold them."""
        meta = self.meta()
        clash = [key for key in meta.extra if key in _RESERVED]
        if clash:
            raise ValueError(f"{type(self).__name__}: extra meta keys {clash} are reserved")
        return {"analysis": self.spec.name, "model": meta.model, "task": meta.task,
                "parameters": dict(meta.parameters), "seed": meta.seed, **meta.extra}

    def to_frame(self) -> pd.DataFrame:
        """The main table: the first table the registration declares."""
        return self.tables()[self.spec.tables[0].name]

    def figure(self, name: str | None = None, **options: Any) -> go.Figure:
        """The registered figure `name` (default: the first whose tables this result has),
        drawn from this result's tables; `options` go to its draw function (e.g. `prompt=1`)."""
        tables = self.tables()
        if name is None:
            drawable = [f for f in self.spec.figures if all(t in tables for t in f.needs)]
            if not drawable:
                raise ValueError(f"none of the figures of {self.spec.name} ({[f.name for f in self.spec.figures]}) "
                                 f"can be drawn from this result's tables {sorted(tables)}")
            figure = drawable[0]
        else:
            figure = self.spec.figure(name)
            missing = [t for t in figure.needs if t not in tables]
            if missing:
                raise ValueError(f"figure {figure.name!r} of {self.spec.name} needs tables {missing}, "
                                 f"which this result does not have")
        return figure.draw(tables, self.bundle_meta(), **options)

    def save(self, runs_dir: str | os.PathLike, name: str | None = None) -> Path:
        """Write this result as a bundle in `runs_dir` (see `interp.results.write_bundle`;
        `name` is the folder's name, by default analysis-model-time); returns its folder."""
        meta = self.bundle_meta()
        if not isinstance(meta["model"], str) or not meta["model"]:
            raise ValueError(f"{type(self).__name__}: saving needs a model name (the model's name), got "
                             f"{meta['model']!r}")
        tables = self.tables()
        self.spec.check_tables(tables)
        return write_bundle(runs_dir, meta, tables=tables, tensors=self.tensors(), name=name)
