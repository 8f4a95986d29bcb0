"""Task builders: tokenisation, padding, answer positions and their errors."""

import pytest
import torch

from circuits.tasks import answer_token, from_prompt_pairs, induction_task
from tests.helpers import random_gpt2


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return random_gpt2(tmp_path_factory.mktemp("gpt2"), n_layer=2, n_head=2, n_embd=16)


def test_prompt_pairs_are_padded_and_read_at_their_last_token(model):
    task = from_prompt_pairs(model, ["w1 w2 w3", "w4 w5"], ["w1 w9 w3", "w7 w5"], ["w10", "w11"], ["w12", "w13"])
    bos, pad = model.tokenizer.bos_token_id, model.tokenizer.pad_token_id
    ids = lambda *words: [model.tokenizer.convert_tokens_to_ids(w) for w in words]  # noqa: E731
    assert task.clean.tolist() == [[bos, *ids("w1", "w2", "w3")], [bos, *ids("w4", "w5"), pad]]
    assert task.corrupt.tolist() == [[bos, *ids("w1", "w9", "w3")], [bos, *ids("w7", "w5"), pad]]
    assert task.answer_pos.tolist() == [3, 2]
    assert task.answer.tolist() == ids("w10", "w11") and task.wrong.tolist() == ids("w12", "w13")


def test_length_mismatch_shows_both_prompts_and_counts(model):
    with pytest.raises(ValueError, match=r"pair 1:\n  clean   \(3 tokens\): 'w4 w5'\n  corrupt \(4 tokens\): 'w4 w5 w6'"):
        from_prompt_pairs(model, ["w1", "w4 w5"], ["w2", "w4 w5 w6"], ["w1", "w1"], ["w2", "w2"])


def test_answers_must_be_single_tokens(model):
    with pytest.raises(ValueError, match=r"answer 'w1 w2' is not a single token.*\['w1', 'w2'\]"):
        answer_token(model, "w1 w2")


def test_empty_and_ragged_lists(model):
    with pytest.raises(ValueError, match="at least one prompt pair"):
        from_prompt_pairs(model, [], [], [], [])
    with pytest.raises(ValueError, match="equally long lists"):
        from_prompt_pairs(model, ["w1"], ["w2"], ["w3", "w4"], ["w5"])


def test_induction_task_repeats_the_first_half(model):
    task = induction_task(model, n=4, span=5, seed=1)
    assert task.clean.shape == (4, 10)
    assert torch.equal(task.clean[:, 1:5], task.clean[:, 6:10])
    assert torch.equal(task.answer, task.clean[:, 5])
    assert torch.equal(task.corrupt[:, 6:], task.clean[:, 6:])
    assert not torch.equal(task.corrupt[:, 1:6], task.clean[:, 1:6])
    special = set(model.tokenizer.all_special_ids)
    assert not special & set(task.clean[:, 1:].flatten().tolist())
    with pytest.raises(ValueError, match="span >= 2"):
        induction_task(model, span=1)
