"""The `headlab` command line, on real models and real bundle folders."""

import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from interp.results import list_bundles
from tests.helpers import random_gpt2_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return random_gpt2_folder(tmp_path_factory.mktemp("gpt2"), n_layer=2, n_head=2, n_embd=16)


def test_help_lists_every_command():
    out = subprocess.run([str(Path(sys.executable).parent / "headlab"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("models", "heads", "patch"):
        assert command in out.stdout


def test_models_lists_the_embedded_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "minilm" in out and "zoo/ioi-small" in out and "(default)" in out


def test_heads_writes_a_bundle(folder, tmp_path, capsys):
    assert main(["heads", str(folder), "--out", str(tmp_path), "--n-sequences", "4", "--span", "5", "--quiet"]) == 0
    entries = list_bundles(tmp_path)
    assert len(entries) == 1 and entries[0].ok
    assert entries[0].bundle.meta["analysis"] == "heads"
    assert "induction" in capsys.readouterr().out


def test_patch_writes_a_bundle(folder, tmp_path, capsys):
    args = ["patch", str(folder), "--task", "induction", "--component", "z", "--per-position", "--n", "4", "--quiet",
            "--out", str(tmp_path)]
    assert main(args) == 0
    (entry,) = list_bundles(tmp_path)
    assert entry.bundle.meta["parameters"]["component"] == "z"
    assert entry.bundle.tensor("values").shape == (2, 8 + 8, 2)  # layer, pos (BOS + 8 + 7), head
    assert f"bundle: {entry.path}" in capsys.readouterr().out


def test_errors_are_one_line_and_exit_2(capsys, tmp_path):
    assert main(["heads", "zoo/nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown embedded model 'zoo/nope'" in err and "Traceback" not in err


def test_rollout_and_flow_write_bundles(folder, tmp_path):
    for command in ("rollout", "flow"):
        assert main([command, str(folder), "--texts", "w1 w2 w3", "w4 w5", "--quiet", "--out", str(tmp_path)]) == 0
    analyses = sorted(e.bundle.meta["analysis"] for e in list_bundles(tmp_path))
    assert analyses == ["flow", "rollout"]


def test_maps_on_minilm_writes_a_bundle(tmp_path, capsys):
    assert main(["maps", "minilm", "--relations", "general_copying", "--salient", "5.7", "--quiet",
                 "--out", str(tmp_path)]) == 0
    (entry,) = list_bundles(tmp_path)
    assert entry.bundle.meta["analysis"] == "maps"
    assert "salient_L5H7" in entry.bundle.table_names
    assert "MAPS top relation score: L5H7" in capsys.readouterr().out
