"""The dashboard's only way to the result bundles: list them, find one by name, load its
tables and figures (cached), and gather every per-head number the bundles hold.

Pages are built by many request threads at once. Cached tables are only read; figures are
cached as JSON text and every request gets its own Figure built from it, because plotly
objects are not thread-safe (building a Figure from a shared one, or from a shared dict,
briefly removes each trace's "type" from it, so another thread builds the wrong trace).

Everything goes through `interp.results`; nothing is recomputed, and no tensor is loaded
(so torch is never imported by a page load). A bundle name from a URL is only ever
compared with the names `list_bundles` returns, never joined onto a path. A folder whose
name breaks the library's naming rule is listed as unreadable, with the rule.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import plotly.graph_objects as go

from interp.results import BundleEntry, BundleError, list_bundles
from interp.results.layout import check_name, part_file

_CACHE_SIZE = 256


class _PartCache:
    """Loaded tables and figures keyed by (file path, mtime, size): a part rewritten or
    replaced on disk is read again, an unchanged one is read once."""

    def __init__(self, size: int = _CACHE_SIZE):
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, entry: BundleEntry, kind: str, name: str, load: Callable[[], Any]) -> Any:
        path = entry.path / part_file(kind, name)
        try:
            stat = path.stat()
        except OSError as error:
            raise BundleError(entry.path, f"{kind[:-1]} {name!r} cannot be read: {error}") from error
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = load()  # outside the lock: a slow read must not block other requests
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


@dataclass(frozen=True)
class HeadMetric:
    """One number per head from one bundle, for the heads grid and the head page.

    `values` has columns layer, head, value and detail (text shown on hover, may be "").
    `quantity` titles the colour bar (what the number is, and its unit); `scale` is how it
    is coloured (`app.views.common.SCALES`): "share" for scores in [0, 1], "signed" for
    effects (diverging around 0, and ranked by size), "free" otherwise.
    """

    key: str
    label: str
    bundle: str
    analysis: str
    values: pd.DataFrame
    quantity: str
    scale: str


class Runs:
    """The bundles of one runs folder, as the dashboard sees them."""

    def __init__(self, runs_dir: str | Path):
        self.root = Path(runs_dir).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"runs folder {self.root} does not exist or is not a folder")
        self._parts = _PartCache()

    def entries(self) -> list[BundleEntry]:
        """Every bundle folder, newest first; broken ones carry `.error`, and so does a
        folder whose name is not a valid bundle name (it could not be linked to safely)."""
        return [_check_folder_name(entry) for entry in list_bundles(self.root)]

    def entry(self, name: str) -> BundleEntry | None:
        """The bundle called `name`, or None when there is none: `name` is matched against
        the listed folder names only, so '..', '/etc' or 'a/b' can never reach the disk."""
        return next((e for e in self.entries() if e.path.name == name), None)

    def table(self, entry: BundleEntry, name: str) -> pd.DataFrame:
        """Table `name` of a readable bundle (shared with the cache: do not modify it)."""
        return self._parts.get(entry, "tables", name, lambda: entry.bundle.table(name))

    def figure(self, entry: BundleEntry, name: str) -> go.Figure:
        """Figure `name` of a readable bundle, this caller's own (safe to restyle)."""
        text = self._parts.get(entry, "figures", name, lambda: entry.bundle.figure(name).to_json())
        return go.Figure(json.loads(text))

    def head_shape(self, model: str) -> tuple[int, int] | None:
        """(n_layers, n_heads) of `model` as far as its readable bundles show (per-head
        numbers and stored attention patterns), or None when none has per-head data."""
        frames = [m.values for m in self.head_metrics(model)[0]]
        for entry in self.entries():
            if entry.ok and entry.bundle.meta["model"] == model and "patterns" in entry.bundle.table_names:
                try:
                    frames.append(self.table(entry, "patterns"))
                except Exception:  # noqa: BLE001 - the head page shows this bundle's error
                    continue
        if not frames:
            return None
        return (max(int(f["layer"].max()) for f in frames) + 1, max(int(f["head"].max()) + 1 for f in frames))

    def models(self) -> list[str]:
        """Names of the models that readable bundles were made with, sorted."""
        return sorted({e.bundle.meta["model"] for e in self.entries() if e.ok})

    def head_metrics(self, model: str) -> tuple[list[HeadMetric], list[tuple[str, str]]]:
        """Every per-head metric in the readable bundles of `model`, newest bundle first,
        and (bundle name, error) for each bundle whose tables failed to load."""
        metrics: list[HeadMetric] = []
        errors: list[tuple[str, str]] = []
        for entry in self.entries():
            if not entry.ok or entry.bundle.meta["model"] != model:
                continue
            try:
                metrics.extend(bundle_metrics(self, entry))
            except Exception as error:  # one damaged bundle must not hide the others' numbers
                errors.append((entry.path.name, f"{type(error).__name__}: {error}"))
        metrics.sort(key=lambda m: _ORDER.index(_family(m.analysis)))  # stable: newest first within a kind
        return metrics, errors


def _check_folder_name(entry: BundleEntry) -> BundleEntry:
    """`entry`, or an unreadable entry stating the naming rule when its folder's name breaks it."""
    try:
        check_name(entry.path.name, "a bundle folder's name")
    except ValueError as error:
        return BundleEntry(entry.path, None, f"{error}. Rename the folder to open it.")
    return entry


def bundle_metrics(runs: Runs, entry: BundleEntry) -> list[HeadMetric]:
    """The per-head metrics of one readable bundle ([] for analyses without any). Raises
    BundleError (damaged part), KeyError (missing table) or ValueError (unexpected columns)."""
    extract = _EXTRACTORS.get(_family(entry.bundle.meta["analysis"]))
    return [] if extract is None else extract(runs, entry)


def _family(analysis: str) -> str:
    """"patching-exact", "patching-atp", ... are all "patching"."""
    return "patching" if analysis.startswith("patching") else analysis


def _frame(values: pd.DataFrame, column: str, detail: pd.Series | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"layer": values["layer"].astype(int), "head": values["head"].astype(int),
                          "value": values[column].astype(float)})
    frame["detail"] = "" if detail is None else detail.astype(str).to_numpy()
    return frame.reset_index(drop=True)


def _metrics_heads(runs: Runs, entry: BundleEntry) -> list[HeadMetric]:
    scores = runs.table(entry, "scores")
    name = entry.path.name
    return [HeadMetric(f"{name}:{kind}", f"{kind.replace('_', '-')} score (heads)", name, "heads",
                       _frame(group, "score"), f"{kind.replace('_', '-')} score<br>(share of attention)", "share")
            for kind, group in scores.groupby("kind", sort=False)]


def _metrics_sinks(runs: Runs, entry: BundleEntry) -> list[HeadMetric]:
    heads = runs.table(entry, "heads")
    first = heads[heads["key"] == 0]
    epsilon = entry.bundle.meta.get("parameters", {}).get("epsilon")
    return [HeadMetric(f"{entry.path.name}:sink_rate", f"sink rate at key 0 (share of prompts with α > {epsilon})",
                       entry.path.name, "sinks", _frame(first, "sink_fraction", first["frame"]),
                       "sink rate<br>(share of prompts)", "share")]


def _metrics_pruning(runs: Runs, entry: BundleEntry) -> list[HeadMetric]:
    if "importance" not in entry.bundle.table_names:  # only random orders were run
        return []
    importance = runs.table(entry, "importance")
    task = entry.bundle.meta.get("task")
    return [HeadMetric(f"{entry.path.name}:importance", f"pruning importance ({task})", entry.path.name,
                       "pruning", _frame(importance, "importance"), "importance<br>(E|∂loss/∂ξ_h|)", "free")]


def _metrics_maps(runs: Runs, entry: BundleEntry) -> list[HeadMetric]:
    scores = runs.table(entry, "scores").dropna(subset=["score"])
    best = scores.loc[scores.groupby(["layer", "head"])["score"].idxmax()].sort_values(["layer", "head"])
    return [HeadMetric(f"{entry.path.name}:maps_top", "MAPS top relation score", entry.path.name, "maps",
                       _frame(best, "score", best["relation"]), "MAPS score<br>(share of pairs)", "share")]


def patching_quantity(meta: dict) -> str:
    """The colour-bar title of a patching sweep's effects (the same on every page)."""
    if meta.get("parameters", {}).get("normalized", True):
        return "patching effect<br>(normalised: 1 = clean−corrupted gap)"
    return "patching effect<br>(metric units)"


def patching_baseline(meta: dict) -> float:
    """The value a patch that changes nothing gets, so that effect = value - baseline (as
    `PatchResult.effects`)."""
    parameters = meta.get("parameters", {})
    denoise = parameters.get("direction", "denoise") == "denoise"
    if parameters.get("normalized", True):
        return 0.0 if denoise else 1.0
    return float(meta["corrupt_metric"] if denoise else meta["clean_metric"])


def _metrics_patching(runs: Runs, entry: BundleEntry) -> list[HeadMetric]:
    meta = entry.bundle.meta
    parameters = meta.get("parameters", {})
    if list(parameters.get("axes", [])) != ["layer", "head"]:
        return []
    effects = _frame(runs.table(entry, "values"), "value")
    effects["value"] -= patching_baseline(meta)
    label = f"patching effect of {parameters.get('component')} ({parameters.get('direction')}, {meta.get('task')})"
    return [HeadMetric(f"{entry.path.name}:effect", label, entry.path.name, meta["analysis"], effects,
                       patching_quantity(meta), "signed")]


_ORDER = ("heads", "sinks", "pruning", "maps", "patching")  # the grid's first choice is the first here
_EXTRACTORS: dict[str, Callable[[Runs, BundleEntry], list[HeadMetric]]] = {
    "heads": _metrics_heads,
    "sinks": _metrics_sinks,
    "pruning": _metrics_pruning,
    "maps": _metrics_maps,
    "patching": _metrics_patching,
}
