"""`headlab sae train | eval | features` on a small random GPT-2: the bundles hold the SAE,
its curves, its evaluation and its feature tables, checked against the SAE read back and run
by hand on activations taken with plain PyTorch hooks on the Hugging Face model."""

import pytest
import torch
from transformers import GPT2LMHeadModel

from analyses.sae.features import load_sae_from_bundle
from analyses.sae.run import corpus_texts, read_sae
from analyses.sae.saelens_io import load_sae
from app.cli import main
from interp import load_model
from interp.results import list_bundles
from tests.helpers import random_model_folder

COMMON = ["--corpus", "random", "--n-texts", "48", "--context-size", "12", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model folder, runs folder, the sae-train bundle, the SAELens copy)."""
    root = tmp_path_factory.mktemp("sae-cli")
    folder = random_model_folder(root / "gpt2", "gpt2", n_layers=2, n_heads=2, d_model=16, seed=4)
    runs, copy = root / "runs", root / "saelens-copy"
    assert main(["sae", "train", str(folder), "--site", "blocks.1.hook_resid_pre", "--d-sae", "32", "--k", "4",
                 "--tokens", "2048", "--batch-size", "128", "--eval-fraction", "0.25", "--saelens", str(copy),
                 "--out", str(runs), *COMMON]) == 0
    (entry,) = list_bundles(runs)
    return folder, runs, entry, copy


def resid_pre_1(folder, tokens):
    """The residual stream entering block 1, from a forward hook on the Hugging Face model."""
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    seen = {}
    hf.transformer.h[1].register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        hf(tokens)
    return seen["x"]


def test_train_writes_the_sae_its_curves_and_its_evaluation(trained):
    folder, runs, entry, copy = trained
    meta = entry.bundle.meta
    assert meta["analysis"] == "sae-train" and meta["parameters"]["site"] == "resid_pre(1)"
    training = entry.bundle.table("training")
    assert training["step"].tolist() == list(range(16)) and (training["l0"] == 4).all()
    sae = load_sae_from_bundle(entry.path)
    again = load_sae(copy)  # the --saelens copy holds the same SAE
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(sae, name), getattr(again, name))
    # The evaluation's explained variance and L0, recomputed on the held-out quarter by hand.
    model = load_model(folder, device="cpu")
    held_out = corpus_texts(model, "random", 48, 12, 0)[-12:]
    x = resid_pre_1(folder, held_out)[:, 1:].reshape(-1, 16)  # BOS excluded, as the SAE's tokens are
    x_hat = sae.decode(sae.encode(x))
    explained = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    evaluation = entry.bundle.table("evaluation").set_index("metric")["value"]
    assert evaluation["explained_variance"] == pytest.approx(explained.item(), abs=1e-4)
    assert evaluation["l0"] == pytest.approx(4.0)
    assert -1 < explained.item() < 1


def test_features_and_eval_read_the_latest_sae(trained):
    folder, runs, entry, _ = trained
    assert main(["sae", "features", str(folder), "--sae", "latest", "--out", str(runs), *COMMON]) == 0
    assert main(["sae", "eval", str(folder), "--sae", str(entry.path), "--out", str(runs), *COMMON]) == 0
    bundles = {e.bundle.meta["analysis"]: e for e in list_bundles(runs)}
    assert set(bundles) == {"sae-train", "sae-features", "sae-eval"}
    features = bundles["sae-features"].bundle.table("features")
    sae = read_sae(entry.path)
    model = load_model(folder, device="cpu")
    x = resid_pre_1(folder, corpus_texts(model, "random", 48, 12, 0))[:, 1:].reshape(-1, 16)
    density = (sae.encode(x) > 0).double().mean(0)
    torch.testing.assert_close(torch.tensor(features["density"].values), density, atol=1e-12, rtol=0)
    assert torch.equal(read_sae(bundles["sae-features"].path).W_dec, sae.W_dec)


def test_bad_sae_commands_are_one_line_errors(trained, tmp_path, capsys):
    folder, runs, _, _ = trained
    cases = [
        (["sae", "features", str(folder), "--out", str(tmp_path), *COMMON], "--sae latest: no sae train bundle"),
        (["sae", "eval", str(folder), "--sae", str(tmp_path), "--out", str(runs), *COMMON],
         "is neither an SAE bundle (meta.json) nor a SAELens folder (cfg.json)"),
        (["sae", "train", str(folder), "--corpus", str(tmp_path / "none.txt"), "--out", str(tmp_path)],
         "is neither 'random' nor a text file"),
        (["sae", "train", str(folder), "--out", str(tmp_path)], "is not an embedded model, so it ships no corpus"),
        (["sae", "train", str(folder), "--site", "resid_pre(7)", "--out", str(tmp_path), *COMMON], "layer 7"),
        (["sae", "train", str(folder), "--architecture", "gated", "--out", str(tmp_path)], "invalid choice: 'gated'"),
        (["sae", "train", str(folder), "--d-sae", "0", "--out", str(tmp_path), *COMMON],
         "d_sae (--d-sae) must be an int >= 1, got 0"),
    ]
    for argv, message in cases:
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's own refusals
            code = stop.code
        assert code == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
