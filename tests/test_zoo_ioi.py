"""`zoo/ioi-small` and its recipe: held-out IOI accuracy, the data's split, prompt pairs."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from interp.models import Patch, sites
from circuits.tasks import ioi_data
from recipes import ioi
from circuits.tasks.ioi_data import (COLOR_TEMPLATES, COLORS, IOI_TEMPLATES, NAMES, THINGS,
                                         colored_object_prompts, ioi_prompts, template_regex)

N_TRAINING_TEXTS = 20_000


@pytest.fixture(scope="module")
def model():
    from interp.models import load_model

    return load_model("zoo/ioi-small", device="cpu")


@pytest.fixture(scope="module")
def training_texts() -> list[str]:
    rng = random.Random(0)
    return [ioi_data.training_text(rng)[0] for _ in range(N_TRAINING_TEXTS)]


def model_card() -> dict:
    from interp.zoo.registry import get_embedded

    return get_embedded("zoo/ioi-small").card()


def _last_logits(model, texts: list[str]) -> torch.Tensor:
    """`[len(texts), d_vocab]` through the model layer; texts of one template share a length."""
    tokens = model.to_tokens(texts)
    assert (tokens != model.tokenizer.pad_token_id).all(), "texts of one template must not need padding"
    with torch.no_grad():
        return model(tokens)[:, -1]


def _scores(model, prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """Through the model layer, for prompts of one template: last-position logits
    `[n, d_vocab]` and logit(answer) - logit(wrong) `[n]`."""
    ids = model.tokenizer.convert_tokens_to_ids
    logits = _last_logits(model, [p.clean for p in prompts])
    rows = torch.arange(len(prompts))
    return logits, logits[rows, ids([p.answer for p in prompts])] - logits[rows, ids([p.wrong for p in prompts])]


def test_held_out_ioi_accuracy_through_load_model(model):
    names = torch.tensor(model.tokenizer.convert_tokens_to_ids(list(NAMES)))
    argmax_hits = []
    for template in IOI_TEMPLATES:
        prompts = ioi_prompts("test", 100, seed=99, template=template)
        logits, diff = _scores(model, prompts)
        accuracy = (diff > 0).float().mean().item()
        assert accuracy >= 0.95, f"held-out IOI accuracy on {template}: {accuracy:.3f}"
        assert diff.mean() > 5.0, f"logit difference on {template}: {diff.mean():.2f}"
        answers = torch.tensor(model.tokenizer.convert_tokens_to_ids([p.answer for p in prompts]))
        argmax_hits.append((names[logits[:, names].argmax(-1)] == answers).float())
    # The answer is also the top name among all 100 (not only above the subject) almost always.
    assert torch.cat(argmax_hits).mean() >= 0.9


@pytest.mark.parametrize("task, split, template", [
    ("ioi", "test", ioi_data.HELD_OUT_IOI_TEMPLATES[0]), ("ioi", "train", "when-went"),
    ("colored_objects", "test", ioi_data.HELD_OUT_COLOR_TEMPLATES[0]), ("colored_objects", "train", "see-two"),
])
def test_card_scores_hold_through_load_model(model, task, split, template):
    """The card's numbers (Hugging Face forward) are reproduced on the same prompts through
    the model layer; colored objects included, solved or not."""
    card = model_card()
    score = card["scores"][task][split]["per_template"][template]
    make = ioi_prompts if task == "ioi" else colored_object_prompts
    prompts = make(split, card["eval"]["n_per_template"], seed=card["eval"]["seed"], template=template)
    _, diff = _scores(model, prompts)
    assert (diff > 0).float().mean().item() == pytest.approx(score["accuracy"], abs=1e-6)
    assert diff.mean().item() == pytest.approx(score["logit_diff"], abs=1e-3)


def test_card_describes_split_and_scores():
    card = model_card()
    assert card["name"] == "zoo/ioi-small"
    assert card["split"]["held_out_ioi_templates"] == list(ioi_data.HELD_OUT_IOI_TEMPLATES)
    assert [tuple(p) for p in card["split"]["held_out_pairs"]] == list(ioi_data.held_out_pairs())
    assert [tuple(p) for p in card["split"]["held_out_object_pairs"]] == list(ioi_data.held_out_object_pairs())
    assert set(card["scores"]["ioi"]["test"]["per_template"]) == set(IOI_TEMPLATES)
    assert card["scores"]["ioi"]["test"]["overall"]["accuracy"] >= 0.95
    assert card["train_seconds"] < 20 * 60


@pytest.mark.parametrize("split", ioi_data.SPLITS)
def test_ioi_clean_and_corrupt_differ_only_in_the_subject(split):
    tok = ioi.tokenizer()
    for template in ioi_data.split_templates("ioi", split):
        for p in ioi_prompts(split, 30, seed=3, template=template):
            clean, corrupt = ioi.encode(tok, [p.clean, p.corrupt])
            assert len(clean) == len(corrupt), (p.clean, p.corrupt)
            words, corrupt_words = p.clean.split(), p.corrupt.split()
            changed = [i for i, (a, b) in enumerate(zip(words, corrupt_words)) if a != b]
            assert len(changed) == 1 and words[changed[0]] == p.wrong and corrupt_words[changed[0]] == p.third
            assert words.count(p.answer) == 1 and words.count(p.wrong) == 2
            assert p.third not in (p.answer, p.wrong)
            first = [w for w in words if w in NAMES][0]
            assert first == (p.answer if p.order == "ABBA" else p.wrong)


@pytest.mark.parametrize("split", ioi_data.SPLITS)
def test_colored_clean_and_corrupt_ask_about_two_objects_of_the_scene(split):
    tok = ioi.tokenizer()
    for template in ioi_data.split_templates("color", split):
        for p in colored_object_prompts(split, 30, seed=3, template=template):
            clean, corrupt = ioi.encode(tok, [p.clean, p.corrupt])
            assert len(clean) == len(corrupt)
            words = p.clean.split()
            changed = [i for i, (a, b) in enumerate(zip(words, p.corrupt.split())) if a != b]
            assert len(changed) == 1
            asked, asked_corrupt = words[changed[0]], p.corrupt.split()[changed[0]]
            # The answer is the color written right before the asked object in the scene.
            scene = words[:changed[0]]
            colors = {scene[i + 1]: scene[i] for i in range(len(scene) - 1) if scene[i] in COLORS}
            assert colors[asked] == p.answer and colors[asked_corrupt] == p.wrong != p.answer


NAME_SET, THING_SET = frozenset(NAMES), frozenset(THINGS)


def _names_in(text: str) -> set[str]:
    return {w for w in text.split() if w in NAME_SET}


def test_held_out_pairs_and_templates_never_in_training_texts(training_texts):
    seen_pairs = set()
    for text in training_texts:
        names = sorted(_names_in(text))
        seen_pairs.update((a, b) for i, a in enumerate(names) for b in names[i + 1:])
    assert {w for t in training_texts for w in _names_in(t)} == set(NAMES), "every name is trained"
    test_pairs = {tuple(sorted((p.answer, p.wrong))) for p in ioi_prompts("test", 2000, seed=5)}
    assert len(test_pairs) > 400 and not test_pairs & seen_pairs
    train_pairs = {tuple(sorted((p.answer, p.wrong))) for p in ioi_prompts("train", 200, seed=5)}
    assert len(train_pairs & seen_pairs) > 100, "the check above is not vacuous"

    corpus = "\n".join(training_texts)
    held_out = ioi_data.HELD_OUT_IOI_TEMPLATES + ioi_data.HELD_OUT_COLOR_TEMPLATES
    for template, text in {**IOI_TEMPLATES, **COLOR_TEMPLATES}.items():
        hits = len(template_regex(text).findall(corpus))
        if template in held_out:
            assert hits == 0, f"held-out template {template} occurs in training"
        else:
            assert hits > 100, f"training template {template} matched only {hits} texts"


def _asked_objects(p) -> tuple[str, str]:
    """The objects the clean and the corrupted prompt ask about (the one word they differ in)."""
    (a, b), = [(x, y) for x, y in zip(p.clean.split(), p.corrupt.split()) if x != y]
    return a, b


def test_held_out_object_pairs_never_in_training_texts(training_texts):
    seen = set()
    for text in training_texts:
        things = sorted({w for w in text.split() if w in THING_SET})
        seen.update((a, b) for i, a in enumerate(things) for b in things[i + 1:])
    asked = {tuple(sorted(_asked_objects(p))) for p in colored_object_prompts("test", 500, seed=5)}
    assert len(asked) > 20 and not asked & seen
    trained = {tuple(sorted(_asked_objects(p))) for p in colored_object_prompts("train", 500, seed=5)}
    assert trained <= seen, "the check above is not vacuous"


def test_card_circuit_matches_the_model_layer(model):
    """The card's numbers for its top head (the recipe's Hugging Face hooks) hold through the model
    layer's sites and interventions."""
    card = model_card()
    circuit = card["circuit"]
    top = max(circuit["heads"], key=lambda h: h["abc_noising"])
    layer, head = top["layer"], top["head"]
    assert top["abc_noising"] > 0.1
    prompts = ioi_prompts("test", card["eval"]["n_per_template"], seed=card["eval"]["seed"])
    ids = model.tokenizer.convert_tokens_to_ids
    clean_ld = corrupt_ld = patched_ld = attn_s2 = 0.0
    for template in {p.template for p in prompts}:
        group = [p for p in prompts if p.template == template]
        rows = torch.arange(len(group))
        answer, wrong = ids([p.answer for p in group]), ids([p.wrong for p in group])

        def logit_diff(logits):
            return (logits[rows, -1, answer] - logits[rows, -1, wrong]).sum().item()

        clean = model.to_tokens([p.clean for p in group])
        clean_logits, clean_cache = model.run_with_cache(clean, sites=[sites.pattern(layer)])
        corrupt_logits, corrupt_cache = model.run_with_cache(model.to_tokens([p.corrupt for p in group]),
                                                             sites=[sites.z(layer)])
        clean_ld += logit_diff(clean_logits)
        corrupt_ld += logit_diff(corrupt_logits)
        with torch.no_grad():
            patched = model.run(clean, interventions=[Patch(sites.z(layer, head), source=corrupt_cache)])[0]
        patched_ld += logit_diff(patched)
        words = [p.clean.split() for p in group]
        s2 = torch.tensor([len(w) - w[::-1].index(p.wrong) for w, p in zip(words, group)])  # BOS first
        attn_s2 += clean_cache.pattern(layer)[rows, head, -1, s2].sum().item()
    n = len(prompts)
    assert clean_ld / n == pytest.approx(circuit["clean_logit_diff"], abs=1e-3)
    assert corrupt_ld / n == pytest.approx(circuit["corrupt_logit_diff"], abs=1e-3)
    assert (clean_ld - patched_ld) / (clean_ld - corrupt_ld) == pytest.approx(top["abc_noising"], abs=1e-3)
    assert attn_s2 / n == pytest.approx(top["attn_s2"], abs=1e-3)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="split"):
        ioi_prompts("dev", 5, seed=0)
    with pytest.raises(ValueError, match="n must be"):
        ioi_prompts("train", 0, seed=0)
    with pytest.raises(ValueError, match="n must be"):
        colored_object_prompts("test", -3, seed=0)
    with pytest.raises(ValueError, match="unknown ioi template"):
        ioi_prompts("test", 5, seed=0, template="nope")
    with pytest.raises(ValueError, match="held out"):
        ioi_prompts("train", 5, seed=0, template=ioi_data.HELD_OUT_IOI_TEMPLATES[0])
    with pytest.raises(ValueError, match="held out"):
        colored_object_prompts("train", 5, seed=0, template=ioi_data.HELD_OUT_COLOR_TEMPLATES[0])
    with pytest.raises(ValueError, match="checkpoint folder"):
        ioi.evaluate("/nonexistent/folder")
    with pytest.raises(ValueError, match="n must be"):
        ioi.evaluate("/nonexistent/folder", n=0)
    with pytest.raises(ValueError, match="mix"):
        ioi_data.training_text(random.Random(0), {"ioi": 1.0})
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ioi.encode(ioi.tokenizer(), ["When Mary met Zorblax"])


def test_prompts_are_reproducible_and_seed_dependent():
    assert ioi_prompts("test", 20, seed=4) == ioi_prompts("test", 20, seed=4)
    assert ioi_prompts("test", 20, seed=4) != ioi_prompts("test", 20, seed=5)


def test_shrunk_recipe_learns_to_name_the_indirect_object():
    torch.set_num_threads(1)
    config = ioi.IOIConfig().shrunk()
    model, tok, losses = ioi.train(config, log=lambda line: None)
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 2.0
    scores = ioi.evaluate(model, n=config.eval_prompts)["ioi"]["train"]["overall"]
    # Chance: 0.5 for IO vs S, 1/len(NAMES) for the argmax among names.
    assert scores["accuracy"] > 0.85
    assert scores["candidate_argmax_accuracy"] > 0.5


def test_recipe_is_deterministic():
    config = dataclasses.replace(ioi.IOIConfig().shrunk(), steps=5, batch_size=8)
    (a, _, losses_a), (b, _, losses_b) = (ioi.train(config, log=lambda line: None) for _ in range(2))
    assert losses_a == losses_b
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_float_loss_mask_is_a_weighted_mean():
    """`train_lm` with float weights: ones give the bool-mask loss; weights give the weighted
    mean of per-token cross-entropies computed by hand."""
    from recipes.common import gpt2_config, train_lm

    tok = ioi.tokenizer()
    tokens = torch.tensor([ioi.encode(tok, ["Mary went to the park ."])[0]] * 2)
    weights = torch.tensor([[0, 1, 1, 3, 1, 1, 0.5], [0, 2, 1, 1, 1, 1, 1.0]])

    def run(mask):
        torch.manual_seed(0)
        model = ioi.GPT2LMHeadModel(gpt2_config(tok, n_layer=1, n_head=2, n_embd=16, n_positions=16))
        with torch.no_grad():
            logits = model(tokens).logits[:, :-1]
        loss = train_lm(model, lambda gen: (tokens, mask), steps=1, lr=1e-3, seed=0, log=lambda line: None)[0]
        return loss, logits

    loss_bool, _ = run(torch.ones_like(tokens, dtype=torch.bool))
    loss_ones, _ = run(torch.ones(tokens.shape))
    assert loss_ones == pytest.approx(loss_bool, abs=1e-6)
    loss_weighted, logits = run(weights)
    by_hand = [[-logits[i, p].log_softmax(-1)[tokens[i, p + 1]].item() for p in range(tokens.shape[1] - 1)]
               for i in range(2)]
    w = weights[:, 1:]
    expected = sum(w[i, p].item() * by_hand[i][p] for i in range(2) for p in range(w.shape[1])) / w.sum().item()
    assert loss_weighted == pytest.approx(expected, rel=1e-5)
