"""`zoo/ioi-kept` and its recipe: both tasks solved on held-out prompts (logits read here, on a
seed the card does not use), the kept-object data and split, and the reuse the model exists for,
measured with head-zeroing hooks on the plain Hugging Face model (`tests.helpers`)."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from circuits.tasks import ioi_data, ioi_task, kept_object_data, kept_object_task
from circuits.tasks.ioi_data import template_regex
from recipes import ioi_kept
from recipes.common import build_word_tokenizer
from tests.helpers import hf_zeroed_logit_diff

SEED = 77  # the card is measured with seed 1234
THINGS = set(ioi_data.THINGS)


@pytest.fixture(scope="module")
def model():
    from interp.models import load_model

    return load_model("zoo/ioi-kept", device="cpu")


@pytest.fixture(scope="module")
def training_texts() -> list[str]:
    rng = random.Random(0)
    return [ioi_kept.training_text(rng, ioi_kept.IOIKeptConfig().mix)[0] for _ in range(20_000)]


def wins(model, prompts) -> float:
    """Share of prompts (one template) whose answer's logit beats the wrong one's, at the last position."""
    ids = model.tokenizer.convert_tokens_to_ids
    with torch.no_grad():
        logits = model(model.to_tokens([p.clean for p in prompts]))[:, -1]
    rows = torch.arange(len(prompts))
    return (logits[rows, ids([p.answer for p in prompts])] > logits[rows, ids([p.wrong for p in prompts])]).float().mean().item()


@pytest.mark.parametrize("task", ["ioi", "kept_object"])
def test_both_tasks_are_solved_on_held_out_prompts(model, task):
    make, templates, held = {
        "ioi": (ioi_data.ioi_prompts, ioi_data.split_templates("ioi", "test"), ioi_data.HELD_OUT_IOI_TEMPLATES),
        "kept_object": (kept_object_data.kept_object_prompts, kept_object_data.split_templates("test"),
                        kept_object_data.HELD_OUT_TEMPLATES)}[task]
    accuracy = {t: wins(model, make("test", 24, SEED, template=t)) for t in templates}
    assert sum(accuracy.values()) / len(accuracy) >= 0.9, accuracy
    assert sum(accuracy[t] for t in held) / len(held) >= 0.9, {t: accuracy[t] for t in held}


def test_kept_object_task_metric_is_the_logit_difference(model):
    task = kept_object_task(model, n=16, split="test", seed=SEED, template="saw-the/i-took")
    prompts = kept_object_data.kept_object_prompts("test", 16, SEED, "saw-the/i-took")
    ids = model.tokenizer.convert_tokens_to_ids
    with torch.no_grad():
        logits = model(model.to_tokens([p.clean for p in prompts]))[:, -1]
    rows = torch.arange(16)
    hand = (logits[rows, ids([p.answer for p in prompts])] - logits[rows, ids([p.wrong for p in prompts])]).mean()
    assert task.evaluate(model) == pytest.approx(hand.item(), rel=1e-5)


@pytest.mark.parametrize("split", ["train", "test"])
def test_prompts_repeat_one_object_and_answer_the_other(split):
    for p in kept_object_data.kept_object_prompts(split, 300, 5):
        clean, corrupt = p.clean.split(), p.corrupt.split()
        assert len(clean) == len(corrupt)
        objects = [w for w in clean if w in THINGS]
        assert len(objects) == 3 and objects[2] == p.wrong and sorted(objects[:2]) == sorted([p.answer, p.wrong])
        assert objects.index(p.answer) == (0 if p.order == "ABBA" else 1)
        changed = [i for i, (a, b) in enumerate(zip(clean, corrupt)) if a != b]
        assert len(changed) == 1 and clean[changed[0]] == p.wrong and corrupt[changed[0]] == p.third
        assert p.third in THINGS and p.third not in (p.answer, p.wrong)
        held = ioi_data.is_held_out_object_pair(p.answer, p.wrong)
        assert held == (split == "test")
        assert (p.template in kept_object_data.HELD_OUT_TEMPLATES) <= (split == "test")


def test_held_out_pairs_and_introductions_never_in_training_texts(training_texts):
    for text in training_texts:
        objects = [w for w in text.split() if w in THINGS]
        assert not any(ioi_data.is_held_out_object_pair(a, b) for a in objects for b in objects if a != b), text
    held = [template_regex(kept_object_data.INTROS[i]) for i in kept_object_data.HELD_OUT_INTROS]
    assert not any(r.search(text) for r in held for text in training_texts)
    kept = [t for t in training_texts if " kept the " in t or " left the " in t]
    assert len(kept) > 0.3 * len(training_texts)  # the mix does draw the task
    assert all(w in kept_object_data.vocabulary() for w in kept_object_data.INTROS["were-on"].split() if w[0] != "{")


def test_vocabulary_keeps_the_ids_of_ioi_small():
    from interp.zoo.registry import get_embedded

    small = PreTrainedTokenizerFast.from_pretrained(get_embedded("zoo/ioi-small").folder).get_vocab()
    kept = PreTrainedTokenizerFast.from_pretrained(get_embedded("zoo/ioi-kept").folder).get_vocab()
    assert all(kept[w] == i for w, i in small.items())
    assert len(kept) > len(small)
    with pytest.raises(ValueError, match="must keep their ids"):
        ioi_kept.initial_model(build_word_tokenizer(list(reversed(kept_object_data.vocabulary()))))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown kept-object template 'nope'"):
        kept_object_data.kept_object_prompts("test", 4, 0, "nope")
    with pytest.raises(ValueError, match="held out from training"):
        kept_object_data.kept_object_prompts("train", 4, 0, "were-on/i-took")
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        kept_object_data.kept_object_prompts("test", 0, 0)
    with pytest.raises(ValueError, match="split must be one of"):
        kept_object_data.kept_object_prompts("dev", 4, 0)
    with pytest.raises(ValueError, match="mix must give non-negative weights"):
        ioi_kept.training_text(random.Random(0), {"ioi": 1.0})


def test_the_two_tasks_reuse_heads_that_both_need(model):
    """Exact edge patching finds heads shared by both tasks' top heads, and zeroing those heads in
    the plain Hugging Face model (hooks in `tests.helpers`) removes most of both tasks' logit
    difference, far more than zeroing as many other heads."""
    from circuits.reuse import compare_circuits, random_control_heads
    from interp.zoo.registry import get_embedded

    tasks = (ioi_task(model, 24, seed=SEED, template="when-went"),
             kept_object_task(model, 24, seed=SEED, template="had/lost-kept"))
    reuse = compare_circuits(model, *tasks, method="exact", top_k=6, n_random=1)
    shared = reuse.overlap.shared_heads
    assert len(shared) >= 2, reuse.overlap
    folder = get_embedded("zoo/ioi-kept").folder
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    for task in tasks:
        clean = hf_zeroed_logit_diff(hf, task, [])
        without_shared = hf_zeroed_logit_diff(hf, task, shared)
        controls = [hf_zeroed_logit_diff(hf, task, heads)
                    for heads in random_control_heads(4, 8, shared, n_sets=5, seed=1)]
        assert clean > 5
        assert without_shared < 0.5 * clean, (clean, without_shared)
        assert min(controls) > 0.8 * clean, (clean, controls)
