"""SAELens's folder format: files written by SAELens 6.54.12 itself (tests/fixtures/saelens,
made by benchmarks/saelens_interop.py) load and give SAELens's outputs; ours round-trip and
carry the fields SAELens writes; broken folders are refused clearly."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import analyses.sae.saelens_io as saelens_io
from analyses.sae import JumpReLUSAE, make_sae
from analyses.sae.saelens_io import load_sae, load_sparsity, save_sae

FIXTURES = Path(__file__).parent / "fixtures" / "saelens"
SAELENS_WRITTEN = sorted(p.name for p in FIXTURES.iterdir())
KWARGS = {"standard": {}, "topk": dict(k=3), "batchtopk": dict(k=3), "jumprelu": {}}


def test_fixtures_cover_every_architecture():
    assert {"standard", "topk", "batchtopk", "jumprelu", "topk_rescaled", "standard_no_b_dec_input"} <= set(SAELENS_WRITTEN)


@pytest.mark.parametrize("name", SAELENS_WRITTEN)
def test_saelens_written_sae_gives_saelens_outputs(name):
    sae = load_sae(FIXTURES / name)
    io = load_file(str(FIXTURES / name / "io.safetensors"))
    assert (io["feature_acts"] != 0).any(), "the fixture exercises no latent"
    with torch.no_grad():
        f = sae.encode(io["x"])
        assert torch.allclose(f, io["feature_acts"], rtol=1e-5, atol=1e-6)
        assert torch.allclose(sae.decode(f), io["sae_out"], rtol=1e-5, atol=1e-6)
        assert torch.allclose(sae(io["x"]), io["forward"], rtol=1e-5, atol=1e-6)


def test_saelens_batchtopk_file_is_a_jumprelu_with_one_threshold():
    sae = load_sae(FIXTURES / "batchtopk")
    assert isinstance(sae, JumpReLUSAE)
    assert torch.all(sae.threshold == 0.25)
    assert sae.cfg.metadata["training_architecture"] == "batchtopk"


@pytest.mark.parametrize("arch", list(KWARGS))
def test_round_trip_and_saelens_fields(arch, tmp_path):
    sae = make_sae(arch, d_in=16, d_sae=32, seed=1, **KWARGS[arch])
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if arch == "batchtopk":
            sae.topk_threshold.fill_(0.125)
    sparsity = torch.linspace(-5, 0, 32)
    save_sae(sae, tmp_path / "sae", sparsity=sparsity)
    loaded = load_sae(tmp_path / "sae")
    saved_as = "jumprelu" if arch == "batchtopk" else arch
    assert loaded.architecture == saved_as
    x = torch.randn(20, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), sae(x))  # BatchTopK's encode is already its JumpReLU form
        assert torch.equal(loaded.encode(x), sae.encode(x))
    assert torch.equal(load_sparsity(tmp_path / "sae"), sparsity)
    # the same top-level fields, metadata version fields and tensors as SAELens's own file
    ours = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    theirs = json.loads((FIXTURES / arch / "cfg.json").read_text())
    assert set(ours) == set(theirs)
    assert {"sae_lens_version", "sae_lens_training_version"} <= set(ours["metadata"])
    assert ours["metadata"]["training_architecture"] == arch
    assert set(load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))) == set(
        load_file(str(FIXTURES / arch / "sae_weights.safetensors")))


def test_metadata_and_dtype_survive(tmp_path):
    sae = make_sae("topk", d_in=8, d_sae=16, k=2, dtype="float64",
                   metadata={"model_name": "zoo/ioi-small", "hook_name": "blocks.1.hook_z", "hook_head_index": None})
    save_sae(sae, tmp_path / "a")
    loaded = load_sae(tmp_path / "a")
    assert loaded.W_enc.dtype == torch.float64 and loaded.cfg.metadata["hook_name"] == "blocks.1.hook_z"
    assert load_sae(tmp_path / "a", dtype="float32").W_dec.dtype == torch.float32


def broken(tmp_path, edit_cfg=None, edit_weights=None):
    folder = tmp_path / "broken"
    shutil.copytree(FIXTURES / "topk", folder)
    if edit_cfg:
        cfg = json.loads((folder / "cfg.json").read_text())
        edit_cfg(cfg)
        (folder / "cfg.json").write_text(json.dumps(cfg))
    if edit_weights:
        edit_weights(folder / "sae_weights.safetensors")
    return folder


def test_unknown_architecture(tmp_path):
    folder = broken(tmp_path, edit_cfg=lambda c: c.update(architecture="matryoshka"))
    with pytest.raises(ValueError, match=r"unknown SAE architecture 'matryoshka'; known: \['batchtopk', 'jumprelu', 'standard', 'topk'\]"):
        load_sae(folder)


@pytest.mark.parametrize("field", ["d_in", "architecture", "k"])
def test_missing_field(tmp_path, field):
    folder = broken(tmp_path, edit_cfg=lambda c: c.pop(field))
    with pytest.raises(ValueError, match=f"lacks .*'{field}'"):
        load_sae(folder)


def test_truncated_weights_file(tmp_path):
    def truncate(path):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or not a safetensors file"):
        load_sae(broken(tmp_path, edit_weights=truncate))


def test_shape_mismatch_and_missing_tensor(tmp_path):
    def widen(path):
        w = load_file(str(path))
        w["W_enc"] = torch.zeros(16, 33)
        save_file(w, str(path))
    with pytest.raises(ValueError, match=r"W_enc .* shape \[16, 33\].*needs \[16, 32\]"):
        load_sae(broken(tmp_path, edit_weights=widen))

    def drop(path):
        w = load_file(str(path))
        del w["b_dec"]
        save_file(w, str(path))
    shutil.rmtree(tmp_path / "broken")
    with pytest.raises(ValueError, match=r"holds tensors \['W_dec', 'W_enc', 'b_enc'\].*needs"):
        load_sae(broken(tmp_path, edit_weights=drop))


def test_missing_files_and_unsupported_normalisation(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cfg.json"):
        load_sae(tmp_path)
    folder = broken(tmp_path, edit_cfg=lambda c: c.update(normalize_activations="layer_norm"))
    with pytest.raises(ValueError, match="normalize_activations='layer_norm' is not supported"):
        load_sae(folder)


def test_write_is_atomic(tmp_path, monkeypatch):
    first = make_sae("standard", d_in=4, d_sae=8, seed=1)
    save_sae(first, tmp_path / "sae")

    def fail(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(saelens_io, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_sae(make_sae("standard", d_in=4, d_sae=8, seed=2), tmp_path / "sae")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temporary folder left behind
    assert torch.equal(load_sae(tmp_path / "sae").W_dec, first.W_dec)  # the old SAE is intact
