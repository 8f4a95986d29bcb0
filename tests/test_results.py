"""Result bundles on real files: round trips, atomic writes, damaged bundles, listings.

The references are the objects handed to write_bundle and meta.json parsed with plain
`json`, never the reader's own earlier output.
"""

import json
import os
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

import interp.results.write as write_module
from interp.results import BundleEntry, BundleError, list_bundles, read_bundle, write_bundle

META = {"analysis": "heads", "model": "zoo/induction-2l", "task": None, "parameters": {"layers": [0, 1]}, "seed": 0}


def scores_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "layer": np.array([0, 0, 1], dtype=np.int64),
            "head": np.array([0, 1, 0], dtype=np.int32),
            "score": [0.5, np.nan, -1.25],
            "label": ["prev-token", "other", "induction"],
            "copying": [False, False, True],
        },
        index=pd.Index(["L0H0", "L0H1", "L1H0"], name="component"),
    )


def small_bundle(runs: Path, **kwargs) -> Path:
    """A bundle with one part of each kind."""
    return write_bundle(
        runs,
        META,
        tables={"scores": scores_frame()},
        tensors={"pattern": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)},
        figures={"heatmap": go.Figure(go.Heatmap(z=np.arange(6.0).reshape(2, 3)))},
        **kwargs,
    )


def listing(folder: Path) -> list[str]:
    """Every entry of `folder`, hidden ones included."""
    return sorted(os.listdir(folder))


# Round trips


def test_table_round_trip(tmp_path):
    frame = scores_frame()
    bundle = read_bundle(write_bundle(tmp_path, META, tables={"scores": frame}))
    assert bundle.table_names == ["scores"]
    pd.testing.assert_frame_equal(bundle.table("scores"), frame)


def test_tensor_round_trip_keeps_values_dtype_and_shape(tmp_path):
    base = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    tensors = {
        "transposed": base.t(),  # not contiguous
        "row0": base[0],  # views sharing one storage
        "row1": base[1],
        "same_a": base,  # one tensor under two names
        "same_b": base,
        "half": torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16),
        "ids": torch.tensor([[1, 2], [3, 2**40]], dtype=torch.int64),
        "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(0.1, dtype=torch.float64),
        "with_grad": torch.ones(2, requires_grad=True),
    }
    bundle = read_bundle(write_bundle(tmp_path, META, tensors=tensors))
    assert bundle.tensor_names == list(tensors)
    for name, expected in tensors.items():
        loaded = bundle.tensor(name)
        assert loaded.dtype == expected.dtype, name
        assert loaded.shape == expected.shape, name
        assert loaded.device.type == "cpu" and loaded.is_contiguous()
        assert torch.equal(loaded, expected.detach()), name


def test_tensor_file_gets_the_same_permissions_as_the_others(tmp_path):
    path = small_bundle(tmp_path)
    mode = (path / "meta.json").stat().st_mode & 0o777
    assert (path / "tensors.safetensors").stat().st_mode & 0o777 == mode


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_is_saved_from_cpu(tmp_path):
    tensor = torch.arange(6, dtype=torch.float16, device="cuda").reshape(2, 3)
    loaded = read_bundle(write_bundle(tmp_path, META, tensors={"t": tensor})).tensor("t")
    assert loaded.device.type == "cpu"
    assert torch.equal(loaded, tensor.cpu())


def test_figure_round_trip(tmp_path):
    z = np.random.default_rng(0).normal(size=(4, 5))
    y = np.array([0.5, 1.5, -2.0], dtype=np.float32)
    figure = go.Figure([go.Heatmap(z=z, x=list("abcde")), go.Scatter(x=[1, 2, 3], y=y, name="line")])
    figure.update_layout(title_text="scores")
    loaded = read_bundle(write_bundle(tmp_path, META, figures={"heatmap": figure})).figure("heatmap")
    assert isinstance(loaded, go.Figure)
    np.testing.assert_array_equal(loaded.data[0].z, z)
    assert list(loaded.data[0].x) == list("abcde")
    assert list(loaded.data[1].x) == [1, 2, 3]
    np.testing.assert_array_equal(loaded.data[1].y, y)
    assert loaded.data[1].name == "line"
    assert loaded.layout.title.text == "scores"


def test_bundle_with_no_parts(tmp_path):
    bundle = read_bundle(write_bundle(tmp_path, {"analysis": "a", "model": "m"}))
    assert (bundle.table_names, bundle.tensor_names, bundle.figure_names) == ([], [], [])
    assert listing(bundle.path) == ["meta.json"]


def test_unknown_part_name_is_a_key_error_listing_the_known(tmp_path):
    bundle = read_bundle(small_bundle(tmp_path))
    with pytest.raises(KeyError, match="scores"):
        bundle.table("nope")
    with pytest.raises(KeyError, match="pattern"):
        bundle.tensor("nope")
    with pytest.raises(KeyError, match="heatmap"):
        bundle.figure("nope")


# Meta


def test_meta_is_completed_and_kept(tmp_path):
    before = datetime.now(timezone.utc)
    path = write_bundle(tmp_path, {"analysis": "heads", "model": "zoo/induction-2l", "note": {"k": [1, "x"]}})
    after = datetime.now(timezone.utc)
    on_disk = json.loads((path / "meta.json").read_text())

    created = datetime.fromisoformat(on_disk["created"])
    assert created.utcoffset().total_seconds() == 0
    assert before <= created <= after
    assert path.name == f"heads-zoo_induction-2l-{created:%Y%m%dT%H%M%SZ}"
    try:
        expected_version = metadata.version("headlab")
    except metadata.PackageNotFoundError:
        expected_version = "unknown"
    assert on_disk["headlab_version"] == expected_version
    assert on_disk["note"] == {"k": [1, "x"]}
    assert (on_disk["task"], on_disk["parameters"], on_disk["seed"]) == (None, {}, None)
    assert read_bundle(path).meta == on_disk
    assert read_bundle(path).created == created


def test_version_is_unknown_when_not_installed(tmp_path, monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    path = write_bundle(tmp_path, META)
    assert json.loads((path / "meta.json").read_text())["headlab_version"] == "unknown"


def test_model_name_is_made_safe_for_the_folder_name(tmp_path):
    path = write_bundle(tmp_path, {"analysis": "flow maps", "model": "EleutherAI/pythia-70m"})
    assert path.name.startswith("flow_maps-EleutherAI_pythia-70m-")
    assert path.parent == tmp_path


@pytest.mark.parametrize(
    ("meta", "error", "fragment"),
    [
        ({"model": "m"}, ValueError, "'analysis'"),
        ({"analysis": "a"}, ValueError, "'model'"),
        ({"analysis": "a", "model": ""}, ValueError, "'model'"),
        ({"analysis": 3, "model": "m"}, ValueError, "'analysis'"),
        ({"analysis": "a", "model": "m", "created": "yesterday"}, ValueError, "created"),
        ({"analysis": "a", "model": "m", "parameters": {"w": torch.ones(2)}}, ValueError, "'parameters'"),
        ({"analysis": "a", "model": "m", "seed": float("nan")}, ValueError, "'seed'"),
        (["analysis", "model"], TypeError, "dict"),
    ],
)
def test_bad_meta_is_rejected_before_touching_the_disk(tmp_path, meta, error, fragment):
    runs = tmp_path / "runs"
    with pytest.raises(error, match=fragment):
        write_bundle(runs, meta)
    assert not runs.exists()


# Names


@pytest.mark.parametrize("bad", ["a/b", "..", "../escape", ".hidden", "", "a b", "x\\y", "/abs", 3])
@pytest.mark.parametrize("kind", ["tables", "tensors", "figures", "name"])
def test_unsafe_names_are_rejected(tmp_path, kind, bad):
    value = {"tables": scores_frame(), "tensors": torch.ones(1), "figures": go.Figure()}
    kwargs = {"name": bad} if kind == "name" else {kind: {bad: value[kind]}}
    with pytest.raises(ValueError, match="letters, digits"):
        write_bundle(tmp_path / "runs", META, **kwargs)
    assert listing(tmp_path) == []


def test_names_differing_only_in_case_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="case"):
        write_bundle(tmp_path, META, tables={"Scores": scores_frame(), "scores": scores_frame()})
    assert listing(tmp_path) == []


def test_explicit_name_is_used_and_never_overwritten(tmp_path):
    first = small_bundle(tmp_path, name="mine")
    assert first == tmp_path / "mine"
    meta_before = (first / "meta.json").read_text()
    with pytest.raises(FileExistsError, match="mine"):
        write_bundle(tmp_path, {"analysis": "other", "model": "m"}, name="mine")
    assert listing(tmp_path) == ["mine"]
    assert (first / "meta.json").read_text() == meta_before


def test_writes_in_the_same_second_get_distinct_folders(tmp_path, monkeypatch):
    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)

    monkeypatch.setattr(write_module, "datetime", FrozenClock)
    paths = [write_bundle(tmp_path, META, tables={"t": pd.DataFrame({"i": [i]})}) for i in range(3)]
    base = "heads-zoo_induction-2l-20240501T120000Z"
    assert [p.name for p in paths] == [base, f"{base}-2", f"{base}-3"]
    assert [read_bundle(p).table("t")["i"].tolist() for p in paths] == [[0], [1], [2]]
    assert listing(tmp_path) == sorted(p.name for p in paths)


# Atomic writes


@pytest.mark.parametrize(
    ("tables", "error"),
    [
        ({"scores": [1, 2, 3]}, TypeError),
        ([scores_frame()], TypeError),
        (scores_frame(), TypeError),
        ({"scores": pd.DataFrame({0: [1.0]})}, ValueError),
    ],
)
def test_wrong_part_types_are_rejected_and_leave_nothing(tmp_path, tables, error):
    small_bundle(tmp_path)
    before = listing(tmp_path)
    with pytest.raises(error):
        write_bundle(tmp_path, META, tables=tables)
    assert listing(tmp_path) == before


def test_table_failing_to_serialise_leaves_nothing(tmp_path):
    small_bundle(tmp_path)
    before = listing(tmp_path)
    mixed = pd.DataFrame({"value": [1, "one"]})  # pyarrow cannot store an int/str column
    with pytest.raises(Exception) as info:
        write_bundle(tmp_path, META, tables={"good": scores_frame(), "mixed": mixed})
    assert listing(tmp_path) == before
    if hasattr(info.value, "__notes__"):
        assert "table 'mixed'" in " ".join(info.value.__notes__)


def _fail_figures(monkeypatch):
    # Figures are written after tables and tensors, so those are on disk when this fires.
    def boom(self, *args, **kwargs):
        raise RuntimeError("figure writer broke")

    monkeypatch.setattr(go.Figure, "to_json", boom)


def _fail_tensors_with_interrupt(monkeypatch):
    import safetensors.torch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)


def _fail_rename(monkeypatch):
    # The very last step: everything else, meta.json included, is written.
    def refuse(*args, **kwargs):
        raise OSError("rename refused")

    monkeypatch.setattr(os, "rename", refuse)


@pytest.mark.parametrize("sabotage", [_fail_figures, _fail_tensors_with_interrupt, _fail_rename])
def test_failure_at_any_step_leaves_no_new_entry(tmp_path, monkeypatch, sabotage):
    small_bundle(tmp_path)
    before = listing(tmp_path)
    sabotage(monkeypatch)
    with pytest.raises((RuntimeError, KeyboardInterrupt, OSError)):
        small_bundle(tmp_path)
    assert listing(tmp_path) == before


# Damaged bundles


def _garbage_meta(path):
    (path / "meta.json").write_text("{not json")


def _meta_not_object(path):
    (path / "meta.json").write_text("[1, 2]")


def _meta_without_model(path):
    meta = json.loads((path / "meta.json").read_text())
    del meta["model"]
    (path / "meta.json").write_text(json.dumps(meta))


def _meta_without_manifest(path):
    meta = json.loads((path / "meta.json").read_text())
    del meta["contents"]
    (path / "meta.json").write_text(json.dumps(meta))


def _meta_deleted(path):
    (path / "meta.json").unlink()


def _table_deleted(path):
    (path / "tables" / "scores.parquet").unlink()


def _figure_deleted(path):
    (path / "figures" / "heatmap.json").unlink()


def _tensors_truncated(path):
    file = path / "tensors.safetensors"
    file.write_bytes(file.read_bytes()[:-10])


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (_garbage_meta, "meta.json"),
        (_meta_not_object, "JSON object"),
        (_meta_without_model, "'model'"),
        (_meta_without_manifest, "manifest"),
        (_meta_deleted, "meta.json is missing"),
        (_table_deleted, "tables/scores.parquet is missing"),
        (_figure_deleted, "figures/heatmap.json is missing"),
        (_tensors_truncated, "tensors.safetensors has"),
    ],
)
def test_damaged_bundle_raises_bundle_error_naming_the_folder(tmp_path, damage, fragment):
    path = small_bundle(tmp_path)
    damage(path)
    with pytest.raises(BundleError) as info:
        read_bundle(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)
    assert info.value.path == path


def test_missing_folder_and_plain_file_raise_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="no such folder"):
        read_bundle(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="not a folder"):
        read_bundle(tmp_path / "file")


def _overwrite(file: Path, offset: int, data: bytes) -> None:
    """Corrupt `file` in place, keeping its size."""
    raw = bytearray(file.read_bytes())
    start = offset % len(raw)
    raw[start : start + len(data)] = data
    file.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("kind", "file", "offset", "data"),
    [
        ("table", "tables/scores.parquet", -4, b"XXXX"),  # parquet's closing magic bytes
        ("tensor", "tensors.safetensors", 0, b"\xff" * 8),  # safetensors' header length
        ("figure", "figures/heatmap.json", 0, b"@"),
    ],
)
def test_corrupt_part_of_unchanged_size_fails_on_load(tmp_path, kind, file, offset, data):
    path = small_bundle(tmp_path)
    _overwrite(path / file, offset, data)
    bundle = read_bundle(path)  # sizes match: the damage shows only when the part is loaded
    load = {"table": bundle.table, "tensor": bundle.tensor, "figure": bundle.figure}[kind]
    name = {"table": "scores", "tensor": "pattern", "figure": "heatmap"}[kind]
    with pytest.raises(BundleError) as info:
        load(name)
    assert str(path) in str(info.value) and repr(name) in str(info.value)


def test_part_deleted_after_opening_fails_on_load(tmp_path):
    bundle = read_bundle(small_bundle(tmp_path))
    (bundle.path / "tensors.safetensors").unlink()
    with pytest.raises(BundleError, match="'pattern'"):
        bundle.tensor("pattern")


# Listing


def test_list_bundles_newest_first_with_bad_entries(tmp_path):
    good = [small_bundle(tmp_path, name=name) for name in ("first", "second", "third")]
    (tmp_path / "empty").mkdir()
    broken = small_bundle(tmp_path, name="broken")
    _garbage_meta(broken)
    future, past = datetime(2100, 1, 1).timestamp(), datetime(2000, 1, 1).timestamp()
    os.utime(tmp_path / "empty", (future, future))
    os.utime(broken, (past, past))
    (tmp_path / ".tmp-leftover").mkdir()
    (tmp_path / "notes.txt").write_text("not a bundle")

    entries = list_bundles(tmp_path)

    assert all(isinstance(entry, BundleEntry) for entry in entries)
    assert [entry.path.name for entry in entries] == ["empty", "third", "second", "first", "broken"]
    created = [json.loads((path / "meta.json").read_text())["created"] for path in good]
    assert created == sorted(created)  # an independent check that write order is time order
    for entry in entries:
        if entry.path.name in ("empty", "broken"):
            assert not entry.ok and entry.bundle is None
            assert str(entry.path) in entry.error
        else:
            assert entry.ok and entry.error is None
            assert entry.bundle.path == entry.path
            pd.testing.assert_frame_equal(entry.bundle.table("scores"), scores_frame())


def test_list_bundles_empty_missing_and_file(tmp_path):
    assert list_bundles(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="absent"):
        list_bundles(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        list_bundles(tmp_path / "file")
