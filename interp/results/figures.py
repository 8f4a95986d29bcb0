"""Figure builders shared by every analysis's figures and the dashboard: pandas and numpy in,
plotly out, no torch.

    heatmap(z, x, y, quantity="attention<br>(share)", scale="share")
    layer_head_heatmap(frame, "score", quantity=..., scale="share")   # long (layer, head, value) table
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# How a heatmap colours its values: "share" for numbers bounded to [0, 1] (attention,
# detector scores, rates), on a fixed 0-1 range so that equal colours mean equal values in
# every figure; "signed" diverging around 0 (white), symmetric; "free" auto-scaled.
SCALES = ("share", "signed", "free")
SHARE_SLACK = 1e-6  # float32 rounding: a softmax row can sum to 1.0000001


def colouring(z: np.ndarray, quantity: str, scale: str) -> dict:
    """The colour settings of a heatmap trace of `z` (see SCALES). Raises ValueError for a
    "share" value outside [0, 1]: the fixed range would show it as 0 or 1."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    finite = np.asarray(z, dtype=float)
    finite = finite[np.isfinite(finite)]
    settings: dict = {"colorbar": {"title": {"text": quantity}}}
    if scale == "share":
        outside = finite[(finite < -SHARE_SLACK) | (finite > 1 + SHARE_SLACK)]
        if outside.size:
            raise ValueError(f"{quantity} must lie in [0, 1]; {outside.size} values do not, e.g. {outside[0]:.6g}")
        settings.update(colorscale="Viridis", zmin=0.0, zmax=1.0)
    elif scale == "signed":
        limit = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        settings.update(colorscale="RdBu", zmid=0.0, zmin=-limit, zmax=limit)
    else:
        settings.update(colorscale="Viridis")
    return settings


def heatmap(z, x, y, *, quantity: str, scale: str, title: str = "", customdata=None,
            hovertemplate: str | None = None, height: int | None = None) -> go.Figure:
    """A heatmap of `z` [rows, columns], first row on top, coloured by `scale` (see SCALES)
    with a colour bar titled `quantity` (what is drawn and its unit)."""
    z = np.asarray(z, dtype=float)
    trace = dict(z=z, x=x, y=y, customdata=customdata, **colouring(z, quantity, scale))
    if hovertemplate:
        trace["hovertemplate"] = hovertemplate
    fig = go.Figure(go.Heatmap(**trace))
    fig.update_layout(title=title, yaxis={"autorange": "reversed"}, margin={"l": 60, "r": 20, "t": 50, "b": 50})
    if height:
        fig.update_layout(height=height)
    return fig


def layer_head_grid(frame: pd.DataFrame, value: str, detail: str | None = None
                    ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """A long table (columns layer, head, `value`) as a grid: (z [layer, head] with NaN where no
    row, detail text [layer, head], n_layers, n_heads). Each (layer, head) must appear once."""
    if frame.empty:
        raise ValueError(f"no rows to draw a layers x heads grid of {value!r} from")
    duplicated = frame.duplicated(["layer", "head"])
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise ValueError(f"head L{int(row['layer'])}H{int(row['head'])} has several {value!r} rows; "
                         "select one row per head first")
    n_layers, n_heads = int(frame["layer"].max()) + 1, int(frame["head"].max()) + 1
    z = np.full((n_layers, n_heads), np.nan)
    text = np.full((n_layers, n_heads), "", dtype=object)
    rows, cols = frame["layer"].to_numpy(int), frame["head"].to_numpy(int)
    z[rows, cols] = frame[value].to_numpy(float)
    if detail is not None:
        text[rows, cols] = frame[detail].astype(str).to_numpy()
    return z, text, n_layers, n_heads


def layer_head_heatmap(frame: pd.DataFrame, value: str, *, quantity: str, scale: str, title: str = "",
                       detail: str | None = None) -> go.Figure:
    """One number per head as a layers x heads heatmap on numeric axes (x head, y layer;
    clicks give the head), each cell's `detail` in its hover text and customdata
    [layer, head, detail]."""
    z, text, n_layers, n_heads = layer_head_grid(frame, value, detail)
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    custom = np.dstack([layer, head, text]).tolist()
    fig = heatmap(z, list(range(n_heads)), list(range(n_layers)), title=title, quantity=quantity, scale=scale,
                  customdata=custom, hovertemplate="L%{customdata[0]}H%{customdata[1]}: %{z:.4g} %{customdata[2]}"
                                                   "<extra></extra>", height=max(300, 60 * n_layers + 150))
    fig.update_xaxes(title="head", tickvals=list(range(n_heads)), ticktext=[f"H{h}" for h in range(n_heads)])
    fig.update_yaxes(title="layer", tickvals=list(range(n_layers)), ticktext=[f"L{l}" for l in range(n_layers)])
    return fig


def token_labels(positions: Sequence[int], tokens: Sequence[str] | None) -> list[str]:
    """"{position}:{token}" for each position (just the position where no token is known):
    unique labels, so plotly keeps repeated tokens apart."""
    tokens = tokens or []
    return [f"{p}:{tokens[p]}" if 0 <= p < len(tokens) else str(p) for p in (int(p) for p in positions)]
