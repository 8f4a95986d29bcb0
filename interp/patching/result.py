"""`PatchResult`: a patching sweep's numbers with the labels to read, plot and save them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch


@dataclass
class Comparison:
    """Agreement of an estimate with a reference sweep: correlations of their effects over
    `n` components, and the large reference effects the estimate misses."""

    pearson: float
    spearman: float
    n: int
    misses: pd.DataFrame


@dataclass
class PatchResult:
    """The metric after each patch.

    `values` has one axis per name in `axes` (e.g. `("layer", "pos", "head")`); with
    `normalized`, 1 means the patch fully restores the clean behaviour (denoising) and 0 that
    it changes nothing. `pos_labels` are the first clean prompt's tokens, for position axes.
    """

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
        if self.normalized:
            return self.values - (0.0 if self.direction == "denoise" else 1.0)
        return self.values - (self.corrupt_metric if self.direction == "denoise" else self.clean_metric)

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

    def _grid(self) -> tuple[torch.Tensor, list[str], list[str], str]:
        """The values as a 2-D grid `[rows, cols]` with labels, for a heatmap."""
        v, axes = self.values, self.axes
        tok = [f"{i}:{t}" for i, t in enumerate(self.pos_labels)] or None
        if axes == ("layer",):
            return v[None], ["all positions"], [f"L{l}" for l in range(v.shape[0])], "layer"
        if axes == ("layer", "pos"):
            return v, [f"L{l}" for l in range(v.shape[0])], tok or list(map(str, range(v.shape[1]))), "position"
        if axes == ("layer", "head"):
            return v, [f"L{l}" for l in range(v.shape[0])], [f"H{h}" for h in range(v.shape[1])], "head"
        heads = [f"L{l}H{h}" for l in range(v.shape[0]) for h in range(v.shape[-1] if axes[-1] == "head" else v.shape[1])]
        if axes == ("layer", "pos", "head"):
            return v.permute(0, 2, 1).reshape(-1, v.shape[1]), heads, tok or list(map(str, range(v.shape[1]))), "position"
        if axes == ("layer", "head", "dest_pos"):
            return v.reshape(-1, v.shape[2]), heads, tok or list(map(str, range(v.shape[2]))), "destination position"
        cols = [f"{d}->{s}" for d in range(v.shape[2]) for s in range(v.shape[3])]
        return v.reshape(-1, v.shape[2] * v.shape[3]), heads, cols, "destination -> source"

    def figure(self):
        """A plotly heatmap of the sweep, diverging around 0."""
        import plotly.graph_objects as go

        grid, rows, cols, xlabel = self._grid()
        limit = float(torch.nan_to_num(grid).abs().max()) or 1.0
        what = "normalised metric" if self.normalized else "metric"
        fig = go.Figure(go.Heatmap(z=grid.numpy(), x=cols, y=rows, colorscale="RdBu", zmid=0,
                                   zmin=-limit, zmax=limit, colorbar={"title": what}))
        fig.update_layout(
            title=f"{self.method} patching ({self.direction}) of {self.component} — {self.model_name}, {self.task_name}",
            xaxis_title=xlabel, yaxis={"autorange": "reversed"})
        return fig

    def save(self, runs_dir: str | Path) -> Path:
        """Write this result as a bundle in `runs_dir`; returns the bundle's folder."""
        from ..results import write_bundle

        meta = {
            "analysis": f"patching-{self.method}", "model": self.model_name, "task": self.task_name,
            "parameters": {"component": self.component, "per_position": self.per_position,
                           "direction": self.direction, "normalized": self.normalized, "axes": list(self.axes),
                           "layers": self.layers},
            "clean_metric": self.clean_metric, "corrupt_metric": self.corrupt_metric,
            "pos_labels": self.pos_labels,
        }
        return write_bundle(runs_dir, meta, tables={"values": self.to_frame()},
                            tensors={"values": self.values}, figures={"heatmap": self.figure()})
