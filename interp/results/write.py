"""Writing result bundles atomically: everything goes into a hidden temporary folder inside
the runs folder, which is renamed into place only once complete."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from plotly.basedatatypes import BaseFigure

from interp.results.layout import (
    LIBRARY_META,
    META_FILE,
    PART_KINDS,
    REQUIRED_META,
    TENSORS_FILE,
    check_name,
    part_file,
)

if TYPE_CHECKING:
    import torch


def write_bundle(
    runs_dir: str | os.PathLike,
    meta: Mapping[str, Any],
    tables: Mapping[str, pd.DataFrame] | None = None,
    tensors: Mapping[str, torch.Tensor] | None = None,
    figures: Mapping[str, BaseFigure] | None = None,
    name: str | None = None,
) -> Path:
    """Write one run of one analysis as a new bundle folder in `runs_dir` and return its path.

    Args:
        runs_dir: folder holding bundles; created if missing.
        meta: JSON-serialisable dict with at least "analysis" and "model" (non-empty
            strings); "task" (default None), "parameters" (default {}) and "seed" (default
            None) are filled in when absent, and every other key is kept as given.
            "headlab_version", "created" and "contents" are written by this function.
        tables: name -> DataFrame (string column names), saved as parquet.
        tensors: name -> tensor of any shape, dtype and device; saved to CPU, contiguous,
            in one safetensors file.
        figures: name -> plotly figure, saved as plotly JSON.
        name: folder name; by default ``{analysis}-{model}-{UTC time}`` (unsafe characters
            such as '/' become '_'), with ``-2``, ``-3``, ... appended when taken. An
            explicit name that exists already is a FileExistsError.

    Names of parts and bundles are 1-128 letters, digits, '_', '-', '.', not starting with
    '.'. Inputs are checked before anything touches the disk; if writing fails at any
    point, the temporary folder is removed and no bundle appears. An existing bundle is
    never overwritten.
    """
    runs_dir = Path(runs_dir)
    full_meta = _complete_meta(meta)
    parts = _checked_parts(tables, tensors, figures)
    if name is not None:
        check_name(name, "bundle name")
        if os.path.lexists(runs_dir / name):
            raise _taken(runs_dir / name)
    created = datetime.now(timezone.utc)
    full_meta["created"] = created.isoformat()

    if runs_dir.exists() and not runs_dir.is_dir():
        raise NotADirectoryError(f"runs_dir {runs_dir} is not a folder")
    runs_dir.mkdir(parents=True, exist_ok=True)
    tmp = runs_dir / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        full_meta["contents"] = _write_parts(tmp, parts)
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2) + "\n", encoding="utf-8")
        if name is not None:
            return _move_into_place(tmp, runs_dir, [name])
        return _move_into_place(tmp, runs_dir, _default_names(full_meta, created))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _complete_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Check the caller's meta and return a copy with defaults and the library version."""
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    for key in REQUIRED_META:
        if key not in meta:
            raise ValueError(
                f"meta must have key {key!r} (a non-empty string); got keys {sorted(map(str, meta))}"
            )
        if not isinstance(meta[key], str) or not meta[key]:
            raise ValueError(f"meta[{key!r}] must be a non-empty string, got {meta[key]!r}")
    reserved = [key for key in LIBRARY_META if key in meta]
    if reserved:
        raise ValueError(f"meta keys {reserved} are written by write_bundle; leave them out")
    for key, value in meta.items():
        if not isinstance(key, str):
            raise ValueError(f"meta keys must be strings, got {key!r}")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"meta[{key!r}] is not JSON-serialisable ({error}); use str, int, float "
                "(not NaN/inf), bool, None, and lists and dicts of those"
            ) from error
    full = dict(meta)
    for key, default in (("task", None), ("parameters", {}), ("seed", None)):
        full.setdefault(key, default)
    full["headlab_version"] = _library_version()
    return full


def _library_version() -> str:
    try:
        return metadata.version("headlab")
    except metadata.PackageNotFoundError:
        return "unknown"


def _checked_parts(tables, tensors, figures) -> dict[str, dict[str, Any]]:
    """Check that each part mapping holds safe names and values of the right type."""
    parts = {"tables": tables, "tensors": tensors, "figures": figures}
    for kind, mapping in parts.items():
        if mapping is None:
            parts[kind] = {}
        elif not isinstance(mapping, Mapping):
            raise TypeError(f"{kind} must be a dict of names to values, got {type(mapping).__name__}")
    expected = {"tables": (pd.DataFrame, "pandas DataFrame"), "figures": (BaseFigure, "plotly Figure")}
    if parts["tensors"]:
        import torch  # deferred: torch is slow to import and only needed when there are tensors

        expected["tensors"] = (torch.Tensor, "torch.Tensor")
    for kind, mapping in parts.items():
        lowered: dict[str, str] = {}
        for part_name, value in mapping.items():
            check_name(part_name, f"{kind[:-1]} name")
            # On a case-insensitive file system one file would overwrite the other.
            if part_name.lower() in lowered:
                raise ValueError(
                    f"{kind} names must differ in more than case: "
                    f"{lowered[part_name.lower()]!r} and {part_name!r}"
                )
            lowered[part_name.lower()] = part_name
            part_type, label = expected[kind]
            if not isinstance(value, part_type):
                raise TypeError(f"{kind[:-1]} {part_name!r} must be a {label}, got {type(value).__name__}")
            if kind == "tables":
                _check_columns(part_name, value)
    return {kind: dict(mapping) for kind, mapping in parts.items()}


def _check_columns(table_name: str, frame: pd.DataFrame) -> None:
    # pyarrow would silently turn other column names into strings, breaking the round trip.
    odd = [column for column in frame.columns if not isinstance(column, str)]
    if odd:
        raise ValueError(f"table {table_name!r} must have string column names; got {odd[:5]}")


@contextmanager
def _noting(what: str) -> Iterator[None]:
    """Add to any exception a note saying which part was being written."""
    try:
        yield
    except Exception as error:
        if sys.version_info >= (3, 11):  # add_note is new in 3.11
            error.add_note(f"(while writing {what} of a result bundle)")
        raise


def _write_parts(folder: Path, parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write tables, tensors and figures into `folder`; return the manifest for meta.json."""
    for table_name, frame in parts["tables"].items():
        path = folder / part_file("tables", table_name)
        path.parent.mkdir(exist_ok=True)
        with _noting(f"table {table_name!r}"):
            frame.to_parquet(path, engine="pyarrow")
    if parts["tensors"]:
        import torch
        from safetensors.torch import save_file

        with _noting("the tensors"):
            # A copy of its own for each: safetensors refuses tensors that share memory.
            cpu = {
                tensor_name: tensor.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
                for tensor_name, tensor in parts["tensors"].items()
            }
            save_file(cpu, folder / TENSORS_FILE)
        # safetensors creates its file private (0600); give it the umask's mode like the rest.
        os.chmod(folder / TENSORS_FILE, folder.stat().st_mode & 0o666)
    for figure_name, figure in parts["figures"].items():
        path = folder / part_file("figures", figure_name)
        path.parent.mkdir(exist_ok=True)
        with _noting(f"figure {figure_name!r}"):
            path.write_text(figure.to_json(), encoding="utf-8")

    files = {part_file(kind, part_name) for kind in PART_KINDS for part_name in parts[kind]}
    return {
        **{kind: list(parts[kind]) for kind in PART_KINDS},
        "files": {relative: (folder / relative).stat().st_size for relative in sorted(files)},
    }


def _taken(path: Path) -> FileExistsError:
    return FileExistsError(f"{path} exists already; a bundle is never overwritten, choose another name")


def _default_names(meta: dict[str, Any], created: datetime) -> Iterator[str]:
    """``{analysis}-{model}-{UTC time}``, then the same with -2, -3, ... appended."""
    base = f"{_slug(meta['analysis'])}-{_slug(meta['model'])}-{created:%Y%m%dT%H%M%SZ}"
    yield base
    for number in itertools.count(2):
        yield f"{base}-{number}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".")


def _move_into_place(tmp: Path, runs_dir: Path, names: Iterator[str] | list[str]) -> Path:
    """Rename `tmp` to the first of `names` that is free in `runs_dir` and return the new
    path; FileExistsError when none is."""
    for candidate in names:
        target = runs_dir / candidate
        if os.path.lexists(target):
            continue
        try:
            os.rename(tmp, target)
            return target
        except OSError:
            # Another writer took the name between the check and the rename: try the next.
            if not os.path.lexists(target):
                raise
    raise _taken(target)
