"""Reading result bundles: check a bundle's meta and manifest up front, load its parts on
demand, and list every bundle in a runs folder."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from interp.results.layout import META_FILE, PART_KINDS, REQUIRED_META, is_safe_name, part_file

if TYPE_CHECKING:
    import torch


class BundleError(Exception):
    """A result bundle on disk is missing, incomplete or corrupt.

    `path` is the bundle folder, `problem` what is wrong with it; the message names both.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"result bundle {self.path}: {problem}")


class Bundle:
    """One result bundle on disk, as returned by `read_bundle`.

    `meta` is the parsed meta.json, `created` its UTC time. Tables, tensors and figures are
    read from disk on each call of `table`, `tensor` and `figure`; a file that fails to load
    raises BundleError.
    """

    def __init__(self, path: Path, meta: dict[str, Any], created: datetime):
        self.path = path
        self.meta = meta
        self.created = created

    @property
    def table_names(self) -> list[str]:
        return list(self.meta["contents"]["tables"])

    @property
    def tensor_names(self) -> list[str]:
        return list(self.meta["contents"]["tensors"])

    @property
    def figure_names(self) -> list[str]:
        return list(self.meta["contents"]["figures"])

    @property
    def files(self) -> list[str]:
        """The bundle's part files (besides meta.json), relative to its folder, built from its
        checked part names."""
        contents = self.meta["contents"]
        return sorted({part_file(kind, name) for kind in PART_KINDS for name in contents[kind]})

    def table(self, name: str) -> pd.DataFrame:
        """The table `name`, as saved."""
        return self._load("tables", name, lambda path: pd.read_parquet(path, engine="pyarrow"))

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor `name` on CPU, with the shape and dtype it was saved with."""
        return self._load("tensors", name, lambda path: _read_tensor(path, name))

    def figure(self, name: str) -> go.Figure:
        """The figure `name`, with numeric arrays as numpy arrays."""
        return self._load("figures", name, _read_figure)

    def _load(self, kind: str, name: str, reader: Callable[[Path], Any]) -> Any:
        names = self.meta["contents"][kind]
        if name not in names:
            raise KeyError(f"bundle {self.path} has no {kind[:-1]} {name!r}; it has {names}")
        path = self.path / part_file(kind, name)
        try:
            return reader(path)
        except Exception as error:  # any failure to decode a listed file means a damaged bundle
            problem = f"{kind[:-1]} {name!r} ({path.name}) cannot be read: {error}"
            raise BundleError(self.path, problem) from error

    def __repr__(self) -> str:
        return (
            f"Bundle({str(self.path)!r}, analysis={self.meta['analysis']!r}, "
            f"model={self.meta['model']!r}, created={self.meta['created']!r})"
        )


def read_bundle(path: str | os.PathLike) -> Bundle:
    """Open the bundle folder `path`.

    Checks meta.json (valid JSON, "analysis" and "model", a "created" time with a time
    zone, a well-formed manifest) and that every file the manifest lists exists with its recorded
    size; the files themselves are loaded later, on demand. Raises BundleError naming the
    folder and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(path, "no such folder")
    if not path.is_dir():
        raise BundleError(path, "not a folder")
    meta = _load_meta(path)
    created = _created(path, meta)
    _check_manifest(path, meta.get("contents"))
    return Bundle(path, meta, created)


def _load_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(path, f"{META_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(path, f"{META_FILE} cannot be read as JSON: {error}") from error
    if not isinstance(meta, dict):
        raise BundleError(path, f"{META_FILE} must hold a JSON object, found {type(meta).__name__}")
    for key in REQUIRED_META:
        if not isinstance(meta.get(key), str):
            raise BundleError(path, f"{META_FILE} lacks {key!r} (a string)")
    return meta


def _created(path: Path, meta: dict[str, Any]) -> datetime:
    try:
        created = datetime.fromisoformat(meta["created"])
    except (KeyError, TypeError, ValueError):
        raise BundleError(path, f"{META_FILE} lacks a valid 'created' time") from None
    if created.tzinfo is None:
        raise BundleError(path, f"{META_FILE} 'created' time {meta['created']!r} has no time zone")
    return created.astimezone(timezone.utc)


def _check_manifest(path: Path, contents: Any) -> None:
    """Check the manifest's shape, then that each listed file exists with its size."""
    if (
        not isinstance(contents, dict)
        or not all(isinstance(contents.get(kind), list) for kind in PART_KINDS)
        or not isinstance(contents.get("files"), dict)
    ):
        raise BundleError(path, f"{META_FILE} lacks a valid 'contents' manifest")
    for kind in PART_KINDS:
        bad = [name for name in contents[kind] if not is_safe_name(name)]
        if bad:
            raise BundleError(path, f"{META_FILE} lists invalid {kind} names {bad}")
    # Only paths built from checked names are opened, never the manifest's own strings.
    expected = {part_file(kind, name) for kind in PART_KINDS for name in contents[kind]}
    if set(contents["files"]) != expected:
        raise BundleError(
            path,
            f"{META_FILE} manifest is inconsistent: it records files {sorted(contents['files'])}, "
            f"its parts need {sorted(expected)}",
        )
    for relative in sorted(expected):
        size = contents["files"][relative]
        try:
            actual = (path / relative).stat().st_size
        except FileNotFoundError:
            raise BundleError(path, f"{relative} is missing (listed in {META_FILE})") from None
        except OSError as error:
            raise BundleError(path, f"{relative} cannot be read: {error}") from error
        if actual != size:
            raise BundleError(
                path, f"{relative} has {actual} bytes, {META_FILE} records {size}: truncated or changed"
            )


def _read_tensor(path: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open  # deferred: it imports torch, which is slow to import

    with safe_open(path, framework="pt") as file:
        return file.get_tensor(name)


def _read_figure(path: Path) -> go.Figure:
    return go.Figure(_decode_typed_arrays(json.loads(path.read_text(encoding="utf-8"))))


def _decode_typed_arrays(value: Any) -> Any:
    """Turn the typed-array specs that plotly writes for numpy data
    (``{"dtype": "f8", "bdata": <base64>, "shape": "2, 3"}``) back into numpy arrays."""
    if isinstance(value, dict):
        if "bdata" in value and "dtype" in value:
            # plotly.js typed arrays are little-endian.
            dtype = np.dtype("<" + value["dtype"])
            array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=dtype)
            shape = value.get("shape")
            if isinstance(shape, str):
                shape = [int(size) for size in shape.split(",")]
            return array.reshape(shape) if shape else array
        return {key: _decode_typed_arrays(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_typed_arrays(item) for item in value]
    return value


@dataclass(frozen=True)
class BundleEntry:
    """One folder found by `list_bundles`: either `bundle` is set, or `error` says why the
    folder is not a readable bundle (the BundleError's message)."""

    path: Path
    bundle: Bundle | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def list_bundles(runs_dir: str | os.PathLike) -> list[BundleEntry]:
    """Every bundle folder in `runs_dir`, newest first.

    Hidden folders (such as writes in progress) and plain files are skipped. A folder that
    is not a readable bundle is listed with its error, not raised; it sorts by its
    modification time. An empty folder gives []; a missing one raises FileNotFoundError.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        if runs_dir.exists():
            raise NotADirectoryError(f"runs_dir {runs_dir} is not a folder")
        raise FileNotFoundError(f"runs_dir {runs_dir} does not exist")
    dated: list[tuple[datetime, BundleEntry]] = []
    for child in runs_dir.iterdir():
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            bundle = read_bundle(child)
            dated.append((bundle.created, BundleEntry(child, bundle, None)))
        except BundleError as error:
            dated.append((_modified(child), BundleEntry(child, None, str(error))))
    dated.sort(key=lambda pair: (pair[0], pair[1].path.name), reverse=True)
    return [entry for _, entry in dated]


def _modified(path: Path) -> datetime:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    except OSError:  # removed while listing
        return datetime.fromtimestamp(0, timezone.utc)
