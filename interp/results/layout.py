"""On-disk layout of a result bundle, shared by the writer and the reader.

A bundle is one folder::

    meta.json                analysis, model, task, parameters, seed, headlab_version,
                             created (UTC, ISO 8601) and contents (the manifest)
    tables/<name>.parquet    one pandas DataFrame each
    tensors.safetensors      every tensor, stored under its name
    figures/<name>.json      one plotly figure each, in plotly's own JSON format

``meta["contents"]`` lists the names of the tables, tensors and figures and records the size
in bytes of every file besides meta.json, so that a half-deleted or truncated bundle is
detected without loading any of it::

    {"tables": ["scores"], "tensors": ["pattern"], "figures": [],
     "files": {"tables/scores.parquet": 2345, "tensors.safetensors": 1200}}
"""

import re

META_FILE = "meta.json"
TENSORS_FILE = "tensors.safetensors"
PART_KINDS = ("tables", "tensors", "figures")
REQUIRED_META = ("analysis", "model")
# Keys that write_bundle fills in itself; a caller's meta may not carry them.
LIBRARY_META = ("headlab_version", "created", "contents")

_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


def is_safe_name(name: object) -> bool:
    """Whether `name` may name a bundle or a part of one: 1-128 letters, digits, '_', '-'
    or '.', not starting with '.' (so no hidden files, no '..', no path separators)."""
    return isinstance(name, str) and _SAFE_NAME.fullmatch(name) is not None


def check_name(name: object, what: str) -> None:
    """Raise ValueError unless `name` is a safe name (see `is_safe_name`); `what` says
    which name it is, e.g. "table name"."""
    if not is_safe_name(name):
        raise ValueError(
            f"{what} must be 1-128 letters, digits, '_', '-' or '.', not starting with '.'; "
            f"got {name!r}"
        )


def part_file(kind: str, name: str) -> str:
    """Path, relative to the bundle folder, of the file holding part `name` of `kind`
    ("tables", "tensors" or "figures")."""
    if kind == "tables":
        return f"tables/{name}.parquet"
    if kind == "figures":
        return f"figures/{name}.json"
    if kind == "tensors":
        return TENSORS_FILE
    raise ValueError(f"kind must be one of {PART_KINDS}, got {kind!r}")
