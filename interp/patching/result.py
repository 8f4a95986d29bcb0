"""`PatchResult`: a patching sweep's numbers with the labels to read, plot and save them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd
import torch

from interp.results import Meta, Result
from interp.results.registry import Analysis

from .figures import unpatched_value
from .spec import PATCH


@dataclass
class Comparison:
    """Agreement of an estimate with a reference sweep: correlations of their effects over
    `n` components, and the large reference effects the estimate misses."""

    pearson: float
    spearman: float
    n: int
    misses: pd.DataFrame


@dataclass
class PatchResult(Result):
    """The metric after each patch (a `Result` of the registered analysis "patch").

    `values` has one axis per name in `axes` (e.g. `("layer", "pos", "head")`); with
    `normalized`, 1 means the patch fully restores the clean behaviour (denoising) and 0 that
    it changes nothing. `pos_labels` are the first clean prompt's tokens, for position axes.
    `method` is "exact", "atp", "atp*" or "path".
    """

    spec: ClassVar[Analysis] = PATCH

    values: torch.Tensor
    axes: tuple[str, ...]
    component: str
    per_position: bool | str
    direction: str
    normalized: bool
    model_name: str
    task_name: str
    clean_metric: float
    corrupt_metric: float
    pos_labels: list[str] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    method: str = "exact"

    @property
    def effects(self) -> torch.Tensor:
        """`values` minus the value of the unpatched run (0 means the patch changed nothing)."""
        return self.values - unpatched_value(self.direction, self.normalized, self.clean_metric, self.corrupt_metric)

    def compare(self, reference: "PatchResult", threshold: float = 0.1) -> "Comparison":
        """How well this result (e.g. attribution patching) tracks `reference` (e.g. exact).

        A component is *missed* when its reference effect is at least `threshold` times the
        largest reference effect, and this result gives it the wrong sign or under half the size.
        """
        if self.axes != reference.axes or self.values.shape != reference.values.shape:
            raise ValueError(f"cannot compare results of different shapes: {self.axes} {tuple(self.values.shape)} "
                             f"vs {reference.axes} {tuple(reference.values.shape)}")
        from scipy.stats import pearsonr, spearmanr

        ours, ref = self.effects.reshape(-1), reference.effects.reshape(-1)
        keep = torch.isfinite(ours) & torch.isfinite(ref)
        if keep.sum() < 3:
            raise ValueError("compare needs at least 3 components with finite values in both results")
        a, b = ours[keep].double().numpy(), ref[keep].double().numpy()
        frame = reference.to_frame().rename(columns={"value": "reference"})
        frame["estimate"] = self.to_frame()["value"].to_numpy()
        frame["reference_effect"], frame["estimate_effect"] = b, a
        big = frame["reference_effect"].abs() >= threshold * frame["reference_effect"].abs().max()
        wrong = (frame["estimate_effect"] * frame["reference_effect"] <= 0) | (
            frame["estimate_effect"].abs() < 0.5 * frame["reference_effect"].abs())
        return Comparison(pearson=float(pearsonr(a, b)[0]), spearman=float(spearmanr(a, b)[0]), n=int(keep.sum()),
                          misses=frame[big & wrong].reset_index(drop=True))

    def to_frame(self) -> pd.DataFrame:
        """One row per patch: a column per axis, then `value`."""
        index = torch.cartesian_prod(*[torch.arange(n) for n in self.values.shape]).reshape(-1, self.values.ndim)
        frame = pd.DataFrame(index.numpy(), columns=list(self.axes))
        frame["value"] = self.values.reshape(-1).numpy()
        for axis in ("pos", "dest_pos", "src_pos"):
            if axis in frame and self.pos_labels:
                frame[axis.replace("pos", "token")] = [self.pos_labels[p] for p in frame[axis]]
        return frame.dropna(subset=["value"]).reset_index(drop=True)

    def meta(self) -> Meta:
        parameters = {"component": self.component, "per_position": self.per_position, "direction": self.direction,
                      "normalized": self.normalized, "axes": list(self.axes), "layers": self.layers,
                      "method": self.method}
        return Meta(model=self.model_name, task=self.task_name, parameters=parameters,
                    extra={"clean_metric": self.clean_metric, "corrupt_metric": self.corrupt_metric,
                           "pos_labels": self.pos_labels})

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"values": self.to_frame()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"values": self.values}
