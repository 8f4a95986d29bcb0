"""Per-head patterns and QK/OV summaries (analyses.head_patterns)."""

import pytest
import torch

from analyses.head_patterns import head_patterns
from interp import load_model
from app.cli import main as cli_main
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
    assert bundle.meta["analysis"] == "head-patterns"
    assert set(bundle.table_names) == {"patterns", "qk_ov"}


def test_bad_input_and_cli(induction, tmp_path, capsys):
    with pytest.raises(ValueError, match="at least one prompt"):
        head_patterns(induction, [])
    with pytest.raises(ValueError, match="at most 8"):
        head_patterns(induction, ["t1"] * 9)
    with pytest.raises(IndexError, match="head 4"):
        head_patterns(induction, ["t1 t2"]).figure(layer=0, head=4)
    assert cli_main(["head-patterns", "zoo/induction-2l", "--out", str(tmp_path), "--quiet"]) == 0
    assert "OV copying score: L1H" in capsys.readouterr().out


def _hf_head(hf, family: str, layer: int, head: int):
    """W_Q, W_K, W_V `[d_model, d_head]` (keys and values: the key/value head query head `head`
    reads) and W_O `[d_head, d_model]`, cut by hand from the Hugging Face projections."""
    c = hf.config
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rows = slice(head * d_head, (head + 1) * d_head)
    if family == "gpt_neox":
        attn = hf.gpt_neox.layers[layer].attention
        qkv = attn.query_key_value.weight.detach().view(c.num_attention_heads, 3, d_head, c.hidden_size)
        return qkv[head, 0].T, qkv[head, 1].T, qkv[head, 2].T, attn.dense.weight.detach()[:, rows].T
    attn = hf.model.layers[layer].self_attn
    kv = head // (c.num_attention_heads // c.num_key_value_heads)
    kv_rows = slice(kv * d_head, (kv + 1) * d_head)
    return (attn.q_proj.weight.detach()[rows].T, attn.k_proj.weight.detach()[kv_rows].T,
            attn.v_proj.weight.detach()[kv_rows].T, attn.o_proj.weight.detach()[:, rows].T)


@pytest.mark.parametrize("family,shape", [("llama", dict(n_layers=2, n_heads=6, n_kv_heads=2, d_model=48, seed=91)),
                                          ("gpt_neox", dict(n_layers=2, n_heads=4, d_model=32, seed=92))])
def test_every_query_head_against_hugging_face_tensors(family, shape, tmp_path):
    """Grouped-query attention and GPT-NeoX's interleaved q/k/v: every query head's QK/OV norms
    and OV copying score from matrices cut out of the HF checkpoint (the full vocab x vocab
    circuit built in full), and its patterns against HF's attention weights."""
    from transformers import AutoModelForCausalLM

    from tests.helpers import random_model_folder

    folder = random_model_folder(tmp_path / family, family, **shape)
    model = load_model(folder, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    texts = ["w1 w2 w3 w1 w2", "w7 w8 w7"]
    result = head_patterns(model, texts)
    circuits = result.circuits.set_index(["layer", "head"])
    assert len(circuits) == shape["n_layers"] * shape["n_heads"]
    E, U = hf.get_input_embeddings().weight.detach(), hf.get_output_embeddings().weight.detach().T
    for layer in range(shape["n_layers"]):
        for head in range(shape["n_heads"]):
            W_Q, W_K, W_V, W_O = _hf_head(hf, family, layer, head)
            eig = torch.linalg.eigvals((E @ W_V @ W_O @ U).double())
            row = circuits.loc[(layer, head)]
            assert row["ov_copying"] == pytest.approx((eig.real.sum() / eig.abs().sum()).item(), abs=1e-5)
            assert row["qk_norm"] == pytest.approx(torch.linalg.matrix_norm(W_Q @ W_K.T).item(), rel=1e-4)
            assert row["ov_norm"] == pytest.approx(torch.linalg.matrix_norm(W_V @ W_O).item(), rel=1e-4)
    assert circuits["ov_copying"].std() > 0.05 and circuits["qk_norm"].std() > 0
    frame = result.to_frame()
    for prompt, text in enumerate(texts):
        tokens = model.to_tokens(text)
        with torch.no_grad():
            attentions = hf(tokens, output_attentions=True).attentions
        n = tokens.shape[1]
        for layer in range(shape["n_layers"]):
            rows = frame[(frame["prompt"] == prompt) & (frame["layer"] == layer)].sort_values(["head", "query", "key"])
            grid = torch.tensor(rows["value"].to_numpy()).reshape(shape["n_heads"], n, n)
            torch.testing.assert_close(grid.float(), attentions[layer][0], atol=1e-5, rtol=0)
