"""`MapsResult`: every head's MAPS scores, with the labels to read, plot and save them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd
import torch

from interp.results import Meta, Result
from interp.results.registry import Analysis

from ..specs import MAPS


@dataclass
class MapsResult(Result):
    """Relation scores of every head.

    `scores[layer, head, r]` is the fraction of relation r's pairs whose target is in the
    top-`k[r]` of the head's map row for the source; `suppression` the same on the negated
    map. Layers left out of the run hold NaN. `unembedding` says what U was (the tied
    embedding for an encoder without an LM head); `salient` maps "L{layer}H{head}" to that
    head's salient-operations table. Figures: "scores" (default) and "suppression", heads x
    relations.
    """

    spec: ClassVar[Analysis] = MAPS
    scores: torch.Tensor
    suppression: torch.Tensor
    relations: list[str]
    k: list[int]
    pairs_usable: list[int]
    pairs_total: list[int]
    model_name: str
    unembedding: str
    embedding: str
    convention: str
    min_pairs: int
    salient: dict[str, pd.DataFrame] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, head, relation): k, score, suppression (scored layers only)."""
        n_layers, n_heads, n_rel = self.scores.shape
        grid = torch.cartesian_prod(torch.arange(n_layers), torch.arange(n_heads), torch.arange(n_rel))
        frame = pd.DataFrame({
            "layer": grid[:, 0].numpy(), "head": grid[:, 1].numpy(),
            "relation": [self.relations[i] for i in grid[:, 2].tolist()],
            "k": [self.k[i] for i in grid[:, 2].tolist()],
            "score": self.scores.reshape(-1).numpy(), "suppression": self.suppression.reshape(-1).numpy(),
        })
        return frame.dropna(subset=["score"]).reset_index(drop=True)

    def relations_frame(self) -> pd.DataFrame:
        """One row per scored relation: k and how many of its pairs were usable."""
        return pd.DataFrame({"relation": self.relations, "k": self.k, "pairs_usable": self.pairs_usable,
                             "pairs_total": self.pairs_total})

    def top(self, relation: str, n: int = 5, suppression: bool = False) -> pd.DataFrame:
        """The `n` best heads for `relation` (by suppression score if asked)."""
        if relation not in self.relations:
            raise ValueError(f"relation {relation!r} was not scored; scored: {', '.join(self.relations)}")
        column = "suppression" if suppression else "score"
        frame = self.to_frame()
        frame = frame[frame["relation"] == relation]
        return frame.sort_values(column, ascending=False, kind="stable").head(n).reset_index(drop=True)

    def meta(self) -> Meta:
        parameters = {"relations": self.relations, "k": self.k, "embedding": self.embedding,
                      "min_pairs": self.min_pairs, "token_convention": self.convention}
        return Meta(model=self.model_name, parameters=parameters, extra={"unembedding": self.unembedding})

    def tables(self) -> dict[str, pd.DataFrame]:
        """scores (`to_frame`), relations, and salient_L{layer}H{head} per listed head."""
        tables = {"scores": self.to_frame(), "relations": self.relations_frame()}
        tables.update({f"salient_{name}": frame for name, frame in self.salient.items()})
        return tables

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"scores": self.scores, "suppression": self.suppression}
