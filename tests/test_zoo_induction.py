"""`zoo/induction-2l` and its recipe: the card's heads on fresh probes (through the head
detectors and through plain Hugging Face attention), the ablation, and the recipe itself."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
from transformers import GPT2LMHeadModel

from analyses.heads import detect_heads
from interp import load_model
from interp.models.ablation import ablation
from recipes import induction
from interp.zoo.registry import get_embedded

FRESH_SEED = 4242  # neither the recipe's training seed nor the card's probe seed
N_SEQUENCES, SPAN = 100, 20


@pytest.fixture(scope="module")
def card() -> dict:
    card = get_embedded("zoo/induction-2l").card()
    assert FRESH_SEED not in (card["probe"]["seed"], card["recipe"]["seed"])
    return card


@pytest.fixture(scope="module")
def model():
    return load_model("zoo/induction-2l", device="cpu")


@pytest.fixture(scope="module")
def scores(model):
    return detect_heads(model, n_sequences=N_SEQUENCES, span=SPAN, seed=FRESH_SEED, progress=False)


def _fresh_repeats(vocab: list[int], bos: int, n: int, span: int, seed: int) -> torch.Tensor:
    """`[n, 1 + 2 * span]`: BOS + a span of distinct random tokens + the same span again."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        span_ids = rng.sample(vocab, span)
        rows.append([bos, *span_ids, *span_ids])
    return torch.tensor(rows)


def test_card_heads_are_the_top_heads_on_fresh_probes(card, scores):
    prev, ind = tuple(card["previous_token_head"]), tuple(card["induction_head"])
    assert prev[0] == 0 and ind[0] == 1
    top_prev = scores.top("previous_token").iloc[0]
    assert (top_prev["layer"], top_prev["head"]) == prev and top_prev["score"] > 0.9
    # Every layer-1 head does induction here, nearly evenly: the card lists them all, and its
    # strongest one stays within noise of the top on other probes.
    induction = scores["induction"]
    assert {tuple(h) for h in card["induction_heads"]} == {tuple(h) for h in (induction > 0.5).nonzero().tolist()}
    assert induction[ind] > 0.8 and induction[ind] > induction.max() - 0.03
    assert all(induction[tuple(h)] > 0.8 for h in card["induction_heads"])
    assert induction[0].max() < 0.1 and scores["previous_token"][1].max() < 0.1
    # The card's numbers were measured on other probes; they agree with these.
    for kind in ("previous_token", "induction"):
        torch.testing.assert_close(scores[kind], torch.tensor(card["scores"][kind]), atol=0.03, rtol=0)


def test_circuit_in_plain_hugging_face_attention(card):
    """The same facts read from Hugging Face's own attention weights, without headlab's code."""
    folder = get_embedded("zoo/induction-2l").folder
    hf = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    vocab = list(range(3, hf.config.vocab_size))  # ids 0-2 are <bos> <pad> <unk>
    tokens = _fresh_repeats(vocab, bos=0, n=50, span=SPAN, seed=FRESH_SEED + 1)
    with torch.no_grad():
        out = hf(tokens, output_attentions=True)
    (l0, h0), (l1, h1) = card["previous_token_head"], card["induction_head"]
    repeat = torch.arange(1 + SPAN, 1 + 2 * SPAN)
    induction = out.attentions[l1][:, h1, repeat, repeat - SPAN + 1].mean()
    assert induction > 0.8
    content = torch.arange(2, 1 + 2 * SPAN)
    assert out.attentions[l0][:, h0, content, content - 1].mean() > 0.5
    # In-context learning: the repeat (after its unpredictable first token) is predicted well.
    loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    first, repeated = loss[:, :SPAN].mean(), loss[:, SPAN + 1:].mean()
    assert repeated < 0.5 and first > 0.8 * math.log(len(vocab))


def test_zeroing_the_previous_token_head_collapses_induction(model, card, scores):
    (l0, h0) = card["previous_token_head"]

    def ablated(head):
        return detect_heads(model, n_sequences=N_SEQUENCES, span=SPAN, seed=FRESH_SEED, kinds=["induction"],
                            interventions=ablation(model, [(l0, head)]), progress=False)["induction"]

    before = scores["induction"]
    for layer, head in card["induction_heads"]:
        assert ablated(h0)[layer, head] < 0.1 < 0.8 < before[layer, head]
    # Zeroing any other layer-0 head leaves the induction heads standing.
    others = [h for h in range(model.cfg.n_heads) if h != h0]
    for head in others:
        after = ablated(head)
        assert all(after[tuple(h)] > 0.8 for h in card["induction_heads"])


def test_sampled_sequences_mask_exactly_copied_tokens():
    """Every masked token continues an earlier occurrence of the token before it."""
    config = induction.InductionConfig()
    rng = random.Random(0)
    masked = 0
    for _ in range(200):
        tokens, mask = induction.sample_sequence(rng, config, first_id=3, bos_id=0)
        assert len(tokens) == len(mask) == config.n_positions and tokens[0] == 0 and not mask[0]
        assert all(3 <= t < 3 + config.vocab_size for t in tokens[1:])
        for i in (i for i, m in enumerate(mask) if m):
            masked += 1
            assert any(tokens[j] == tokens[i - 1] and tokens[j + 1] == tokens[i] for j in range(1, i - 1)), i
    assert masked > 200 * config.n_positions * 0.2


def test_recipe_is_deterministic():
    tiny = dataclasses.replace(induction.InductionConfig().shrunk(), steps=3)
    a, _, _ = induction.train(tiny, threads=1, log=lambda line: None)
    b, _, _ = induction.train(tiny, threads=1, log=lambda line: None)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_shrunk_recipe_still_learns_in_context():
    config = induction.InductionConfig().shrunk()
    model, tok, _ = induction.train(config, threads=1, log=lambda line: None)
    span = config.eval_span
    tokens = _fresh_repeats(list(range(3, len(tok))), bos=tok.bos_token_id, n=50, span=span, seed=FRESH_SEED)
    with torch.no_grad():
        out = model(tokens, output_attentions=True)
    first, repeated = induction.in_context_losses(out.logits, tokens, start=1, span=span)
    assert repeated < 0.25 * math.log(config.vocab_size) < first, (first, repeated)
    # The same two heads as in the full model, only at this small size.
    repeat = torch.arange(1 + span, 1 + 2 * span)
    assert out.attentions[0][:, :, repeat, repeat - 1].mean((0, 2)).max() > 0.5
    assert out.attentions[1][:, :, repeat, repeat - span + 1].mean((0, 2)).max() > 0.5
