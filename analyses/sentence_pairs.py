"""A small sentence-similarity task for sentence encoders such as `minilm`.

`data/sentence_pairs.tsv` (written for this project) holds 64 triplets: an anchor sentence, a
paraphrase of it, and a non-paraphrase that shares most of its words but not its meaning
("The dog chased the cat" / "The cat chased the dog"). From pooled sentence embeddings:

- metric, pair accuracy: over every (paraphrase pair, non-paraphrase pair) of the set, the
  fraction where the paraphrase pair has the higher cosine similarity, i.e. the accuracy of the
  best threshold-free ranking of pairs (ROC AUC; chance 0.5). The non-paraphrases are minimal
  pairs (swapped roles, negations, antonyms), which mean-pooled embeddings find hard:
  unpruned `minilm` scores 0.63, and 0.43 with every head's output removed;
- loss, for head importance: InfoNCE per batch of triplets, the cross-entropy of each anchor's
  own paraphrase among the batch's paraphrases and non-paraphrases, similarities divided by a
  temperature.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator, Sequence

import torch

from interp.models import HookedModel, Intervention
from interp.patching import Task

Triplet = tuple[str, str, str]
DATA = Path(__file__).resolve().parent / "data" / "sentence_pairs.tsv"


def load_sentence_pairs() -> list[Triplet]:
    """The shipped (anchor, paraphrase, non_paraphrase) triplets."""
    with DATA.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(r["anchor"], r["paraphrase"], r["non_paraphrase"]) for r in rows]


def sentence_pair_task(model: HookedModel, triplets: Sequence[Triplet] | None = None, batch_size: int = 16,
                       temperature: float = 0.05) -> Task:
    """The retrieval task above for `model`, an encoder with pooled embeddings: a `Task`
    without token pairs, with its own loss (InfoNCE) and score (pair accuracy)."""
    if model.cfg.is_causal:
        raise ValueError("the sentence-pair task needs a sentence encoder (e.g. minilm); this model is causal")
    triplets = list(load_sentence_pairs() if triplets is None else triplets)
    if not triplets:
        raise ValueError("the sentence-pair task needs at least one (anchor, paraphrase, non_paraphrase) triplet")
    if any(len(t) != 3 or not all(isinstance(s, str) and s.strip() for s in t) for t in triplets):
        raise ValueError("each triplet must be three non-empty strings (anchor, paraphrase, non_paraphrase)")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (InfoNCE needs negatives), got {batch_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    anchors, paraphrases, others = (list(column) for column in zip(*triplets))

    def loss(model: HookedModel, interventions: Sequence[Intervention]) -> Iterator[torch.Tensor]:
        for start in range(0, len(anchors), batch_size):
            rows = slice(start, start + batch_size)
            a = model.encode(anchors[rows], interventions=interventions)
            candidates = model.encode(paraphrases[rows] + others[rows], interventions=interventions)
            logits = a @ candidates.T / temperature
            yield torch.nn.functional.cross_entropy(logits, torch.arange(len(a), device=logits.device))

    def pair_accuracy(model: HookedModel, interventions: Sequence[Intervention]) -> float:
        with torch.no_grad():
            a = model.encode(anchors, interventions=interventions)
            same = (a * model.encode(paraphrases, interventions=interventions)).sum(dim=1)
            different = (a * model.encode(others, interventions=interventions)).sum(dim=1)
        return (same[:, None] > different[None, :]).float().mean().item()

    return Task(name="sentence-pairs", loss=loss, score=pair_accuracy, score_name="pair_accuracy")
