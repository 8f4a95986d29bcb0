"""The dashboard's only way to the result bundles: list them, find one by name, load its
tables and stored figures (cached), and gather every per-head number the bundles hold, as
their analyses' registrations (`app.registry`) define them.

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
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import plotly.graph_objects as go

from app.registry import analyses, find
from interp.results import BundleEntry, BundleError, list_bundles
from interp.results.layout import META_FILE, check_name, part_file
from interp.results.registry import Analysis

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
class GridMetric:
    """One number per head from one bundle (a registered `HeadMetric` applied to it), for the
    heads grid and the head page.

    `values` has columns layer, head, value and detail (text shown on hover, may be "").
    `label` names it, `unit` says what the number is; `scale` is how it is coloured
    (`interp.results.figures.SCALES`): "share" for values in [0, 1], "signed" for effects
    (diverging around 0, and ranked by size), "free" otherwise.
    """

    key: str
    label: str
    bundle: str
    analysis: str
    values: pd.DataFrame
    unit: str
    scale: str
    how_to_read: str = ""

    @property
    def quantity(self) -> str:
        """The colour bar's title."""
        return f"{self.label}<br>({self.unit})"


class BundleTables(Mapping):
    """The tables of one readable bundle as a read-only mapping name -> DataFrame, loaded on
    first use through the runs folder's cache (what registered figures are drawn from)."""

    def __init__(self, runs: "Runs", entry: BundleEntry):
        self._runs, self._entry = runs, entry

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._entry.bundle.table_names:
            raise KeyError(f"bundle {self._entry.path.name} has no table {name!r}; it has "
                           f"{self._entry.bundle.table_names}")
        return self._runs.table(self._entry, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entry.bundle.table_names)

    def __len__(self) -> int:
        return len(self._entry.bundle.table_names)


class Runs:
    """The bundles of one runs folder, as the dashboard sees them."""

    def __init__(self, runs_dir: str | Path):
        self.root = Path(runs_dir).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"runs folder {self.root} does not exist or is not a folder")
        self._parts = _PartCache()
        # The last listing and the last per-head metrics of each model, each with the state of
        # the files it was made from (`_listing_stamp`, `_file_stamp`s of tables): a page asks for them
        # several times, and reading 300 meta.json files or every table of a model again for
        # each ask made the head page take over a second on the server.
        self._entries: tuple[tuple, list[BundleEntry]] | None = None
        self._metrics: dict[str, tuple[tuple, tuple[list[GridMetric], list[tuple[str, str]]]]] = {}
        self._lock = threading.Lock()

    def entries(self) -> list[BundleEntry]:
        """Every bundle folder, newest first; broken ones carry `.error`, and so does a
        folder whose name is not a valid bundle name (it could not be linked to safely).
        Listed again whenever a folder or a meta.json in the runs folder changed."""
        stamp = self._listing_stamp()
        with self._lock:
            if self._entries is not None and self._entries[0] == stamp:
                return list(self._entries[1])
        listed = [_check_folder_name(entry) for entry in list_bundles(self.root)]
        with self._lock:
            self._entries = (stamp, listed)
        return list(listed)

    def _listing_stamp(self) -> tuple:
        """Each folder's name, inode and modification time, and its meta.json's `_file_stamp`."""
        stamp = []
        with os.scandir(self.root) as children:
            for child in children:
                if child.name.startswith(".") or not child.is_dir():
                    continue
                stamp.append((child.name, child.inode(), child.stat().st_mtime_ns,
                              _file_stamp(os.path.join(child.path, META_FILE))))
        return tuple(sorted(stamp))

    def entry(self, name: str) -> BundleEntry | None:
        """The bundle called `name`, or None when there is none: `name` is matched against
        the listed folder names only, so '..', '/etc' or 'a/b' can never reach the disk."""
        return next((e for e in self.entries() if e.path.name == name), None)

    def run_keys(self) -> dict[str, str]:
        """`run_key` of every readable bundle, by bundle name."""
        return {e.path.name: run_key(e) for e in self.entries() if e.ok}

    def table(self, entry: BundleEntry, name: str) -> pd.DataFrame:
        """Table `name` of a readable bundle (shared with the cache: do not modify it)."""
        return self._parts.get(entry, "tables", name, lambda: entry.bundle.table(name))

    def tables(self, entry: BundleEntry) -> BundleTables:
        """Every table of a readable bundle, loaded on first use (shared: do not modify them)."""
        return BundleTables(self, entry)

    def figure(self, entry: BundleEntry, name: str) -> go.Figure:
        """Stored figure `name` of a readable (older) bundle, this caller's own (safe to restyle)."""
        text = self._parts.get(entry, "figures", name, lambda: entry.bundle.figure(name).to_json())
        return go.Figure(json.loads(text))

    def head_shape(self, model: str) -> tuple[int, int] | None:
        """(n_layers, n_heads) of `model` as far as its bundles' per-head numbers show, or
        None when none has any."""
        frames = [m.values for m in self.head_metrics(model)[0]]
        if not frames:
            return None
        return (max(int(f["layer"].max()) for f in frames) + 1, max(int(f["head"].max()) + 1 for f in frames))

    def models(self) -> list[str]:
        """Names of the models that readable bundles were made with, sorted."""
        return sorted({e.bundle.meta["model"] for e in self.entries() if e.ok})

    def head_metrics(self, model: str) -> tuple[list[GridMetric], list[tuple[str, str]]]:
        """Every per-head metric in the readable bundles of `model`, by analysis in the app's
        order, newest bundle first within one, and (bundle name, error) for each bundle whose
        tables failed to load. Computed again whenever one of those bundles or tables changed
        (shared: do not modify the metrics' values)."""
        entries = [e for e in self.entries() if e.ok and e.bundle.meta["model"] == model]
        stamp = tuple((e.path.name, *(_file_stamp(e.path / part_file("tables", t)) for t in e.bundle.table_names))
                      for e in entries)
        with self._lock:
            if model in self._metrics and self._metrics[model][0] == stamp:
                return self._metrics[model][1]
        found = self._gather_head_metrics(entries)
        with self._lock:
            self._metrics[model] = (stamp, found)
        return found

    def _gather_head_metrics(self, entries: list[BundleEntry]) -> tuple[list[GridMetric], list[tuple[str, str]]]:
        metrics: list[GridMetric] = []
        errors: list[tuple[str, str]] = []
        for entry in entries:
            try:
                metrics.extend(bundle_metrics(self, entry))
            except Exception as error:  # one damaged bundle must not hide the others' numbers
                errors.append((entry.path.name, f"{type(error).__name__}: {error}"))
        order = [a.name for a in analyses()]
        metrics.sort(key=lambda m: order.index(m.analysis))  # stable: newest first within an analysis
        return metrics, errors


def _file_stamp(path: str | Path) -> tuple[int, int, int] | None:
    """(inode, modification time, size) of a file, None when it cannot be read. The inode
    tells a file replaced within the clock's tick, as atomic writes replace them."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _check_folder_name(entry: BundleEntry) -> BundleEntry:
    """`entry`, or an unreadable entry stating the naming rule when its folder's name breaks it."""
    try:
        check_name(entry.path.name, "a bundle folder's name")
    except ValueError as error:
        return BundleEntry(entry.path, None, f"{error}. Rename the folder to open it.")
    return entry


def run_key(entry: BundleEntry) -> str:
    """What makes two readable bundles identical runs: the same analysis, model, task and
    parameters (their time and name may differ)."""
    meta = entry.bundle.meta
    return json.dumps([meta["analysis"], meta["model"], meta.get("task"), meta.get("parameters")],
                      sort_keys=True, default=str)


def distinct_runs(entries: list[BundleEntry]) -> list[BundleEntry]:
    """The first of each group of identical runs (`run_key`) among readable `entries`, in
    their order (the newest of each, for entries listed newest first)."""
    firsts: dict[str, BundleEntry] = {}
    for entry in entries:
        firsts.setdefault(run_key(entry), entry)
    return list(firsts.values())


def analysis_of(entry: BundleEntry) -> Analysis | None:
    """The registration of a readable bundle's analysis (older names included), or None."""
    return find(entry.bundle.meta["analysis"])


def bundle_metrics(runs: Runs, entry: BundleEntry) -> list[GridMetric]:
    """The per-head metrics of one readable bundle, as its analysis registers them ([] for
    analyses without any, or not registered). Raises BundleError (damaged part), KeyError
    (missing table) or ValueError (unexpected columns)."""
    analysis = analysis_of(entry)
    if analysis is None:
        return []
    tables, meta, name = runs.tables(entry), entry.bundle.meta, entry.path.name
    metrics = []
    for i, metric in enumerate(analysis.head_metrics):
        for label, values in metric.values(tables, meta):
            metrics.append(GridMetric(f"{name}:{i}:{label}", label, name, analysis.name, values,
                                      metric.unit_for(meta), metric.scale, metric.how_to_read))
    return metrics
