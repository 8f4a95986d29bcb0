"""Data for `zoo/ioi-small`: indirect-object identification (IOI), colored objects, filler.

Everything here is written for the project: names, places, objects, colors, sentence
templates. Texts are space-separated words with punctuation as separate words, so the
word-level tokenizer of `common.build_word_tokenizer(vocabulary())` gives one token per word
and `len(text.split())` is the token count (BOS not included).

Held-out split (deterministic, no seed involved):

- IOI name pairs: an unordered pair {A, B} is held out when the SHA-256 of "pair|A|B" (A, B
  sorted) falls in the lowest `HELD_OUT_PAIR_FRACTION` of its range. No training text contains both
  names of a held-out pair; every name still occurs in training, with other partners.
- Colored-objects object pairs: an unordered pair of objects is held out the same way
  ("objects|A|B", `HELD_OUT_OBJECT_PAIR_FRACTION`); no training scene shows both. (Colors are drawn uniformly, so no color prior can be learned.)
- Templates: `HELD_OUT_IOI_TEMPLATES` and `HELD_OUT_COLOR_TEMPLATES` never occur in training.
  Every word they use does occur in training, in other sentences.

The "test" split draws IOI prompts from held-out pairs over all templates (held-out ones
included) and colored-objects prompts whose queried object and distractor (the object the
corrupted prompt asks about) form a held-out object pair, over all templates.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass

NAMES = (
    "Mary John Anna Peter Lucy James Emma Oliver Sarah Daniel Laura Michael Alice David Clara "
    "Thomas Julia Robert Helen George Nora Henry Grace Samuel Ruby Arthur Ella Oscar Sophie "
    "Edward Chloe Simon Hannah Victor Irene Felix Martha Hugo Alma Leon Vera Frank Nina Walter "
    "Rita Paul Diana Kevin Fiona Brian Olga Steven Paula Jason Tina Ryan Carla Adam Maria Ethan "
    "Kate Noah Eva Lucas Ida Max Zoe Jack Amy Ben Lily Sam Mia Tom Ava Dan Ivy Leo Eve Carl Jane "
    "Ivan Lara Eric Dora Tim Rosa Mark Sara Neil Judy Alan Gina Roy Beth Ian Kim Joe Owen Ruth"
).split()
PLACES = (
    "store park school garden beach library market station office kitchen museum restaurant "
    "hospital river forest cafe bank farm church theater zoo lake airport gym bakery hotel "
    "bridge castle village harbor"
).split()
GIFTS = (
    "drink book ball kiss letter basket bone ring necklace snack flower gift pencil computer "
    "bag hat sandwich cake toy card ticket key cup map phone coat lamp camera"
).split()
THINGS = (
    "pen key cup book ball hat bag box lamp plate shoe sock ring phone card toy bowl clock "
    "shirt scarf"
).split()
COLORS = "red blue green yellow black white purple pink brown gray silver gold".split()
SURFACES = "table desk floor shelf bed counter bench tray".split()

HELD_OUT_PAIR_FRACTION = 0.15
HELD_OUT_OBJECT_PAIR_FRACTION = 0.15
SPLITS = ("train", "test")

# IOI templates in "ABBA" form: {N1} {N2} are the two names of the first clause, {S} the
# repeated subject; the answer (the indirect object) is the name of {N1}/{N2} that is not {S}.
IOI_TEMPLATES = {
    "when-went": "When {N1} and {N2} went to the {PLACE} , {S} gave a {GIFT} to",
    "when-got": "When {N1} and {N2} got a {GIFT} at the {PLACE} , {S} decided to give it to",
    "when-got-the": "When {N1} and {N2} got a {GIFT} at the {PLACE} , {S} decided to give the {GIFT} to",
    "after-went": "After {N1} and {N2} went to the {PLACE} , {S} gave a {GIFT} to",
    "after-lunch": "After the lunch , {N1} and {N2} went to the {PLACE} . {S} gave a {GIFT} to",
    "then-went": "Then , {N1} and {N2} went to the {PLACE} . {S} gave a {GIFT} to",
    "then-fun": "Then , {N1} and {N2} had a lot of fun at the {PLACE} . {S} gave a {GIFT} to",
    "then-working": "Then , {N1} and {N2} were working at the {PLACE} . {S} decided to give a {GIFT} to",
    "then-thinking": "Then , {N1} and {N2} were thinking about going to the {PLACE} . {S} wanted to give a {GIFT} to",
    "then-argument": "Then , {N1} and {N2} had a long argument , and afterwards {S} said to",
    "while-working": "While {N1} and {N2} were working at the {PLACE} , {S} gave a {GIFT} to",
    "friends-found": "Friends {N1} and {N2} found a {GIFT} at the {PLACE} . {S} gave it to",
    "fun-then": "{N1} and {N2} had a lot of fun at the {PLACE} . Then {S} wanted to give a {GIFT} to",
    "place-had": "The {PLACE} {N1} and {N2} went to had a {GIFT} . {S} gave it to",
}
HELD_OUT_IOI_TEMPLATES = ("place-had",)

# Colored-objects templates: {C1} {O1} ... are the scene, {Q} the queried object.
COLOR_TEMPLATES = {
    "see-two": "On the {SURFACE} , I see a {C1} {O1} and a {C2} {O2} . What color is the {Q} ? It is",
    "see-three": "On the {SURFACE} , I see a {C1} {O1} , a {C2} {O2} and a {C3} {O3} . What color is the {Q} ? It is",
    "there-is": "There is a {C1} {O1} and a {C2} {O2} on the {SURFACE} . What color is the {Q} ? It is",
    "i-have": "I have a {C1} {O1} , a {C2} {O2} and a {C3} {O3} . The {Q} is",
    "color-of": "On the {SURFACE} there is a {C1} {O1} and a {C2} {O2} . The color of the {Q} is",
}
HELD_OUT_COLOR_TEMPLATES = ("color-of",)

# Filler: ordinary sentences from the same vocabulary, so the model is a language model of
# this little world and not only a task solver. {N}/{M} are two different names.
FILLER_TEMPLATES = (
    "{N} went to the {PLACE} .",
    "{N} went to the {PLACE} with {M} .",
    "{N} and {M} were working at the {PLACE} .",
    "{N} has a {C} {O} .",
    "{N} found a {C} {O} on the {SURFACE} .",
    "There is a {C} {O} on the {SURFACE} .",
    "On the {SURFACE} there is a {C} {O} .",
    "The {PLACE} is near the {PLACE2} .",
    "Then , {N} had a lot of fun at the {PLACE} .",
    "After the lunch , {N} decided to go to the {PLACE} .",
    "{N} wanted to go to the {PLACE} .",
    "{N} was thinking about going to the {PLACE} .",
    "{N} had a long argument with {M} about the {GIFT} .",
    "The {GIFT} {N} found at the {PLACE} was {C} .",
)

# Default shares of the training mix (relative weights).
MIX = {"ioi": 0.45, "color": 0.3, "filler": 0.25}


@dataclass(frozen=True)
class IOIPrompt:
    """One IOI prompt and its ABC corruption (the second subject mention replaced by a third name).

    `clean` and `corrupt` have the same number of tokens; the model should continue `clean`
    with `answer` (the indirect object) rather than `wrong` (the subject).
    """

    clean: str
    corrupt: str
    answer: str
    wrong: str
    template: str
    order: str  # "ABBA" (IO named first) or "BABA" (subject named first)
    third: str  # the name that replaces the subject's second mention in `corrupt`


@dataclass(frozen=True)
class ColorPrompt:
    """One colored-objects prompt; `corrupt` asks about another object of the same scene.

    `answer` is the color of the queried object, `wrong` the color of the object `corrupt`
    asks about (the answer of the corrupted prompt). Same number of tokens in both.
    """

    clean: str
    corrupt: str
    answer: str
    wrong: str
    template: str


def _hash_unit(key: str) -> float:
    """A deterministic number in [0, 1) from a string (stable across runs and platforms)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def is_held_out_pair(a: str, b: str) -> bool:
    """Whether the unordered name pair {a, b} belongs to the held-out (test) pairs."""
    return _is_held_out_sorted("pair", *sorted((a, b)))


def is_held_out_object_pair(a: str, b: str) -> bool:
    """Whether the unordered object pair {a, b} belongs to the held-out colored-objects pairs."""
    return _is_held_out_sorted("objects", *sorted((a, b)))


@functools.cache
def _is_held_out_sorted(kind: str, a: str, b: str) -> bool:
    fraction = HELD_OUT_PAIR_FRACTION if kind == "pair" else HELD_OUT_OBJECT_PAIR_FRACTION
    return _hash_unit(f"{kind}|{a}|{b}") < fraction


@functools.cache
def held_out_pairs() -> tuple[tuple[str, str], ...]:
    """All held-out name pairs, each in `NAMES` order, in a fixed order."""
    return tuple((a, b) for i, a in enumerate(NAMES) for b in NAMES[i + 1:] if is_held_out_pair(a, b))


@functools.cache
def held_out_object_pairs() -> tuple[tuple[str, str], ...]:
    """All held-out object pairs, each in `THINGS` order, in a fixed order."""
    return tuple((a, b) for i, a in enumerate(THINGS) for b in THINGS[i + 1:] if is_held_out_object_pair(a, b))


def split_templates(kind: str, split: str) -> list[str]:
    """Template ids of `kind` ("ioi" or "color") usable in `split` ("test" has them all)."""
    _check_split(split)
    templates, held = {"ioi": (IOI_TEMPLATES, HELD_OUT_IOI_TEMPLATES),
                       "color": (COLOR_TEMPLATES, HELD_OUT_COLOR_TEMPLATES)}[kind]
    return [t for t in templates if split == "test" or t not in held]


def vocabulary() -> list[str]:
    """Every word the texts can contain, in a fixed order (names first)."""
    words: dict[str, None] = {}
    for group in (NAMES, PLACES, GIFTS, THINGS, COLORS, SURFACES):
        words.update(dict.fromkeys(group))
    for text in (*IOI_TEMPLATES.values(), *COLOR_TEMPLATES.values(), *FILLER_TEMPLATES):
        words.update(dict.fromkeys(w for w in text.split() if not w.startswith("{")))
    return list(words)


def template_regex(text: str) -> re.Pattern:
    """A regex matching any filling of a template inside one line of text (a slot matches
    one word)."""
    parts = [r"\S+" if w.startswith("{") else re.escape(w) for w in text.split()]
    return re.compile(r"(?m)(?:^| )" + " ".join(parts) + r"(?= |$)")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _check_request(kind: str, split: str, n: int, template: str | None) -> list[str]:
    """Validate arguments of the prompt builders; returns the template ids to draw from."""
    known = list(IOI_TEMPLATES if kind == "ioi" else COLOR_TEMPLATES)
    return check_request(kind, known, split_templates(kind, split), split, n, template)


def check_request(kind: str, known: list[str], allowed: list[str], split: str, n: int,
                  template: str | None) -> list[str]:
    """Validate a prompt builder's arguments: `n` a positive integer, `template` (if given) one
    of the `known` ids and allowed in `split` (`allowed`: the split's templates). Returns the
    template ids to draw from. `kind` names the task in the messages."""
    _check_split(split)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if template is None:
        return allowed
    if template not in known:
        raise ValueError(f"unknown {kind} template {template!r}; known: {known}")
    if template not in allowed:
        raise ValueError(f"{kind} template {template!r} is held out from training; "
                         f"it is only in split 'test', got split {split!r}")
    return [template]


def draw_kind(rng: random.Random, mix: dict[str, float], kinds) -> str:
    """One kind of training text, drawn by `mix` (relative weights of exactly `kinds`)."""
    if set(mix) != set(kinds) or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError(f"mix must give non-negative weights to {sorted(kinds)}, got {mix}")
    return rng.choices(list(mix), weights=list(mix.values()))[0]


def _train_pair(rng: random.Random) -> tuple[str, str]:
    while True:
        a, b = rng.sample(NAMES, 2)
        if not is_held_out_pair(a, b):
            return a, b


def _train_things(rng: random.Random, k: int) -> list[str]:
    """`k` different objects, no two of them a held-out pair."""
    while True:
        things = rng.sample(THINGS, k)
        if not any(is_held_out_object_pair(a, b) for i, a in enumerate(things) for b in things[i + 1:]):
            return things


def _fill(text: str, slots: dict[str, str]) -> str:
    return " ".join(slots.get(w[1:-1], w) if w.startswith("{") else w for w in text.split())


def _ioi(rng: random.Random, split: str, template: str, order: str) -> IOIPrompt:
    if split == "train":
        io, s = _train_pair(rng)
    else:
        io, s = rng.choice(held_out_pairs())
        if rng.random() < 0.5:
            io, s = s, io
    third = rng.choice([n for n in NAMES if n not in (io, s)])
    n1, n2 = (io, s) if order == "ABBA" else (s, io)
    slots = {"N1": n1, "N2": n2, "PLACE": rng.choice(PLACES), "GIFT": rng.choice(GIFTS)}
    text = IOI_TEMPLATES[template]
    return IOIPrompt(clean=_fill(text, {**slots, "S": s}), corrupt=_fill(text, {**slots, "S": third}),
                     answer=io, wrong=s, template=template, order=order, third=third)


def _color(rng: random.Random, split: str, template: str) -> ColorPrompt:
    n_things = 3 if "{O3}" in COLOR_TEMPLATES[template] else 2
    # things[0] is asked about, things[1] by the corrupted prompt; in "test" they are a
    # held-out pair. All colors of a scene differ, so each question has one answer.
    if split == "train":
        things = _train_things(rng, n_things)
    else:
        things = list(rng.choice(held_out_object_pairs()))
        rng.shuffle(things)
        things += rng.sample([t for t in THINGS if t not in things], n_things - 2)
    colors = rng.sample(COLORS, n_things)
    order = list(range(n_things))
    rng.shuffle(order)
    slots = {"SURFACE": rng.choice(SURFACES)}
    for k, i in enumerate(order, start=1):
        slots[f"C{k}"], slots[f"O{k}"] = colors[i], things[i]
    text = COLOR_TEMPLATES[template]
    return ColorPrompt(clean=_fill(text, {**slots, "Q": things[0]}),
                       corrupt=_fill(text, {**slots, "Q": things[1]}),
                       answer=colors[0], wrong=colors[1], template=template)


def ioi_prompts(split: str, n: int, seed: int, template: str | None = None) -> list[IOIPrompt]:
    """`n` IOI prompts of `split` ("train" or "test"), reproducible from `seed`.

    Orders alternate ABBA, BABA, ...; templates are drawn uniformly from the split's templates
    unless `template` names one. "train" prompts come from the training distribution
    (training pairs and templates); "test" prompts use held-out name pairs over all templates.
    """
    templates = _check_request("ioi", split, n, template)
    rng = random.Random(seed)
    return [_ioi(rng, split, rng.choice(templates), ("ABBA", "BABA")[i % 2]) for i in range(n)]


def colored_object_prompts(split: str, n: int, seed: int,
                           template: str | None = None) -> list[ColorPrompt]:
    """`n` colored-objects prompts of `split`, reproducible from `seed`.

    "test" prompts ask about two objects (clean and corrupted) that form a held-out pair,
    over all templates.
    """
    templates = _check_request("color", split, n, template)
    rng = random.Random(seed)
    return [_color(rng, split, rng.choice(templates)) for _ in range(n)]


def _filler(rng: random.Random) -> str:
    n, m = _train_pair(rng)
    place, place2 = rng.sample(PLACES, 2)
    thing = rng.choice(THINGS)
    slots = {"N": n, "M": m, "PLACE": place, "PLACE2": place2, "GIFT": rng.choice(GIFTS),
             "O": thing, "C": rng.choice(COLORS), "SURFACE": rng.choice(SURFACES)}
    return _fill(rng.choice(FILLER_TEMPLATES), slots)


def training_text(rng: random.Random, mix: dict[str, float] | None = None) -> tuple[str, list[int]]:
    """One training sequence: an answered IOI or colored-objects prompt, or a filler sentence.

    Returns `(text, answers)`: the indices in `text.split()` of the answer words (empty for
    filler). Draws the kind by `mix` (relative weights of the kinds in `MIX`); never uses a
    held-out template, name pair or object pair.
    """
    kind = draw_kind(rng, MIX if mix is None else mix, MIX)
    if kind == "filler":
        return _filler(rng), []
    if kind == "ioi":
        p = _ioi(rng, "train", rng.choice(split_templates("ioi", "train")), rng.choice(("ABBA", "BABA")))
        return f"{p.clean} {p.answer} .", [len(p.clean.split())]
    p = _color(rng, "train", rng.choice(split_templates("color", "train")))
    return f"{p.clean} {p.answer} .", [len(p.clean.split())]
