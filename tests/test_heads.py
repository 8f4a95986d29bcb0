"""Head detectors against hand-built attention patterns, Hugging Face's own attention weights,
and bad input."""

import pytest
import torch
from transformers import AutoModelForCausalLM, BertModel, GPT2LMHeadModel

from analyses.heads import (KINDS, HeadScores, detect_heads, make_probe, pattern_scores,
                            probe_positions, random_prompts)
from interp import load_model
from interp.models.ablation import ablation
from interp.results import read_bundle
from interp.zoo.registry import get_embedded
from tests.helpers import random_gpt2, random_gpt2_folder, random_model_folder

# BOS + span (3 tokens) + repeat: positions 0 | 1 2 3 | 4 5 6
START, SPAN, N_POS = 1, 3, 7


def test_probe_positions_by_hand():
    q, k = probe_positions("previous_token", START, SPAN)
    assert q.tolist() == [2, 3, 4, 5, 6] and k.tolist() == [1, 2, 3, 4, 5]
    q, k = probe_positions("duplicate_token", START, SPAN)
    assert q.tolist() == [4, 5, 6] and k.tolist() == [1, 2, 3]
    q, k = probe_positions("induction", START, SPAN)
    assert q.tolist() == [4, 5, 6] and k.tolist() == [2, 3, 4]
    # TransformerLens's detector names mean the same.
    assert probe_positions("induction_head", START, SPAN)[1].tolist() == [2, 3, 4]


def _causal_uniform(n: int) -> torch.Tensor:
    return torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]


def _one_hot_rows(targets: dict[int, int], n: int) -> torch.Tensor:
    """Uniform causal attention, except rows `q` that put all their weight on `targets[q]`."""
    pattern = _causal_uniform(n)
    for q, k in targets.items():
        pattern[q] = 0
        pattern[q, k] = 1
    return pattern


def test_pattern_scores_on_hand_built_patterns():
    prev = _one_hot_rows({q: q - 1 for q in range(1, N_POS)}, N_POS)
    induction = _one_hot_rows({4: 2, 5: 3, 6: 4}, N_POS)
    duplicate = _one_hot_rows({4: 1, 5: 2, 6: 3}, N_POS)
    half_bos = 0.5 * prev + 0.5 * _one_hot_rows({q: 0 for q in range(N_POS)}, N_POS)
    uniform = _causal_uniform(N_POS)
    first = torch.stack([prev, induction, duplicate, half_bos, uniform])
    # In the second sequence the induction head attends only half-way.
    second = first.clone()
    second[1] = 0.5 * induction + 0.5 * uniform
    pattern = torch.stack([first, second])  # [batch 2, head 5, q 7, k 7]

    def score(kind):
        return pattern_scores(pattern, *probe_positions(kind, START, SPAN)).tolist()

    u_rep = (1 / 5 + 1 / 6 + 1 / 7) / 3  # uniform causal weight of queries 4, 5, 6 on any key
    u_prev = (1 / 3 + 1 / 4 + 1 / 5 + 1 / 6 + 1 / 7) / 5  # ... of queries 2..6
    # The induction head's previous-token score: queries 2, 3 are uniform in both sequences
    # (1/3, 1/4); queries 4-6 put nothing on their previous key in the first sequence and half
    # their uniform weight in the second.
    ind_prev = ((1 / 3 + 1 / 4) / 5 + ((1 / 3 + 1 / 4) + 0.5 * (1 / 5 + 1 / 6 + 1 / 7)) / 5) / 2
    expected = {
        "previous_token": [1, ind_prev, (1 / 3 + 1 / 4) / 5, 0.5, u_prev],
        "induction": [0, (1 + 0.5 + 0.5 * u_rep) / 2, 0, 0, u_rep],
        "duplicate_token": [0, 0.5 * u_rep / 2, 1, 0, u_rep],
    }
    for kind, values in expected.items():
        assert score(kind) == pytest.approx(values, abs=1e-6), kind


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return random_gpt2_folder(tmp_path_factory.mktemp("heads_gpt2"), n_layer=2, n_head=4, vocab=40)


@pytest.fixture(scope="module")
def small_gpt2(gpt2_folder):
    return load_model(gpt2_folder, device="cpu")


def _hf_attentions(auto_class, folder, tokens):
    """Attention weights of every layer from a fresh Hugging Face model (eager attention)."""
    hf = auto_class.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return hf(tokens, output_attentions=True).attentions


def _reference_scores(attentions, probe, kind):
    """Scores straight from Hugging Face attention weights `[batch, head, q, k]` per layer,
    written out as loops over the probe's span."""
    s, n = probe.start, probe.span
    if kind == "previous_token":
        pairs = [(q, q - 1) for q in range(s + 1, s + 2 * n)]
    elif kind == "duplicate_token":
        pairs = [(s + n + t, s + t) for t in range(n)]
    else:
        pairs = [(s + n + t, s + t + 1) for t in range(n)]
    return torch.stack([sum(att[:, :, q, k] for q, k in pairs).mean(0) / len(pairs) for att in attentions])


@pytest.mark.parametrize("family,shape", [("gpt2", dict(n_layers=2, n_heads=4, d_model=32, seed=41)),
                                          ("llama", dict(n_layers=2, n_heads=6, n_kv_heads=2, d_model=48, seed=42))])
def test_detect_heads_matches_hugging_face_attentions(family, shape, tmp_path):
    """On random models with peaked attention (random_model's weights), GQA included."""
    folder = random_model_folder(tmp_path / family, family, **shape)
    model = load_model(folder, device="cpu")
    scores = detect_heads(model, n_sequences=5, span=7, seed=3, batch_size=2, progress=False)
    probe = make_probe(model, 5, 7, seed=3)
    attentions = _hf_attentions(AutoModelForCausalLM, folder, probe.tokens)
    assert max(float(a.max()) for a in attentions) > 0.9, "some attention is far from uniform"
    for kind in KINDS:
        torch.testing.assert_close(scores[kind], _reference_scores(attentions, probe, kind), atol=1e-5, rtol=0)
    assert scores["induction"].shape == (2, shape["n_heads"])


def test_interventions_change_the_scores_as_hugging_face_with_the_head_removed(tmp_path):
    """Zeroing L0H1's z while scoring equals Hugging Face with L0H1's output columns zeroed."""
    folder = random_model_folder(tmp_path / "gpt2", "gpt2", n_layers=2, n_heads=4, d_model=32, seed=43)
    model = load_model(folder, device="cpu")
    scores = detect_heads(model, n_sequences=4, span=6, seed=1, interventions=ablation(model, [(0, 1)]), progress=False)
    probe = make_probe(model, 4, 6, seed=1)
    hf = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        hf.transformer.h[0].attn.c_proj.weight[8:16] = 0  # Conv1D rows of head 1 (d_head 8)
        attentions = hf(probe.tokens, output_attentions=True).attentions
    torch.testing.assert_close(scores["induction"], _reference_scores(attentions, probe, "induction"), atol=1e-5, rtol=0)
    plain = detect_heads(model, n_sequences=4, span=6, seed=1, progress=False)
    assert (plain["induction"][1] - scores["induction"][1]).abs().max() > 1e-3
    assert scores.parameters["interventions"] == ["Zero z(0, 1)"]


def test_probe_layout_causal(small_gpt2):
    probe = make_probe(small_gpt2, 6, 9, seed=1)
    tok = small_gpt2.tokenizer
    assert probe.tokens.shape == (6, 1 + 18) and probe.start == 1
    assert (probe.tokens[:, 0] == tok.bos_token_id).all()
    span = probe.tokens[:, 1:10]
    assert torch.equal(span, probe.tokens[:, 10:])
    assert all(len(set(row)) == 9 for row in span.tolist()), "span tokens are distinct"
    assert not set(span.flatten().tolist()) & set(tok.all_special_ids)
    assert torch.equal(probe.tokens, make_probe(small_gpt2, 6, 9, seed=1).tokens)
    assert not torch.equal(probe.tokens, make_probe(small_gpt2, 6, 9, seed=2).tokens)


def test_random_prompts_layout_and_bad_input(small_gpt2, minilm):
    tok = small_gpt2.tokenizer
    prompts = random_prompts(small_gpt2, 5, 7, seed=3)
    assert prompts.shape == (5, 8) and (prompts[:, 0] == tok.bos_token_id).all()
    assert not set(prompts[:, 1:].flatten().tolist()) & set(tok.all_special_ids)
    assert torch.equal(prompts, random_prompts(small_gpt2, 5, 7, seed=3))
    assert random_prompts(small_gpt2, 1).shape == (1, 32)  # context 32: BOS + 31 tokens
    encoder = random_prompts(minilm, 2)
    assert encoder.shape == (2, 65)  # [CLS] + 63 tokens + [SEP]
    assert (encoder[:, 0] == minilm.tokenizer.cls_token_id).all()
    assert (encoder[:, -1] == minilm.tokenizer.sep_token_id).all()
    with pytest.raises(ValueError, match="length must be at most 31"):
        random_prompts(small_gpt2, 2, 32)
    with pytest.raises(ValueError, match="length must be an int >= 1, got 0"):
        random_prompts(small_gpt2, 2, 0)


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm", device="cpu")


def test_encoder_probe_and_scores(minilm):
    tok = minilm.tokenizer
    probe = make_probe(minilm, 4, 10, seed=0)
    assert (probe.tokens[:, 0] == tok.cls_token_id).all() and (probe.tokens[:, -1] == tok.sep_token_id).all()
    assert probe.tokens.shape == (4, 22) and probe.start == 1
    assert not set(probe.tokens[:, 1:-1].flatten().tolist()) & set(tok.all_special_ids)
    scores = detect_heads(minilm, n_sequences=4, span=10, seed=0, progress=False)
    attentions = _hf_attentions(BertModel, get_embedded("minilm").folder, probe.tokens)
    for kind in KINDS:
        torch.testing.assert_close(scores[kind], _reference_scores(attentions, probe, kind), atol=1e-5, rtol=0)
    assert scores.parameters["is_causal"] is False


@pytest.mark.parametrize("kwargs, message", [
    ({"n_sequences": 0}, r"n_sequences \(--n-sequences\) must be an int >= 1, got 0"),
    ({"span": 1}, r"span \(--span\) must be an int >= 2, got 1"),
    ({"batch_size": 0}, r"batch_size \(--batch-size\) must be an int >= 1, got 0"),
    ({"kinds": ["induction", "copying"]}, "unknown head kind 'copying'; known kinds: previous_token, induction, duplicate_token"),
    ({"kinds": []}, "kinds must name at least one"),
    ({"span": 16}, "span 16 makes probes of 33 positions; .* takes at most 32, so span must be at most 15"),
])
def test_bad_input(small_gpt2, kwargs, message):
    with pytest.raises(ValueError, match=message):
        detect_heads(small_gpt2, progress=False, **kwargs)


def test_non_integer_span_is_a_type_error(small_gpt2):
    with pytest.raises(TypeError, match=r"span \(--span\) must be an int >= 2, got 2.5"):
        detect_heads(small_gpt2, span=2.5, progress=False)


def test_span_longer_than_vocabulary(tmp_path):
    tiny = random_gpt2(tmp_path, n_layer=1, n_head=2, vocab=5)
    with pytest.raises(ValueError, match="span must be at most the 5 plain tokens"):
        detect_heads(tiny, span=6, progress=False)


def test_head_scores_frame_top_figure_and_bundle(tmp_path):
    induction = torch.tensor([[0.1, 0.2], [0.9, 0.3]])
    previous = torch.tensor([[0.05, 0.8], [0.2, 0.1]])
    scores = HeadScores(scores={"induction": induction, "previous_token": previous}, model_name="toy", seed=7,
                        parameters={"span": 4})
    frame = scores.to_frame()
    assert list(frame.columns) == ["layer", "head", "kind", "score"] and len(frame) == 8
    row = frame[(frame["kind"] == "previous_token") & (frame["layer"] == 0) & (frame["head"] == 1)]
    assert row["score"].item() == pytest.approx(0.8)
    top = scores.top("induction", k=2)
    assert top[["layer", "head"]].values.tolist() == [[1, 0], [1, 1]]
    assert top.score.tolist() == pytest.approx([0.9, 0.3])
    assert scores.top("induction_head").values.tolist()[0][:2] == [1, 0]
    with pytest.raises(KeyError, match="no 'duplicate_token' scores here"):
        scores.top("duplicate_token")

    fig = scores.figure()
    assert [t.name for t in fig.data] == ["induction", "previous_token"]
    assert fig.data[0].text[1][0] == "L1H0" and fig.data[0].z[1][0] == pytest.approx(0.9)
    assert len(scores.figure(kind="previous_token").data) == 1

    bundle = read_bundle(scores.save(tmp_path / "runs"))
    assert bundle.meta["analysis"] == "heads" and bundle.meta["model"] == "toy" and bundle.meta["seed"] == 7
    torch.testing.assert_close(bundle.tensor("induction"), induction)
    assert bundle.table("scores").equals(frame)
    assert bundle.figure_names == []  # figures are drawn from the tables, by the library and the dashboard
