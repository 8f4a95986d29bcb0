"""Figures of circuits, from a bundle's tables (torch-free): the layered circuit diagram and
the faithfulness curve, shared by `Graph.figure`, `CircuitEvaluation.figure` and the dashboard."""

from __future__ import annotations

import math
from typing import Mapping

import pandas as pd
import plotly.graph_objects as go


def node_position(layer: int, head: int, n_layers: int, n_heads: int) -> tuple[float, float]:
    """Where `circuit_figure` draws a node: x is 0 for input (layer -1), 2l+1 for layer l's
    heads, 2l+2 for its MLP (head -1), 2L+1 for logits (layer L); heads spread over y,
    everything else at y = 0."""
    if layer < 0:
        return 0.0, 0.0
    if layer == n_layers:
        return 2.0 * n_layers + 1, 0.0
    if head >= 0:
        return 2.0 * layer + 1, head - (n_heads - 1) / 2
    return 2.0 * layer + 2, 0.0


def circuit_figure(edges: pd.DataFrame, nodes: pd.DataFrame, n_layers: int, n_heads: int,
                   model_name: str | None = None, max_edges: int = 500) -> "go.Figure":
    """A plotly layered diagram of a circuit from its tables (no torch; `Graph.to_frame` and
    `Graph.nodes_frame` columns): layers left to right (input left, logits right), a marker
    per node (in-graph nodes labelled), the in-graph edges only — the `max_edges` largest
    by |score| — width by |score|, blue positive, red negative, grey unscored. Hovering an
    edge's midpoint names it and its score. The trace named "heads" has one point per head
    with customdata `[layer, head]`, for links to head pages."""
    if isinstance(max_edges, bool) or not isinstance(max_edges, int) or max_edges < 1:
        raise ValueError(f"max_edges must be an int >= 1, got {max_edges!r}")
    where = {row.node: node_position(int(row.layer), int(row.head), n_layers, n_heads)
             for row in nodes.itertuples()}
    circuit = edges[edges["in_graph"]]
    size = circuit["score"].abs().fillna(-1.0)
    shown = circuit.loc[size.sort_values(ascending=False, kind="stable").index[:max_edges]]
    top = float(shown["score"].abs().max()) if len(shown) and shown["score"].notna().any() else 0.0
    offset = {"q": -0.25, "k": 0.0, "v": 0.25}

    fig = go.Figure()
    groups: dict[tuple[str, int], tuple[list, list]] = {}
    mid_x, mid_y, hover = [], [], []
    for row in shown.itertuples():
        x0, y0 = where[row.parent]
        x1, y1 = where[row.child]
        y1 += offset.get(row.qkv, 0.0) if isinstance(row.qkv, str) else 0.0
        value = float(row.score)
        sign = "unscored" if math.isnan(value) else ("positive" if value >= 0 else "negative")
        level = 0 if math.isnan(value) or top == 0 else min(4, int(5 * abs(value) / top))
        xs, ys = groups.setdefault((sign, level), ([], []))
        xs += [x0, x1, None]
        ys += [y0, y1, None]
        mid_x.append((x0 + x1) / 2)
        mid_y.append((y0 + y1) / 2)
        hover.append(f"{row.edge}<br>score {value:.4g}")
    colours = {"positive": "#2166ac", "negative": "#b2182b", "unscored": "#999999"}
    for (sign, level), (xs, ys) in sorted(groups.items()):
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                 name=f"{sign} edges", line={"color": colours[sign], "width": 1 + level * 1.5},
                                 opacity=0.7))
    fig.add_trace(go.Scatter(x=mid_x, y=mid_y, mode="markers", name="edges", hovertext=hover,
                             hoverinfo="text", marker={"size": 8, "color": "rgba(0,0,0,0)"}, showlegend=False))

    for trace_name, members in (("heads", nodes[nodes["head"] >= 0]), ("nodes", nodes[nodes["head"] < 0])):
        xy = [where[n] for n in members["node"]]
        on = members["in_graph"].astype(bool).tolist()
        fig.add_trace(go.Scatter(
            x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers+text", name=trace_name,
            text=[n if flag else "" for n, flag in zip(members["node"], on)], textposition="top center",
            hovertext=[f"{n} ({'in' if flag else 'not in'} the circuit)" for n, flag in zip(members["node"], on)],
            hoverinfo="text", showlegend=False,
            customdata=[[int(l), int(h)] for l, h in zip(members["layer"], members["head"])],
            marker={"size": [12 if flag else 6 for flag in on],
                    "color": ["#333333" if flag else "#dddddd" for flag in on]}))
    ticks = [0] + [v for l in range(n_layers) for v in (2 * l + 1, 2 * l + 2)] + [2 * n_layers + 1]
    labels = ["input"] + [t for l in range(n_layers) for t in (f"L{l} attn", f"L{l} mlp")] + ["logits"]
    count = f"{len(shown)} of {len(circuit)}" if len(shown) < len(circuit) else f"{len(shown)}"
    n_nodes = int(nodes.loc[nodes["kind"] != "logits", "in_graph"].sum()) if "kind" in nodes else None
    fig.update_layout(
        title=f"circuit of {model_name or 'a model'}: {count} edges shown"
              + (f", {n_nodes} nodes" if n_nodes is not None else ""),
        xaxis={"tickvals": ticks, "ticktext": labels, "showgrid": False, "zeroline": False},
        yaxis={"visible": False}, plot_bgcolor="white", hovermode="closest")
    return fig


def faithfulness_figure(frame: pd.DataFrame, title: str = "faithfulness",
                        confidence: float | None = None) -> "go.Figure":
    """Faithfulness against the fraction of edges (log x axis) from a table with columns
    `ranking fraction n_edges n_edges_kept faithfulness ci_low ci_high` (no torch;
    `CircuitEvaluation.to_frame`): one line per ranking, its interval as a band where the CI
    columns are set, and the full model's level (1) dashed."""
    fig = go.Figure()
    colours = {"signed": ("#1b9e77", "rgba(27,158,119,0.2)"), "absolute": ("#7570b3", "rgba(117,112,179,0.2)")}
    for ranking, rows in frame.groupby("ranking", sort=False):
        line, fill = colours.get(ranking, ("#333333", "rgba(51,51,51,0.2)"))
        x = rows["fraction"].tolist()
        if rows["ci_low"].notna().all():
            band = f"{confidence:.0%} interval" if confidence else "interval"
            fig.add_trace(go.Scatter(x=x + x[::-1], y=rows["ci_high"].tolist() + rows["ci_low"].tolist()[::-1],
                                     mode="lines", fill="toself", fillcolor=fill, line={"width": 0}, hoverinfo="skip",
                                     name=f"{ranking} {band}"))
        fig.add_trace(go.Scatter(
            x=x, y=rows["faithfulness"].tolist(), mode="lines+markers", name=f"{ranking} ranking",
            line={"color": line}, customdata=list(zip(rows["n_edges"], rows["n_edges_kept"])),
            hovertemplate="%{x:.1%} of edges (%{customdata[0]}, %{customdata[1]} kept)<br>f = %{y:.3f}"))
    fig.add_hline(y=1.0, line_dash="dash", line_color="#888888")
    # Ticks at the evaluated fractions only: a log axis labels every minor tick, which overlap.
    ticks = sorted(frame["fraction"].unique())
    fig.update_layout(title=title, xaxis={"type": "log", "title": "fraction of edges", "tickvals": ticks,
                                         "ticktext": [f"{100 * t:.3g}%" for t in ticks]},
                      yaxis={"title": "faithfulness f(C)"}, plot_bgcolor="white")
    return fig


# ---------------------------------------------------------------- from a bundle's tables

TOP_N_CHOICES = (5, 10, 20, 50, 100, 200, 500, 1000, 2000)


def _shape(meta: dict) -> tuple[int, int]:
    shape = (meta.get("parameters") or {}).get("graph") or {}
    if "n_layers" not in shape or "n_heads" not in shape:
        raise ValueError(f"a circuit bundle's meta parameters['graph'] must give n_layers and n_heads, got {shape!r}")
    return int(shape["n_layers"]), int(shape["n_heads"])


def top_edges(edges: pd.DataFrame, nodes: pd.DataFrame, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tables with the circuit replaced by the `n` edges of largest |score| (unscored edges
    never; not pruned to input -> logits paths) and the nodes those edges touch, plus logits."""
    size = edges["score"].abs()
    chosen = size[size.notna()].sort_values(ascending=False, kind="stable").index[:n]
    edges = edges.assign(in_graph=edges.index.isin(chosen))
    touched = set(edges.loc[chosen, "parent"]) | set(edges.loc[chosen, "child"]) | {"logits"}
    return edges, nodes.assign(in_graph=nodes["node"].isin(touched))


def top_n_options(tables: Mapping[str, pd.DataFrame], meta: dict) -> list:
    """The slider's stops: the saved circuit, then top-n selections up to the scored edges."""
    scored = int(tables["edges"]["score"].notna().sum())
    return [(0, "saved")] + [n for n in TOP_N_CHOICES if n <= scored]


def draw_circuit(tables: Mapping[str, pd.DataFrame], meta: dict, top_n: int = 0, max_edges: int = 500) -> go.Figure:
    """The bundle's circuit (`top_n` 0), or its `top_n` edges of largest |score|."""
    n_layers, n_heads = _shape(meta)
    edges, nodes = tables["edges"], tables["nodes"]
    if top_n:
        edges, nodes = top_edges(edges, nodes, int(top_n))
    return circuit_figure(edges, nodes, n_layers, n_heads, meta.get("model"), max_edges)


def draw_faithfulness(tables: Mapping[str, pd.DataFrame], meta: dict) -> go.Figure:
    """The faithfulness curves, titled with CPR and CMD (from meta) and what was evaluated."""
    parameters = meta.get("parameters") or {}
    title = f"faithfulness — CPR {meta.get('cpr', math.nan):.3f}, CMD {meta.get('cmd', math.nan):.3f}"
    what = [str(v) for v in (parameters.get("method"), meta.get("task")) if v]
    if what:
        title += f" ({' on '.join(what)})"
    return faithfulness_figure(tables["faithfulness"], title, parameters.get("confidence"))


def head_nodes(frame: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """The heads' node scores (the sum of each head's outgoing edge scores), where set."""
    return frame[(frame["kind"] == "head") & frame["score"].notna()]
