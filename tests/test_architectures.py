"""Architecture descriptions against Hugging Face: whole forward passes, per-head weights read
by hand from the HF tensors (grouped-query attention included), processed weights against
the queries the model computes, the BOS rule, and the load-time parity check."""

import pytest
import torch
from tokenizers import processors
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, OPTConfig

from interp import load_model
from interp.models import ParityError, UnsupportedArchitecture
from interp.models.architectures import describe
from recipes.common import build_word_tokenizer
from interp.models.tokens import encode_text
from tests.helpers import FAMILIES, byte_bpe_tokenizer, random_model_folder

# Shapes and seeds differ between families on purpose.
SHAPES = {
    "gpt2": dict(n_layers=3, n_heads=4, d_model=48, d_mlp=96, seed=1),
    "gpt_neox": dict(n_layers=2, n_heads=4, d_model=64, d_mlp=80, seed=2),
    "llama": dict(n_layers=2, n_heads=6, n_kv_heads=2, d_model=48, d_mlp=72, seed=3),
    "qwen2": dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, d_mlp=64, seed=4),
    "gemma2": dict(n_layers=3, n_heads=4, n_kv_heads=2, d_model=48, d_head=16, d_mlp=64, seed=5),
    "mistral": dict(n_layers=2, n_heads=4, n_kv_heads=1, d_model=40, d_mlp=64, seed=6),
}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(family, folder, plain HF model, hooked model)."""
    name = request.param
    folder = random_model_folder(tmp_path_factory.mktemp(name), name, **SHAPES[name])
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return name, folder, hf, load_model(folder, device="cpu")


def _tokens(model, batch=3, n_pos=13, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.cfg.d_vocab, (batch, n_pos), generator=gen)


def test_hooked_and_plain_forward_equal_hugging_face(family):
    name, _, hf, model = family
    tokens = _tokens(model)
    with torch.no_grad():
        expected = hf(tokens).logits
        hooked, plain = model(tokens), model.functional().logits(tokens)
    assert expected.abs().max() > 2, "weights large enough for sizeable logits"
    assert torch.allclose(hooked, expected, atol=1e-4 * expected.abs().max())
    assert torch.allclose(plain, expected, atol=1e-4 * expected.abs().max())


def test_reusing_buffers_gives_the_same_mlp_outputs_and_releases_its_buffer(family, monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # F.linear's path: oneDNN's has no buffers
    _, _, _, model = family
    f = model.functional()
    gen = torch.Generator().manual_seed(1)
    big, small = (torch.randn(shape, generator=gen) * 3 for shape in ((2, 3, 7, model.cfg.d_model), (5, model.cfg.d_model)))
    with torch.no_grad():
        expected = [f.mlp(0, big), f.mlp(1, small), f.logits(_tokens(model))]
        with f.reusing_buffers():
            # a smaller call after a larger one reads the front of the same buffer
            got = [f.mlp(0, big), f.mlp(1, small), f.logits(_tokens(model))]
            assert f._scratch.buffers["hidden"].numel() >= 2 * 3 * 7 * model.cfg.d_mlp
            f.mlp(0, small)
            assert torch.equal(got[0], expected[0]), "an output is not overwritten by later calls"
        assert f._scratch.buffers is None
    for e, g in zip(expected, got):
        assert torch.equal(e, g)  # the same kernels: bitwise equal
    # with gradients the buffer is not used: the graph keeps the hidden layer
    x = big.clone().requires_grad_(True)
    with f.reusing_buffers():
        f.mlp(0, x).sum().backward()
        assert f._scratch.buffers == {}
    reference = big.clone().requires_grad_(True)
    f.mlp(0, reference).sum().backward()
    assert torch.equal(x.grad, reference.grad)


def test_config_reads_the_family(family):
    name, _, hf, model = family
    c, shape = model.cfg, SHAPES[name]
    assert c.family == name and c.n_layers == shape["n_layers"] and c.n_heads == shape["n_heads"]
    assert c.n_kv_heads == shape.get("n_kv_heads", shape["n_heads"]) if name not in ("gpt2", "gpt_neox") else True
    assert c.parallel == (name == "gpt_neox")
    if name == "gemma2":
        assert model.arch.sliding_window[0] == 4 and model.arch.attn_softcap == 50.0
        assert model.arch.attn_scale[0] == pytest.approx(16 ** -0.5)
    if name == "gpt_neox":
        assert model.arch.rotary_dim == model.cfg.d_head // 2


def _hf_head_weights(name, hf, layer, head, kv, dh, d):
    """(W_Q, W_K, W_V, W_O, b_K) of one query head, by hand from the Hugging Face tensors."""
    rows_q, rows_kv = slice(head * dh, (head + 1) * dh), slice(kv * dh, (kv + 1) * dh)
    if name == "gpt2":
        attn = hf.transformer.h[layer].attn
        w, b = attn.c_attn.weight.detach(), attn.c_attn.bias.detach()  # Conv1D [d, 3d]
        return (w[:, :d][:, rows_q], w[:, d:2 * d][:, rows_kv], w[:, 2 * d:][:, rows_kv],
                attn.c_proj.weight.detach()[rows_q], b[d:2 * d][rows_kv])
    if name == "gpt_neox":
        attn = hf.gpt_neox.layers[layer].attention
        w = attn.query_key_value.weight.detach().view(-1, 3, dh, d)  # rows grouped per head: q, k, v
        b = attn.query_key_value.bias.detach().view(-1, 3, dh)
        return w[head, 0].T, w[kv, 1].T, w[kv, 2].T, attn.dense.weight.detach()[:, rows_q].T, b[kv, 1]
    attn = hf.model.layers[layer].self_attn
    b_k = attn.k_proj.bias.detach()[rows_kv] if attn.k_proj.bias is not None else torch.zeros(dh)
    return (attn.q_proj.weight.detach()[rows_q].T, attn.k_proj.weight.detach()[rows_kv].T,
            attn.v_proj.weight.detach()[rows_kv].T, attn.o_proj.weight.detach()[:, rows_q].T, b_k)


def test_per_head_weights_equal_the_hugging_face_tensors(family):
    name, _, hf, model = family
    c = model.cfg
    group = c.n_heads // c.n_kv_heads
    for layer in range(c.n_layers):
        for head in range(c.n_heads):
            kv = head // group
            w_q, w_k, w_v, w_o, b_k = _hf_head_weights(name, hf, layer, head, kv, c.d_head, c.d_model)
            assert torch.equal(model.W_Q(layer, head), w_q)
            assert torch.equal(model.W_K(layer, head), w_k), f"query head {head} reads key/value head {kv}"
            assert torch.equal(model.W_V(layer, head), w_v)
            assert torch.equal(model.W_O(layer, head), w_o)
            assert torch.equal(model.b_K(layer, head), b_k)
            assert torch.allclose(model.OV(layer, head).AB, w_v @ w_o, atol=1e-5)
            assert torch.allclose(model.QK(layer, head).AB, w_q @ w_k.T, atol=1e-5)
        assert model.W_K(layer).shape == (c.n_heads, c.d_model, c.d_head), "one matrix per query head"
        assert model.W_V(layer, kv_heads=True).shape == (c.n_kv_heads, c.d_model, c.d_head)
        assert torch.equal(model.W_K(layer, c.n_kv_heads - 1, kv_heads=True),
                           model.W_K(layer, c.n_heads - 1))


def test_processed_weights_compute_the_models_queries_and_keys(family):
    """q = norm(x) @ W_Q + b_Q with the norm's own scale and bias left out: the processed
    weights carry them (hook_q and hook_k are before rotary embeddings)."""
    name, _, hf, model = family
    tokens = _tokens(model, batch=2, n_pos=7)
    _, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        x = cache.resid_pre(layer).double()
        if model.arch.norm == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + model.arch.norm_eps).sqrt()
        w_q, b_q = model.W_Q(layer, processed=True).double(), model.b_Q(layer, processed=True).double()
        w_k = model.W_K(layer, processed=True, kv_heads=True).double()
        b_k = model.b_K(layer, processed=True, kv_heads=True).double()
        q = torch.einsum("bpd,hde->bphe", x, w_q) + b_q
        k = torch.einsum("bpd,hde->bphe", x, w_k) + b_k
        assert torch.allclose(q.float(), cache.q(layer), atol=1e-4)
        assert torch.allclose(k.float(), cache.k(layer), atol=1e-4)
    assert not torch.allclose(model.W_Q(0, processed=True), model.W_Q(0), atol=1e-3), "the norm scale was folded in"


def test_gqa_errors_name_the_ranges(family):
    name, _, _, model = family
    c = model.cfg
    with pytest.raises(IndexError, match=rf"head {c.n_heads} is out of range: this model has heads 0\.\.{c.n_heads - 1}"):
        model.W_K(0, c.n_heads)
    with pytest.raises(IndexError, match=rf"heads 0\.\.{c.n_kv_heads - 1}"):
        model.W_V(0, c.n_kv_heads, kv_heads=True)
    with pytest.raises(IndexError, match=rf"key/value head {c.n_kv_heads} is out of range at k\(0, {c.n_kv_heads}\)"):
        model.run(_tokens(model), capture=[f"k(0, {c.n_kv_heads})"])


# ------------------------------------------------------------------ tokens: one BOS rule


def test_every_causal_family_gets_one_bos_token_first(family):
    name, _, _, model = family
    tokens, mask = model.tokenize(["w1 w2 w3", "w4"])
    tok = model.tokenizer
    first = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    assert (tokens[:, 0] == first).all()
    assert (tokens[:, 1:][mask[:, 1:]] != first).all(), "exactly one BOS"
    if name == "gpt_neox":  # TransformerLens's bridge would give Pythia no BOS at all
        assert tokens[0, 0] == tok.bos_token_id
    no_bos = model.to_tokens("w1 w2 w3", prepend_bos=False)
    assert torch.equal(no_bos[0], tokens[0, 1:])


def test_a_tokenizer_without_bos_puts_its_eos_first_and_one_with_neither_is_refused():
    tok = byte_bpe_tokenizer(["w1", "w2"])
    assert tok.bos_token_id is None
    ids = encode_text(tok, "w1 w2", is_causal=True)
    assert ids[0] == tok.eos_token_id and ids[1:] == tok("w1 w2", add_special_tokens=False)["input_ids"]
    tok.eos_token = None
    with pytest.raises(ValueError, match="neither a BOS nor an EOS token.*prepend_bos=False"):
        encode_text(tok, "w1 w2", is_causal=True)
    assert encode_text(tok, "w1 w2", is_causal=True, prepend_bos=False) == ids[1:]


def test_a_tokenizer_that_adds_bos_itself_still_gives_one(tmp_path):
    folder = random_model_folder(tmp_path, "llama", seed=7)
    tok = build_word_tokenizer([f"w{i}" for i in range(60)])
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)])
    assert tok("w1 w2")["input_ids"][0] == tok.bos_token_id, "this tokenizer adds BOS on its own"
    tok.save_pretrained(folder)
    model = load_model(folder, device="cpu")
    tokens = model.to_tokens("w1 w2")[0].tolist()
    assert tokens == [tok.bos_token_id, tok.convert_tokens_to_ids("w1"), tok.convert_tokens_to_ids("w2")]


# ------------------------------------------------------------------ the parity check


def test_parity_check_refuses_gpt2_without_attention_scaling(tmp_path):
    """TransformerLens 4.3's bridge always scales attention by 1/sqrt(d_head)."""
    folder = random_model_folder(tmp_path, "gpt2", scale_attn_weights=False, seed=8)
    with pytest.raises(ParityError, match=r"gpt2, torch.float32\): the hooked model's output differs from "
                                          r"Hugging Face's by up to \d"):
        load_model(folder, device="cpu")
    unchecked = load_model(folder, device="cpu", check=False)
    hf = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    tokens = _tokens(unchecked, batch=2, n_pos=9)
    with torch.no_grad():
        expected = hf(tokens).logits
        assert (unchecked(tokens) - expected).abs().max() > 1e-2, "the bridge is really off"
        # The plain-tensor forward reads the description, which has the right scale.
        assert torch.allclose(unchecked.functional().logits(tokens), expected, atol=1e-4 * expected.abs().max())


def test_parity_check_names_non_finite_weights(tmp_path):
    folder = random_model_folder(tmp_path, "llama", seed=12)
    hf = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        hf.model.layers[1].mlp.down_proj.weight[3, 5] = float("nan")
    hf.save_pretrained(folder)
    with pytest.raises(ParityError, match=r"the Hugging Face model itself gives non-finite outputs \(NaN or inf\)"):
        load_model(folder, device="cpu")


def test_undescribed_families_are_refused_by_name(tmp_path):
    OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
              word_embed_proj_dim=16).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitecture, match=r"model_type 'opt'; described families: bert, gemma2, gpt2"):
        load_model(tmp_path, device="cpu")
    with pytest.raises(UnsupportedArchitecture, match="with cross-attention"):
        describe(GPT2Config(add_cross_attention=True))


def test_bad_load_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown backend 'tl'; backends: lens"):
        load_model("zoo/induction-2l", backend="tl")
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model("zoo/induction-2l", dtype=torch.int8)
