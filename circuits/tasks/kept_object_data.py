"""Data for the kept-object task: IOI's structure on objects instead of names.

"Mary had a pen and a cup . Mary lost the cup but kept the" -> "pen". Two objects are
introduced, one of them is named again, and the answer is the one that was not: the same
duplicate-and-inhibit structure as indirect-object identification ("When Mary and John went to
the store , John gave a drink to" -> "Mary"), on another token class and other sentences. It is
the second task of `zoo/ioi-kept`, for circuit component reuse (Merullo et al., 2023, compare
IOI with colored objects for the same reason: a task sharing structure with IOI).

Texts use `ioi_data`'s world (names, places, surfaces, the objects `THINGS`) and are
space-separated words, one token per word for a word-level tokenizer of `vocabulary()`.

Held-out split (deterministic): the two objects of a "test" prompt form a held-out object pair
(`ioi_data.is_held_out_object_pair`, the pairs colored objects holds out) that no training text
shows together, over all templates; `HELD_OUT_TEMPLATES` never occur in training (every word
they use does, elsewhere).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from circuits.tasks import ioi_data

# A prompt is an introduction of two objects {O1} {O2} followed by an action naming one of
# them again ({S}); the answer is the other one. Template id "intro/action": every pairing of
# an introduction with an action, so the objects and the repeat sit at many positions.
INTROS = {
    "had": "{N} had a {O1} and a {O2} .",
    "found-at": "{N} found a {O1} and a {O2} at the {PLACE} .",
    "there-was": "There was a {O1} and a {O2} on the {SURFACE} .",
    "bought": "At the {PLACE} , {N} bought a {O1} and a {O2} .",
    "saw-the": "{N} saw the {O1} and the {O2} at the {PLACE} .",
    "on-surface": "On the {SURFACE} there was a {O1} and a {O2} .",
    "put-on": "{N} put a {O1} and a {O2} on the {SURFACE} .",
    "while-at": "While {N} was at the {PLACE} , {N} found a {O1} and a {O2} .",
    "after-lunch": "After the lunch , {N} had a {O1} and a {O2} .",
    "a-were-at": "A {O1} and a {O2} were at the {PLACE} .",
    "were-on": "The {O1} and the {O2} were on the {SURFACE} .",
}
ACTIONS = {
    "lost-kept": "{N} lost the {S} but kept the",
    "then-took": "Then {N} took the {S} and left the",
    "gave-away": "{N} gave away the {S} and kept the",
    "later-returned": "Later , {N} returned the {S} and kept the",
    "i-took": "I took the {S} and left the",
}
TEMPLATES = {f"{i}/{a}": f"{intro} {action}" for i, intro in INTROS.items() for a, action in ACTIONS.items()}
HELD_OUT_INTROS = ("were-on",)  # its pairings with every action are held out
HELD_OUT_TEMPLATES = tuple(t for t in TEMPLATES if t.split("/")[0] in HELD_OUT_INTROS)


@dataclass(frozen=True)
class KeptPrompt:
    """One kept-object prompt and its ABC corruption (the repeated object replaced by a third).

    `clean` and `corrupt` have the same number of tokens; the model should continue `clean`
    with `answer` (the object not named again) rather than `wrong` (the one named again).
    """

    clean: str
    corrupt: str
    answer: str
    wrong: str
    template: str
    order: str  # "ABBA" (the answer introduced first) or "BABA"
    third: str  # the object that replaces the repeated one in `corrupt`


def vocabulary() -> list[str]:
    """`ioi_data.vocabulary()` followed by the words only these templates use (so the ids of
    `zoo/ioi-small`'s words are unchanged)."""
    words = dict.fromkeys(ioi_data.vocabulary())
    for text in TEMPLATES.values():
        words.update(dict.fromkeys(w for w in text.split() if not w.startswith("{")))
    return list(words)


def split_templates(split: str) -> list[str]:
    """Template ids usable in `split` ("test" has them all)."""
    ioi_data._check_split(split)
    return [t for t in TEMPLATES if split == "test" or t not in HELD_OUT_TEMPLATES]


def _prompt(rng: random.Random, split: str, template: str, order: str) -> KeptPrompt:
    if split == "train":
        kept, repeated = ioi_data._train_things(rng, 2)
    else:
        kept, repeated = rng.choice(ioi_data.held_out_object_pairs())
        if rng.random() < 0.5:
            kept, repeated = repeated, kept
    third = rng.choice([t for t in ioi_data.THINGS if t not in (kept, repeated)])
    o1, o2 = (kept, repeated) if order == "ABBA" else (repeated, kept)
    slots = {"O1": o1, "O2": o2, "N": rng.choice(ioi_data.NAMES), "PLACE": rng.choice(ioi_data.PLACES),
             "SURFACE": rng.choice(ioi_data.SURFACES)}
    text = TEMPLATES[template]
    return KeptPrompt(clean=ioi_data._fill(text, {**slots, "S": repeated}),
                      corrupt=ioi_data._fill(text, {**slots, "S": third}),
                      answer=kept, wrong=repeated, template=template, order=order, third=third)


def kept_object_prompts(split: str, n: int, seed: int, template: str | None = None) -> list[KeptPrompt]:
    """`n` kept-object prompts of `split` ("train" or "test"), reproducible from `seed`.

    Orders alternate ABBA, BABA, ...; templates are drawn uniformly from the split's templates
    unless `template` names one. "test" prompts use held-out object pairs over all templates.
    """
    templates = ioi_data.check_request("kept-object", list(TEMPLATES), split_templates(split), split, n, template)
    rng = random.Random(seed)
    return [_prompt(rng, split, rng.choice(templates), ("ABBA", "BABA")[i % 2]) for i in range(n)]


def training_text(rng: random.Random) -> tuple[str, list[int]]:
    """One answered training prompt (training template, no held-out object pair):
    `(text, [index of the answer in text.split()])`."""
    p = _prompt(rng, "train", rng.choice(split_templates("train")), rng.choice(("ABBA", "BABA")))
    return f"{p.clean} {p.answer} .", [len(p.clean.split())]
