"""Figures of patching sweeps, from a bundle's `values` table and meta (torch-free), and the
one rule for a patch's effect: effect = value - the value of the unpatched run."""

from __future__ import annotations

from typing import Mapping

import pandas as pd
import plotly.graph_objects as go

from interp.results.figures import heatmap, token_labels

POSITION_AXES = ("pos", "dest_pos", "src_pos")


def unpatched_value(direction: str, normalized: bool, clean_metric: float, corrupt_metric: float) -> float:
    """What a patch that changes nothing scores: the run being patched into is the corrupted
    one when denoising and the clean one when noising; normalised, those are 0 and 1."""
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    if normalized:
        return 0.0 if direction == "denoise" else 1.0
    return float(corrupt_metric if direction == "denoise" else clean_metric)


def _parameters(meta: dict) -> dict:
    return meta.get("parameters") or {}


def effects(frame: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """`frame` (a sweep's values table) with a column `effect` = value - unpatched value."""
    parameters = _parameters(meta)
    base = unpatched_value(parameters.get("direction", "denoise"), parameters.get("normalized", True),
                           meta.get("clean_metric", float("nan")), meta.get("corrupt_metric", float("nan")))
    return frame.assign(effect=frame["value"] - base)


def effect_unit(meta: dict) -> str:
    if _parameters(meta).get("normalized", True):
        return "normalised: 1 = clean−corrupted gap"
    return "metric units"


def method(meta: dict) -> str:
    """exact, atp, atp* or path (older bundles name it in their analysis: "patching-atp")."""
    return _parameters(meta).get("method") or meta["analysis"].removeprefix("patching-")


def _axis_label(axis: str, value, tokens: list[str]) -> str:
    if axis in POSITION_AXES:
        return token_labels([value], tokens)[0]
    return {"layer": "L", "head": "H", "kv_head": "KV"}.get(axis, f"{axis} ") + str(value)


def _labels(axes: list[str], key, tokens: list[str], sep: str = "") -> str:
    key = key if isinstance(key, tuple) else (key,)
    return sep.join(_axis_label(a, k, tokens) for a, k in zip(axes, key))


def sweep_grid(frame: pd.DataFrame, axes: tuple[str, ...], tokens: list[str]
               ) -> tuple[pd.DataFrame, list[str], list[str], str, str]:
    """The effects as a 2-D grid: (z, column labels, row labels, x title, y title). Positions
    go along x (two position axes as "destination->source"), the other axes along y; a sweep
    over layers only is one row."""
    axes = tuple(axes)
    if not axes or any(a not in frame.columns for a in axes):
        raise ValueError(f"the values table must have a column per axis {list(axes)}; it has {list(frame.columns)}")
    columns = [a for a in axes if a in POSITION_AXES] or [axes[-1]]
    rows = [a for a in axes if a not in columns]
    z = frame.assign(row="all positions").pivot(index=rows or ["row"], columns=columns, values="effect")
    x = [_labels(columns, key, tokens, sep="->") for key in z.columns]
    y = [_labels(rows, key, tokens) if rows else "all positions" for key in z.index]
    titles = {"pos": "position", "dest_pos": "destination position", "layer": "layer", "head": "head",
              "kv_head": "key/value head"}
    x_title = titles.get(columns[0], columns[0]) if len(columns) == 1 else "destination -> source position"
    return z, x, y, x_title, " / ".join(rows)


def patch_heatmap(tables: Mapping[str, pd.DataFrame], meta: dict) -> go.Figure:
    """Every patch's effect, diverging around 0 (no change), titled with the method,
    direction, component, model and task."""
    parameters = _parameters(meta)
    frame = effects(tables["values"], meta)
    z, x, y, x_title, y_title = sweep_grid(frame, tuple(parameters.get("axes", ())), meta.get("pos_labels") or [])
    fig = heatmap(z.to_numpy(), x, y, quantity=f"patching effect<br>({effect_unit(meta)})", scale="signed",
                  height=max(320, 28 * len(y) + 160),
                  title=f"{method(meta)} patching ({parameters.get('direction')}) of {parameters.get('component')} — "
                        f"{meta['model']}, {meta.get('task')}")
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title)
    return fig


def head_effects(frame: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """One effect per head, for the heads grid: sweeps over [layer, head] only."""
    if list(_parameters(meta).get("axes", [])) != ["layer", "head"]:
        return frame.iloc[0:0].assign(effect=[])
    return effects(frame, meta)


def head_label(meta: dict, group: str | None) -> str:
    parameters = _parameters(meta)
    return f"patching effect of {parameters.get('component')} ({parameters.get('direction')}, {meta.get('task')})"


def effects_per_position(tables: Mapping[str, pd.DataFrame], meta: dict, layer: int, head: int) -> list:
    """The head's effect at each position, for sweeps per position of head components."""
    axes = list(_parameters(meta).get("axes", []))
    if axes not in (["layer", "pos", "head"], ["layer", "head", "dest_pos"]):
        return []
    position = "pos" if "pos" in axes else "dest_pos"
    frame = effects(tables["values"], meta)
    rows = frame[(frame["layer"] == layer) & (frame["head"] == head)].sort_values(position)
    fig = go.Figure(go.Bar(x=token_labels(rows[position], meta.get("pos_labels")), y=rows["effect"]))
    fig.update_layout(title=f"{_parameters(meta).get('component')} per {position}",
                      yaxis_title=f"effect ({effect_unit(meta)})", margin={"l": 90}, height=320)
    return [fig]
