"""Results of MAPS validation (see `validation.py`): static vs dynamic scores, and the
causal ablation curves. Both are results of the analysis "maps-validation"; meta parameters
"validation" says which ("dynamic" or "causal")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from interp.results import Meta, Result
from interp.results.registry import Analysis

from ..specs import MAPS_VALIDATION


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson r of two score tensors over their finite entries; NaN when either is constant."""
    x, y = x.reshape(-1).double(), y.reshape(-1).double()
    keep = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[keep].numpy(), y[keep].numpy()
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


@dataclass
class DynamicValidation(Result):
    """Static and dynamic MAPS scores of every head, `[layer, head, relation]`.

    `without_context`: dynamic scores with every head's last query row forced onto the
    source token; `with_context`: with the model's own attention. `n_pairs[r]` pairs were
    scored (each in every template of `templates[r]`); U is `unembedding`.
    """

    spec: ClassVar[Analysis] = MAPS_VALIDATION
    static: torch.Tensor
    without_context: torch.Tensor
    with_context: torch.Tensor
    relations: list[str]
    k: list[int]
    n_pairs: list[int]
    templates: dict[str, list[str]]
    model_name: str
    unembedding: str
    embedding: str
    max_pairs: int | None
    seed: int

    def to_frame(self) -> pd.DataFrame:
        """One row per relation: Pearson r between static and dynamic scores across heads
        (NaN where one side is the same for every head), and each score's best head value:
        an r computed over scores that are zero for all but one or two heads says little."""
        n_heads = self.static.shape[0] * self.static.shape[1]
        columns = range(len(self.relations))
        best = lambda t: [float(t[..., i].max()) for i in columns]  # noqa: E731
        return pd.DataFrame({
            "relation": self.relations,
            "r_without_context": [pearson(self.static[..., i], self.without_context[..., i]) for i in columns],
            "r_with_context": [pearson(self.static[..., i], self.with_context[..., i]) for i in columns],
            "n_pairs": self.n_pairs,
            "n_heads": [n_heads] * len(self.relations),
            "static_max": best(self.static),
            "without_context_max": best(self.without_context),
            "with_context_max": best(self.with_context),
        })

    def heads_frame(self) -> pd.DataFrame:
        """One row per (relation, layer, head): static and both dynamic scores."""
        n_layers, n_heads, n_rel = self.static.shape
        grid = torch.cartesian_prod(torch.arange(n_rel), torch.arange(n_layers), torch.arange(n_heads))
        pick = lambda t: t.permute(2, 0, 1).reshape(-1).numpy()  # noqa: E731  (relation-major, like grid)
        return pd.DataFrame({
            "relation": [self.relations[i] for i in grid[:, 0].tolist()],
            "layer": grid[:, 1].numpy(), "head": grid[:, 2].numpy(),
            "static": pick(self.static), "dynamic_without_context": pick(self.without_context),
            "dynamic_with_context": pick(self.with_context),
        })

    def meta(self) -> Meta:
        parameters = {"validation": "dynamic", "relations": self.relations, "k": self.k, "templates": self.templates,
                      "embedding": self.embedding, "max_pairs": self.max_pairs}
        return Meta(model=self.model_name, parameters=parameters, seed=self.seed,
                    extra={"unembedding": self.unembedding})

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"correlations": self.to_frame(), "heads": self.heads_frame()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"static": self.static, "without_context": self.without_context, "with_context": self.with_context}


@dataclass
class CausalValidation(Result):
    """Relation accuracy after ablating heads.

    `baseline[r]`: accuracy with no ablation; `top[r, j]`: after ablating the j+1 best heads
    by static score (`top_heads[r]`, as (layer, head)); `random[r, d, j]`: after ablating the
    first j+1 heads of random draw d. `static` holds the scores `[layer, head, relation]`.
    """

    spec: ClassVar[Analysis] = MAPS_VALIDATION
    relations: list[str]
    n_pairs: list[int]
    baseline: torch.Tensor
    top: torch.Tensor
    random: torch.Tensor
    top_heads: list[list[tuple[int, int]]]
    static: torch.Tensor
    templates: dict[str, list[str]]
    model_name: str
    ablation: str
    k: int
    seed: int
    embedding: str

    def to_frame(self) -> pd.DataFrame:
        """One row per (relation, m): accuracy with the top-m heads ablated, with m random
        heads ablated (mean and std over draws), and without ablation."""
        rows = []
        for i, relation in enumerate(self.relations):
            for j in range(self.top.shape[1]):
                rows.append({"relation": relation, "m": j + 1, "top_accuracy": float(self.top[i, j]),
                             "random_accuracy_mean": float(self.random[i, :, j].mean()),
                             "random_accuracy_std": float(self.random[i, :, j].std(unbiased=False)),
                             "baseline_accuracy": float(self.baseline[i])})
        return pd.DataFrame(rows)

    def heads_frame(self) -> pd.DataFrame:
        """The ablation order: per relation, rank, layer, head and static score of the top heads."""
        rows = [{"relation": rel, "rank": rank + 1, "layer": layer, "head": head,
                 "static": float(self.static[layer, head, i])}
                for i, rel in enumerate(self.relations) for rank, (layer, head) in enumerate(self.top_heads[i])]
        return pd.DataFrame(rows)

    def meta(self) -> Meta:
        parameters = {"validation": "causal", "relations": self.relations, "ablation": self.ablation, "k": self.k,
                      "m": int(self.top.shape[1]), "n_random": int(self.random.shape[1]), "templates": self.templates,
                      "embedding": self.embedding}
        return Meta(model=self.model_name, parameters=parameters, seed=self.seed)

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"causal": self.to_frame(), "top_heads": self.heads_frame()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"baseline": self.baseline, "top": self.top, "random": self.random, "static": self.static}
