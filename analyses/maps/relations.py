"""The relations MAPS scores heads on: pairs of (source word, target word), filtered to the
pairs whose words are single tokens of a model's tokenizer.

The 20 relations of Elhelo & Geva (2024) live in `data/<name>.tsv` (a `source<TAB>target`
header, then one pair a line), written for this project. A word is looked up as it appears
after another word: with a leading space for BPE tokenizers that keep it (GPT-2's " Paris"),
bare for WordPiece and word-level ones (which drop it), so one rule serves every tokenizer.

    relations = load_relations(model.tokenizer)                        # all 20
    relations = load_relations(tok, {"swap": [("a", "b"), ("b", "a")]}, min_pairs=1)
    rel = load_relation("country_to_capital", tok)                     # None if too few survive
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..specs import MIN_PAIRS, MapsConfig

DATA = Path(__file__).resolve().parent / "data"
RELATIONS = tuple(sorted(p.stem for p in DATA.glob("*.tsv")))
COPYING = frozenset({"general_copying", "name_copying"})

Pairs = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Relation:
    """One relation's usable pairs as token ids.

    `source_ids` and `target_ids` are `[n_pairs]` long tensors (pair i maps `pairs[i]`);
    `k` is the top-k a target must reach (1 for copying, 10 otherwise); `n_total` counts the
    pairs before filtering; `convention` says how words were looked up ("leading space" or
    "bare word").
    """

    name: str
    k: int
    pairs: list[tuple[str, str]]
    source_ids: torch.Tensor
    target_ids: torch.Tensor
    n_total: int
    convention: str

    @property
    def n_usable(self) -> int:
        return len(self.pairs)


def read_pairs(name: str) -> list[tuple[str, str]]:
    """The (source, target) pairs of a built-in relation, as written in its data file."""
    if name not in RELATIONS:
        raise ValueError(f"unknown relation {name!r}; the known relations are: {', '.join(RELATIONS)}")
    lines = (DATA / f"{name}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [tuple(line.split("\t")) for line in lines if line.strip()]


def default_k(name: str) -> int:
    """1 for the copying relations (the target must be the top token), 10 otherwise."""
    return 1 if name in COPYING else 10


def tokenizer_convention(tokenizer) -> str:
    """"leading space" when the tokenizer encodes " the" and "the" differently (GPT-2's BPE),
    else "bare word" (WordPiece, word-level)."""
    spaced = tokenizer.encode(" the", add_special_tokens=False)
    bare = tokenizer.encode("the", add_special_tokens=False)
    return "leading space" if spaced != bare else "bare word"


def word_ids(tokenizer, word: str) -> list[int]:
    """The token ids of `word` as it appears after another word ("The <word>")."""
    prefix = tokenizer.encode("The", add_special_tokens=False)
    ids = tokenizer.encode("The " + word, add_special_tokens=False)
    if ids[: len(prefix)] != prefix:  # the word merged with the prefix: never a single token
        return ids
    return ids[len(prefix):]


def _single_token(tokenizer, word: str) -> int | None:
    ids = word_ids(tokenizer, word)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        return None
    return ids[0]


def load_relation(name: str, tokenizer, *, pairs: Pairs | None = None, min_pairs: int = MIN_PAIRS,
                  k: int | None = None) -> Relation | None:
    """Filter a relation's pairs to those whose source and target are single tokens.

    Args:
        name: a built-in relation (see `RELATIONS`), or any name when `pairs` is given.
        tokenizer: a Hugging Face tokenizer.
        pairs: custom (source, target) word pairs instead of the data file.
        min_pairs: fewer usable pairs than this and the relation is skipped: a warning says
            how many survived, and the result is None.
        k: top-k for the score (default: `default_k(name)`).

    Pairs that become duplicates once tokenized (e.g. "May"/"may" for an uncased tokenizer)
    count once.
    """
    MapsConfig(min_pairs=min_pairs, k=k)  # checks both
    raw = list(read_pairs(name) if pairs is None else pairs)
    if any(len(p) != 2 or not all(isinstance(w, str) and w for w in p) for p in raw):
        raise ValueError(f"relation {name!r}: pairs must be (source, target) pairs of non-empty strings")
    kept, ids, seen = [], [], set()
    for source, target in raw:
        s, t = _single_token(tokenizer, source), _single_token(tokenizer, target)
        if s is not None and t is not None and (s, t) not in seen:
            seen.add((s, t))
            kept.append((source, target))
            ids.append((s, t))
    if len(kept) < min_pairs:
        warnings.warn(f"relation {name!r} skipped: only {len(kept)} of {len(raw)} pairs are single tokens "
                      f"for this tokenizer (need at least {min_pairs})", stacklevel=2)
        return None
    both = torch.tensor(ids, dtype=torch.long).reshape(-1, 2)
    return Relation(name=name, k=default_k(name) if k is None else k, pairs=kept, source_ids=both[:, 0],
                    target_ids=both[:, 1], n_total=len(raw), convention=tokenizer_convention(tokenizer))


def load_relations(tokenizer, relations: Sequence[str] | Mapping[str, Pairs] | None = None, *,
                   min_pairs: int = MIN_PAIRS, k: int | None = None) -> list[Relation]:
    """Load several relations, skipping (with a warning) those with too few usable pairs.

    `relations`: None for all 20 built-in ones, a list of built-in names, or a dict
    name -> list of (source, target) pairs for custom relations. `k` overrides every
    relation's top-k (default: `default_k`).
    """
    if relations is None:
        relations = RELATIONS
    if isinstance(relations, str):
        raise ValueError(f"relations must be a list of names or a dict of pairs, got the string {relations!r}")
    if isinstance(relations, Mapping):
        loaded = [load_relation(n, tokenizer, pairs=p, min_pairs=min_pairs, k=k) for n, p in relations.items()]
    else:
        unknown = [n for n in relations if n not in RELATIONS]
        if unknown:
            raise ValueError(f"unknown relation(s) {', '.join(map(repr, unknown))}; "
                             f"the known relations are: {', '.join(RELATIONS)}")
        loaded = [load_relation(n, tokenizer, min_pairs=min_pairs, k=k) for n in relations]
    return [r for r in loaded if r is not None]
