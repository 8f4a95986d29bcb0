"""The analysis registry: every analysis is named once, with everything the command line, the
demo and the dashboard need to offer it.

A registration (`Analysis`) states the analysis's one name (the `headlab` subcommand, the
bundle's `analysis`, the registry key), a one-line summary and how to read its result, its
entry point as a "module:function" string (resolved only when it runs, so registering imports
no torch), its config dataclass (`interp.results.config`), the tables its bundles hold with
their columns, its figures (pure functions of tables and meta), its per-head metrics for the
heads grid, per-head views for the head page, the task it takes, the models it runs on, and
its demo steps. Each package registers its analyses in a torch-free module
(`analyses.specs`, `circuits.specs`, `interp.patching.spec`); `app` imports those and builds
everything else from `analyses()`::

    register(Analysis(name="heads", summary=..., how_to_read=..., run="analyses.heads:run",
                      config=HeadsConfig, tables=(Table("scores", ("layer", "head", "kind", "score")),),
                      figures=(Figure("scores", draw_scores, needs=("scores",)),), ...))
    result = run_analysis(get("heads"), model, HeadsConfig(n_sequences=8))

Task builders (named functions that build an `interp.patching.Task` for a model) are
registered the same way (`TaskBuilder`), so the command line can offer them by name.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from interp.results.config import Config, check_indices, field_specs

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from interp.models import HookedModel
    from interp.patching import Task
    from interp.results.base import Result

Tables = Mapping[str, "pd.DataFrame"]
SCALES = ("share", "signed", "free")
REQUIRES = ("any", "causal", "encoder")
_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


@dataclass(frozen=True)
class Table:
    """A table a bundle of the analysis holds: its name (a name ending in "*" stands for every
    table whose name starts with the rest, e.g. "salient_*"), the columns it always has, what
    it is, and whether every bundle has it."""

    name: str
    columns: tuple[str, ...]
    about: str = ""
    optional: bool = False

    def matches(self, name: str) -> bool:
        return name.startswith(self.name[:-1]) if self.name.endswith("*") else name == self.name


@dataclass(frozen=True)
class Control:
    """A choice the dashboard offers beside a figure, passed to its draw function as the
    keyword `name`. `choices(tables, meta)` lists the values (or (value, label) pairs);
    `default` "first" or "last" picks the initial one; `widget` is "dropdown" or "slider"
    (sliders need int values)."""

    name: str
    label: str
    choices: Callable[[Tables, dict], list]
    default: str = "first"
    widget: str = "dropdown"

    def options(self, tables: Tables, meta: dict) -> list[tuple[Any, str]]:
        """(value, label) of every choice."""
        return [c if isinstance(c, tuple) else (c, str(c)) for c in self.choices(tables, meta)]


@dataclass(frozen=True)
class Figure:
    """A figure of the analysis: `draw(tables, meta, **options) -> plotly Figure`, a pure
    function of the bundle's tables and meta (no torch), shared by `Result.figure` and the
    dashboard. It is drawn for the bundles that hold every table in `needs`."""

    name: str
    draw: Callable[..., "go.Figure"]
    needs: tuple[str, ...] = ()
    controls: tuple[Control, ...] = ()


@dataclass(frozen=True)
class HeadMetric:
    """One number per head, for the heads grid and the head page.

    The rows of table `table` (after `select(frame, meta)`, which may filter rows or add a
    column, and may return an empty frame when the bundle has no such number) give column
    `value` per (layer, head); with `group`, one metric per distinct value of that column.
    `label(meta, group)` or a format string (keys of meta, and `group`) names it; `unit` (a
    string or `unit(meta)`) says what the number is, and `scale` how it is coloured: "share"
    for values in [0, 1] on a fixed 0-1 range, "signed" diverging around 0, "free" auto.
    `detail` is a column shown on hover; `how_to_read` says in a sentence or two what a high
    or low value means (the heads grid and head page show it)."""

    table: str
    value: str
    label: str | Callable[[dict, str | None], str]
    unit: str | Callable[[dict], str]
    scale: str
    select: Callable[["pd.DataFrame", dict], "pd.DataFrame"] | None = None
    group: str | None = None
    detail: str | None = None
    how_to_read: str = ""

    def label_for(self, meta: dict, group: str | None) -> str:
        if callable(self.label):
            return self.label(meta, group)
        return self.label.format(**meta, group=group)

    def unit_for(self, meta: dict) -> str:
        return self.unit(meta) if callable(self.unit) else self.unit

    def values(self, tables: Tables, meta: dict) -> list[tuple[str, "pd.DataFrame"]]:
        """(label, values) per group from a bundle's tables (none when the table is absent or
        `select` leaves no row): values has columns layer, head, value, detail, one row per
        head. A head with several rows is an error naming it."""
        import pandas as pd

        if self.table not in tables:
            return []
        frame = tables[self.table]
        frame = frame if self.select is None else self.select(frame, meta)
        groups = [(None, frame)] if self.group is None else list(frame.groupby(self.group, sort=False))
        out = []
        for group, rows in groups:
            if rows.empty:
                continue
            values = pd.DataFrame({"layer": rows["layer"].astype(int).to_numpy(),
                                   "head": rows["head"].astype(int).to_numpy(),
                                   "value": rows[self.value].astype(float).to_numpy(),
                                   "detail": rows[self.detail].astype(str).to_numpy() if self.detail else ""})
            twice = values.duplicated(["layer", "head"])
            if twice.any():
                first = values[twice].iloc[0]
                raise ValueError(f"per-head metric {self.value!r} of table {self.table!r} has several rows for head "
                                 f"L{first['layer']}H{first['head']}; its select must keep one row per head")
            out.append((self.label_for(meta, group), values))
        return out


def top_heads(values: "pd.DataFrame", scale: str, n: int) -> "pd.DataFrame":
    """The `n` rows of a per-head metric's `values` (see `HeadMetric.values`) with the largest
    value, or the largest |value| when the scale is "signed" (effects of either sign matter)."""
    size = values["value"].abs() if scale == "signed" else values["value"]
    return values.loc[size.sort_values(ascending=False, kind="stable").index[:n]]


@dataclass(frozen=True)
class HeadView:
    """A section of a head's page: `draw(tables, meta, layer, head)` returns plotly figures
    and/or DataFrames (drawn as tables) about that head, [] when the bundle has none."""

    title: str
    draw: Callable[[Tables, dict, int, int], list]
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskUse:
    """The task an analysis takes: `required` or optional, the default task's name, and
    whether it needs clean/corrupted token pairs (`pairs`; tasks that are only a loss and a
    score do not have them)."""

    required: bool = True
    default: str | None = None
    pairs: bool = True


@dataclass(frozen=True)
class Demo:
    """One step of `headlab demo`: what it shows, and the command line after the analysis's
    name (the model first)."""

    what: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Analysis:
    """One registered analysis (see the module docstring). `run` names the entry point
    `run(model, config, task=None, *, progress=True) -> Result`; `requires` is "any",
    "causal" (a causal language model with an LM head) or "encoder"; `aliases` are older
    bundle names read as this analysis; `related` names the analyses whose bundles of the
    same model a reader of this one wants next (the dashboard links them)."""

    name: str
    summary: str
    how_to_read: str
    run: str
    config: type
    tables: tuple[Table, ...]
    figures: tuple[Figure, ...] = ()
    head_metrics: tuple[HeadMetric, ...] = ()
    head_views: tuple[HeadView, ...] = ()
    task: TaskUse | None = None
    requires: str = "any"
    demo: tuple[Demo, ...] = ()
    aliases: tuple[str, ...] = ()
    group: str | None = None
    related: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"an analysis name is lower-case words joined by '-', e.g. 'head-patterns'; "
                             f"got {self.name!r}")
        if not self.summary or "\n" in self.summary or not self.how_to_read:
            raise ValueError(f"analysis {self.name!r}: summary must be one line and how_to_read non-empty")
        if self.group is not None and not self.name.startswith(self.group + "-"):
            raise ValueError(f"analysis {self.name!r} of group {self.group!r} must be named '{self.group}-<command>'")
        if not isinstance(self.run, str) or self.run.count(":") != 1:
            raise ValueError(f"analysis {self.name!r}: run must be a 'module:function' string, got {self.run!r}")
        field_specs(self.config)  # checks that it is a Config dataclass of option fields
        if self.requires not in REQUIRES:
            raise ValueError(f"analysis {self.name!r}: requires must be one of {REQUIRES}, got {self.requires!r}")
        if not self.tables:
            raise ValueError(f"analysis {self.name!r} must declare the tables its bundles hold")
        declared = {t.name for t in self.tables}
        for part, needs in [(f"figure {f.name!r}", f.needs) for f in self.figures] + \
                           [(f"head view {v.title!r}", v.needs) for v in self.head_views] + \
                           [(f"head metric on {m.table!r}", (m.table,)) for m in self.head_metrics]:
            if not set(needs) <= declared:
                raise ValueError(f"analysis {self.name!r}: {part} reads tables {sorted(set(needs) - declared)} "
                                 f"that it does not declare ({sorted(declared)})")
        for metric in self.head_metrics:
            if metric.scale not in SCALES:
                raise ValueError(f"analysis {self.name!r}: scale must be one of {SCALES}, got {metric.scale!r}")
            if not metric.how_to_read.strip():
                raise ValueError(f"analysis {self.name!r}: per-head metric of table {metric.table!r} needs a "
                                 "how_to_read sentence")
        names = [f.name for f in self.figures]
        if len(set(names)) != len(names):
            raise ValueError(f"analysis {self.name!r}: figure names must differ, got {names}")

    @property
    def command(self) -> tuple[str, ...]:
        """Its `headlab` command: ("heads",), or (group, command) for a group's analysis, e.g.
        ("sae", "train") for "sae-train"."""
        return (self.name,) if self.group is None else (self.group, self.name.removeprefix(self.group + "-"))

    def figure(self, name: str | None = None) -> Figure:
        """The figure called `name` (default: the first)."""
        if not self.figures:
            raise ValueError(f"analysis {self.name!r} has no figures")
        if name is None:
            return self.figures[0]
        for figure in self.figures:
            if figure.name == name:
                return figure
        raise KeyError(f"analysis {self.name!r} has no figure {name!r}; its figures: {[f.name for f in self.figures]}")

    def check_tables(self, tables: Mapping[str, Any]) -> None:
        """Check a bundle's tables (name -> DataFrame) against the declaration: every
        required table present, every table declared, every declared column there."""
        missing = [t.name for t in self.tables if not t.optional and not any(t.matches(n) for n in tables)]
        if missing:
            raise ValueError(f"analysis {self.name!r} writes tables {missing}; they are missing")
        for name, frame in tables.items():
            table = next((t for t in self.tables if t.matches(name)), None)
            if table is None:
                raise ValueError(f"analysis {self.name!r} declares no table {name!r} "
                                 f"(declared: {[t.name for t in self.tables]})")
            absent = [c for c in table.columns if c not in frame.columns]
            if absent:
                raise ValueError(f"table {name!r} of analysis {self.name!r} lacks columns {absent}")


@dataclass(frozen=True)
class TaskBuilder:
    """A named task: `build` is "module:function", `function(model, **options) -> Task`;
    `pairs` says whether its tasks hold clean/corrupted token pairs."""

    name: str
    build: str
    summary: str
    pairs: bool = True


_ANALYSES: dict[str, Analysis] = {}
_TASKS: dict[str, TaskBuilder] = {}


def register(analysis: Analysis) -> Analysis:
    """Add `analysis` to the registry (its name and aliases must be new); returns it."""
    if not isinstance(analysis, Analysis):
        raise TypeError(f"register takes an Analysis, got {type(analysis).__name__}")
    taken = {name for a in _ANALYSES.values() for name in (a.name, *a.aliases)}
    clash = [n for n in (analysis.name, *analysis.aliases) if n in taken]
    if clash:
        raise ValueError(f"analysis names {clash} are registered already")
    _ANALYSES[analysis.name] = analysis
    return analysis


def unregister(name: str) -> None:
    """Remove the analysis `name` (for tests that register their own)."""
    _ANALYSES.pop(name)


def analyses() -> list[Analysis]:
    """Every registered analysis, in the order of registration."""
    return list(_ANALYSES.values())


def find(name: str) -> Analysis | None:
    """The analysis called `name` or having it as an alias, else None."""
    if name in _ANALYSES:
        return _ANALYSES[name]
    return next((a for a in _ANALYSES.values() if name in a.aliases), None)


def get(name: str) -> Analysis:
    """The analysis called `name` (or an alias); KeyError listing the registered names."""
    analysis = find(name)
    if analysis is None:
        raise KeyError(f"no analysis {name!r} is registered; registered: {', '.join(_ANALYSES) or 'none'}")
    return analysis


def register_task(builder: TaskBuilder) -> TaskBuilder:
    if builder.name in _TASKS:
        raise ValueError(f"task {builder.name!r} is registered already")
    _TASKS[builder.name] = builder
    return builder


def tasks() -> list[TaskBuilder]:
    return list(_TASKS.values())


def get_task(name: str) -> TaskBuilder:
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(_TASKS) or 'none'}")
    return _TASKS[name]


def resolve(entry: str) -> Callable:
    """The function named by "module:function", imported now."""
    module, _, function = entry.partition(":")
    return getattr(importlib.import_module(module), function)


def build_task(name: str, model: HookedModel, **options: Any) -> Task:
    """Build the registered task `name` for `model`; `options` whose value is None are left to
    the builder's defaults, and an option the builder does not take is an error."""
    builder = get_task(name)
    function = resolve(builder.build)
    accepted = inspect.signature(function).parameters
    given = {k: v for k, v in options.items() if v is not None}
    unknown = [k for k in given if k not in accepted]
    if unknown:
        raise ValueError(f"task {name!r} takes no option {', '.join(unknown)}; it takes "
                         f"{', '.join(p for p in accepted if p != 'model')}")
    return function(model, **given)


def check_model(analysis: Analysis, model: HookedModel) -> None:
    """Refuse a model the analysis does not run on, saying what it needs."""
    cfg = model.cfg
    if analysis.requires == "causal" and not (cfg.is_causal and cfg.has_lm_head):
        kind = "an encoder" if not cfg.is_causal else "without an LM head"
        raise ValueError(f"{analysis.name} needs a causal language model with an LM head; {cfg.name} is {kind}")
    if analysis.requires == "encoder" and cfg.is_causal:
        raise ValueError(f"{analysis.name} needs an encoder (bidirectional attention); {cfg.name} is causal")


def run_analysis(analysis: Analysis | str, model: HookedModel, config: Config | None = None,
                 task: Task | None = None, *, progress: bool = True) -> Result:
    """Run a registered analysis: check the model kind, the config's type and its layer/head
    indices against the model, and the task, then call the entry point. Returns its Result."""
    from interp.results.base import Result

    analysis = get(analysis) if isinstance(analysis, str) else analysis
    config = analysis.config() if config is None else config
    if not isinstance(config, analysis.config):
        raise TypeError(f"{analysis.name} takes a {analysis.config.__name__}, got {type(config).__name__}")
    check_model(analysis, model)
    check_indices(config, model.cfg.n_layers, model.cfg.n_heads)
    if analysis.task is None and task is not None:
        raise ValueError(f"{analysis.name} takes no task")
    if analysis.task is not None and analysis.task.required and task is None:
        raise ValueError(f"{analysis.name} needs a task (e.g. {analysis.task.default or 'ioi'})")
    if task is not None and analysis.task.pairs and not task.has_pairs:
        raise ValueError(f"{analysis.name} needs a task with clean/corrupted token pairs; task {task.name!r} has "
                         "only a loss and a score")
    result = resolve(analysis.run)(model, config, task, progress=progress)
    if not isinstance(result, Result) or result.spec is not analysis:
        raise TypeError(f"{analysis.run} returned {type(result).__name__}, not a Result of {analysis.name!r}")
    return result
