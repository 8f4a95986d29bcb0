"""Per-head patterns and QK/OV summaries (analyses.head_patterns)."""

import pytest
import torch

from analyses.head_patterns import head_patterns
from interp import load_model
from interp.cli import main as cli_main
from interp.results import read_bundle
from interp.zoo import get_embedded


@pytest.fixture(scope="module")
def induction():
    return load_model("zoo/induction-2l", device="cpu")


def test_summaries_equal_full_vocabulary_references(induction):
    result = head_patterns(induction, ["t1 t2 t3 t1 t2"])
    circuits = result.circuits.set_index(["layer", "head"])
    for layer in range(induction.cfg.n_layers):
        for head in range(induction.cfg.n_heads):
            full = (induction.W_E() @ induction.W_V(layer, head) @ induction.W_O(layer, head) @ induction.W_U()).double()
            eig = torch.linalg.eigvals(full)  # [d_vocab]: the vocab x vocab circuit, built in full
            row = circuits.loc[(layer, head)]
            assert row["ov_copying"] == pytest.approx((eig.real.sum() / eig.abs().sum()).item(), abs=1e-5)
            assert row["qk_norm"] == pytest.approx(induction.QK(layer, head).norm().item(), rel=1e-4)
            assert row["ov_norm"] == pytest.approx(induction.OV(layer, head).norm().item(), rel=1e-4)
    for layer, head in get_embedded("zoo/induction-2l").card()["induction_heads"]:
        assert circuits.loc[(layer, head), "ov_copying"] > 0.99  # induction heads copy what they attend to


def test_patterns_table_equals_the_cache(induction, tmp_path):
    texts = ["t1 t2 t3 t1 t2", "t7 t8 t7"]
    result = head_patterns(induction, texts)
    frame = result.to_frame()
    for prompt, text in enumerate(texts):
        tokens = induction.to_tokens(text)
        _, cache = induction.run_with_cache(tokens)
        n = tokens.shape[1]
        for layer in range(induction.cfg.n_layers):
            rows = frame[(frame["prompt"] == prompt) & (frame["layer"] == layer) & (frame["head"] == 3)]
            grid = torch.tensor(rows.sort_values(["query", "key"])["value"].to_numpy()).reshape(n, n)
            assert torch.allclose(grid.float(), cache.pattern(layer)[0, 3].float(), atol=1e-6)
    assert frame[(frame["prompt"] == 1)]["query_token"].iloc[0] == "<bos>"
    bundle = read_bundle(result.save(tmp_path))
    assert bundle.meta["analysis"] == "attention-patterns"
    assert set(bundle.table_names) == {"patterns", "qk_ov"}


def test_bad_input_and_cli(induction, tmp_path, capsys):
    with pytest.raises(ValueError, match="at least one prompt"):
        head_patterns(induction, [])
    with pytest.raises(ValueError, match="at most 8"):
        head_patterns(induction, ["t1"] * 9)
    with pytest.raises(IndexError, match="head 4"):
        head_patterns(induction, ["t1 t2"]).figure(layer=0, head=4)
    assert cli_main(["patterns", "zoo/induction-2l", "--out", str(tmp_path), "--quiet"]) == 0
    assert "highest OV copying scores: L1H" in capsys.readouterr().out
