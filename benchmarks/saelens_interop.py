"""headlab's SAE files against SAELens itself, both ways (not part of the normal test run).

    python benchmarks/saelens_interop.py                    # creates .venv-peers/saelens if needed
    python benchmarks/saelens_interop.py --write-fixtures   # also refresh tests/fixtures/saelens/

1. headlab -> SAELens: one SAE per architecture (d_in 16, d_sae 32, a few training steps so that
   every parameter is off its initial value) is saved with `save_sae`; SAELens 6.54.12's
   `SAE.load_from_disk` loads each folder in its own venv (a subprocess) and its encode, decode
   and forward outputs must equal headlab's to 1e-5.
2. SAELens -> headlab: SAELens builds one SAE per architecture (standard, topk, jumprelu; a
   BatchTopK and a TopK trained with rescale_acts_by_decoder_norm, both saved through
   `save_inference_model` as SAELens's trainer saves them), with random parameters, and writes
   them with its own writer; headlab's `load_sae` must reproduce SAELens's outputs to 1e-5.
   With --write-fixtures these folders, the inputs and SAELens's outputs become the fixtures that
   tests/test_sae_io.py checks without SAELens.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAELENS_PINS = [["torch==2.13.0"], ["sae-lens==6.54.12"]]
FIXTURES = ROOT / "tests" / "fixtures" / "saelens"
D_IN, D_SAE, N = 16, 32, 24


def worker(ours: Path, theirs: Path) -> None:
    """Runs in the SAELens venv: load headlab's folders, write SAELens's own."""
    import torch
    from safetensors.torch import load_file, save_file
    from sae_lens import SAE
    from sae_lens.saes import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, JumpReLUSAE, JumpReLUSAEConfig,
                               StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig, TopKTrainingSAE,
                               TopKTrainingSAEConfig)

    x = load_file(str(ours / "inputs.safetensors"))["x"]

    def outputs(sae):
        with torch.no_grad():
            f = sae.encode(x)
            return {"feature_acts": f.contiguous(), "sae_out": sae.decode(f).contiguous(), "forward": sae(x).contiguous()}

    for folder in sorted(p for p in ours.iterdir() if p.is_dir()):
        sae = SAE.load_from_disk(str(folder))
        result = outputs(sae)
        save_file(result, str(folder / "saelens_outputs.safetensors"))
        print(f"SAELens loaded headlab's {folder.name}: {type(sae).__name__}, L0 {(result['feature_acts'] != 0).float().sum(-1).mean():.2f}")

    gen = torch.Generator().manual_seed(0)

    def randomise(sae, threshold=None):
        with torch.no_grad():
            for name, p in sae.named_parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if name.startswith("W") else 0.1))
            if threshold is not None:
                sae.threshold.copy_(torch.rand(D_SAE, generator=gen) * threshold)
        return sae

    made = {
        "standard": randomise(StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE))),
        "topk": randomise(TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5))),
        "jumprelu": randomise(JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE)), threshold=0.5),
        "standard_no_b_dec_input": randomise(StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False))),
    }
    for name, sae in made.items():
        sae.save_model(str(theirs / name))
    trained = {
        "batchtopk": BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4)),
        "topk_rescaled": TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, rescale_acts_by_decoder_norm=True)),
    }
    for name, sae in trained.items():
        randomise(sae)
        if name == "batchtopk":
            sae.topk_threshold = torch.tensor(0.25, dtype=torch.double)
        sae.save_inference_model(str(theirs / name))
    for folder in sorted(p for p in theirs.iterdir() if p.is_dir()):
        sae = SAE.load_from_disk(str(folder))
        save_file({"x": x, **outputs(sae)}, str(folder / "io.safetensors"))
        print(f"SAELens wrote {folder.name}: architecture {json.loads((folder / 'cfg.json').read_text())['architecture']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-fixtures", action="store_true")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]))
        return

    sys.path.insert(0, str(ROOT))
    import torch
    from safetensors.torch import load_file, save_file

    from analyses.sae import make_sae
    from analyses.sae.saelens_io import load_sae, save_sae
    from analyses.sae.train import TrainConfig, train_saes
    from benchmarks.peers import peer_python

    python = peer_python("saelens", SAELENS_PINS)
    tmp = Path(tempfile.mkdtemp(prefix="saelens-interop-"))
    ours, theirs = tmp / "ours", tmp / "theirs"
    ours.mkdir()
    theirs.mkdir()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, D_IN, generator=gen) + 0.2
    save_file({"x": x}, str(ours / "inputs.safetensors"))
    kwargs = {"standard": dict(l1_coefficient=0.1), "topk": dict(k=5), "batchtopk": dict(k=4), "jumprelu": dict(l0_coefficient=0.1)}
    saes = {}
    for arch, kw in kwargs.items():
        sae = make_sae(arch, d_in=D_IN, d_sae=D_SAE, seed=2, **kw)
        batches = [torch.randn(64, D_IN, generator=gen) for _ in range(20)]
        train_saes(sae, batches, TrainConfig(total_training_steps=20, lr=3e-2, dead_feature_window=640), progress=False)
        with torch.no_grad():  # keep every latent of every architecture in play for the check
            sae.b_enc.add_(0.1)
        saes[arch] = sae
        save_sae(sae, ours / arch)

    subprocess.run([str(python), __file__, "--worker", str(ours), str(theirs)], check=True)

    failures = []
    print("\nheadlab -> SAELens (SAELens loads headlab's files):")
    for arch, sae in saes.items():
        theirs_out = load_file(str(ours / arch / "saelens_outputs.safetensors"))
        with torch.no_grad():
            f = sae.encode(x)
            mine = {"feature_acts": f, "sae_out": sae.decode(f), "forward": sae(x)}
        for key, value in mine.items():
            err = (value - theirs_out[key]).abs().max().item()
            ok = torch.allclose(value, theirs_out[key], rtol=1e-5, atol=1e-5)
            print(f"  {arch:10s} {key:13s} max |diff| {err:.1e} {'ok' if ok else 'FAIL'}")
            if not ok:
                failures.append(f"{arch} {key}")
    print("SAELens -> headlab (headlab loads SAELens's files):")
    for folder in sorted(p for p in theirs.iterdir() if p.is_dir()):
        io = load_file(str(folder / "io.safetensors"))
        sae = load_sae(folder)
        with torch.no_grad():
            f = sae.encode(io["x"])
            mine = {"feature_acts": f, "sae_out": sae.decode(f), "forward": sae(io["x"])}
        for key, value in mine.items():
            err = (value - io[key]).abs().max().item()
            ok = torch.allclose(value, io[key], rtol=1e-5, atol=1e-5)
            print(f"  {folder.name:24s} ({sae.architecture}) {key:13s} max |diff| {err:.1e} {'ok' if ok else 'FAIL'}")
            if not ok:
                failures.append(f"{folder.name} {key}")
    if args.write_fixtures:
        if FIXTURES.exists():
            shutil.rmtree(FIXTURES)
        for folder in sorted(p for p in theirs.iterdir() if p.is_dir()):
            shutil.copytree(folder, FIXTURES / folder.name)
        print(f"fixtures written to {FIXTURES.relative_to(ROOT)}")
    shutil.rmtree(tmp)
    if failures:
        sys.exit(f"FAILED: {failures}")
    print("all equal within 1e-5")


if __name__ == "__main__":
    main()
