"""The figures and per-head views of the analyses of heads, drawn from their bundles' tables
and meta (pandas and plotly only, no torch): `Result.figure()` and the dashboard both call
these, so each figure is drawn one way. Registered in `analyses.specs`."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from interp.results.figures import colouring, heatmap, layer_head_grid, token_labels

Tables = Mapping[str, pd.DataFrame]
MAX_HEAD_PROMPTS = 6  # prompts whose patterns a head's page shows


def _parameters(meta: dict) -> dict:
    return meta.get("parameters") or {}


def _head_rows(frame: pd.DataFrame, layer: int, head: int) -> pd.DataFrame:
    return frame[(frame["layer"] == layer) & (frame["head"] == head)]


def _check_choice(name: str, value, available) -> None:
    available = sorted(int(v) for v in set(available))
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value not in available:
        raise IndexError(f"{name} {value!r} is out of range: this result has {name}s "
                         f"{available[0]}..{available[-1]}" if available else f"this result has no {name}s")


# ------------------------------------------------------------------ heads


def kind_label(meta: dict, kind: str | None) -> str:
    return f"{str(kind).replace('_', '-')} score"


def draw_detector_scores(tables: Tables, meta: dict, kind: str | None = None) -> go.Figure:
    """Layers x heads heatmaps of the detector scores, one per kind (or only `kind`), cells
    labelled L{layer}H{head}, on the fixed 0-1 scale."""
    scores = tables["scores"]
    kinds = list(dict.fromkeys(scores["kind"])) if kind is None else [kind]
    unknown = [k for k in kinds if k not in set(scores["kind"])]
    if unknown:
        raise KeyError(f"no {unknown[0]!r} scores here; scored kinds: {list(dict.fromkeys(scores['kind']))}")
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=kinds, horizontal_spacing=0.08)
    for col, name in enumerate(kinds, start=1):
        z, _, n_layers, n_heads = layer_head_grid(scores[scores["kind"] == name], "score")
        labels = [[f"L{layer}H{head}" for head in range(n_heads)] for layer in range(n_layers)]
        fig.add_trace(go.Heatmap(z=z, x=[f"H{h}" for h in range(n_heads)], y=[f"L{l}" for l in range(n_layers)],
                                 text=labels, texttemplate="%{text}<br>%{z:.2f}", name=name,
                                 showscale=col == len(kinds), hovertemplate=f"%{{text}}<br>{name}: %{{z:.3f}}<extra></extra>",
                                 **colouring(z, "score<br>(share of attention)", "share")), row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    fig.update_layout(title=f"Head detector scores: {meta['model']}")
    return fig


# ------------------------------------------------------------------ head patterns


def prompt_options(table: str):
    """Choices of the prompts of `table` (columns prompt, query, query_token), labelled by
    their first tokens."""
    def options(tables: Tables, meta: dict) -> list:
        frame = tables[table]
        out = []
        for prompt, rows in frame.groupby("prompt", sort=True):
            tokens = rows.drop_duplicates("query").sort_values("query")
            text = " ".join(map(str, tokens["query_token"])) if "query_token" in tokens else ""
            out.append((int(prompt), f"{int(prompt)}: {text[:80]}"))
        return out
    return options


def column_options(table: str, column: str):
    """Choices of the distinct values of `column` of `table`."""
    def options(tables: Tables, meta: dict) -> list:
        return sorted(int(v) for v in tables[table][column].unique())
    return options


def _token_grid(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """A (query, key, value) table as a grid with "position:token" labels (rows queries)."""
    z = rows.pivot(index="query", columns="key", values="value")
    tokens = {}
    for column in ("query", "key"):
        if f"{column}_token" in rows:
            tokens.update(zip(rows[column], rows[f"{column}_token"]))
    ordered = [tokens.get(p, "") for p in range(max(list(z.index) + list(z.columns)) + 1)] if tokens else None
    return z, token_labels(z.columns, ordered), token_labels(z.index, ordered)


def draw_pattern(tables: Tables, meta: dict, prompt: int = 0, layer: int = 0, head: int = 0) -> go.Figure:
    """One head's attention pattern on one stored prompt (rows queries, columns keys)."""
    patterns = tables["patterns"]
    _check_choice("prompt", prompt, patterns["prompt"])
    _check_choice("layer", layer, patterns["layer"])
    _check_choice("head", head, patterns["head"])
    rows = patterns[(patterns["prompt"] == prompt) & (patterns["layer"] == layer) & (patterns["head"] == head)]
    z, x, y = _token_grid(rows)
    fig = heatmap(z.to_numpy(), x, y, quantity="attention<br>(share)", scale="share", height=480,
                  title=f"{meta['model']} L{layer}H{head}, prompt {prompt}")
    fig.update_xaxes(title="key")
    fig.update_yaxes(title="query")
    return fig


def head_patterns_view(tables: Tables, meta: dict, layer: int, head: int) -> list:
    """The head's pattern on each stored prompt (the first few)."""
    patterns = tables["patterns"]
    prompts = sorted(patterns["prompt"].unique())[:MAX_HEAD_PROMPTS]
    return [draw_pattern(tables, meta, int(p), layer, head).update_layout(height=380) for p in prompts
            if not _head_rows(patterns[patterns["prompt"] == p], layer, head).empty]


def qk_ov_view(tables: Tables, meta: dict, layer: int, head: int) -> list:
    rows = _head_rows(tables["qk_ov"], layer, head)
    return [rows] if len(rows) else []


# ------------------------------------------------------------------ rollout and flow


def draw_token_map(tables: Tables, meta: dict, prompt: int = 0, layer: int | None = None) -> go.Figure:
    """One prompt's rollout or flow map after block `layer` (default the last): how much each
    output position (row) draws on each input token (column)."""
    maps = tables["maps"]
    _check_choice("prompt", prompt, maps["prompt"])
    layer = int(maps["layer"].max()) if layer is None else layer
    _check_choice("layer", layer, maps["layer"])
    rows = maps[(maps["prompt"] == prompt) & (maps["layer"] == layer)]
    if rows.empty:
        return go.Figure(layout={"title": f"no values for prompt {prompt} after layer {layer}"})
    z, x, y = _token_grid(rows)
    fig = heatmap(z.to_numpy(), x, y, title=f"{meta['analysis']} after layer {layer}, prompt {prompt}",
                  quantity="attribution<br>(share of the output)", scale="share", height=520)
    fig.update_xaxes(title="input token (key)")
    fig.update_yaxes(title="output position (query)")
    return fig


# ------------------------------------------------------------------ attribution-compare

IMPORTANCES = ("blank-out", "gradient")
METHODS = ("raw", "rollout", "flow")


def draw_spearman(tables: Tables, meta: dict) -> go.Figure:
    """ρ per layer for each method, one panel per importance, with the standard error; the
    paper's last-layer values (Abnar & Zuidema 2020, Table 1) as open markers."""
    frame = tables["summary"]
    last = int(frame["layer"].max())
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"vs {kind} importance" for kind in IMPORTANCES],
                        shared_yaxes=True)
    colours = dict(zip(METHODS, ("#888888", "#1f77b4", "#d62728")))
    for col, kind in enumerate(IMPORTANCES, start=1):
        for method in METHODS:
            part = frame[(frame["importance"] == kind) & (frame["method"] == method)].sort_values("layer")
            if part.empty:
                continue
            fig.add_trace(go.Scatter(x=part["layer"], y=part["spearman"], mode="lines+markers", name=method,
                                     line={"color": colours[method]}, legendgroup=method, showlegend=col == 1,
                                     error_y={"type": "data", "array": part["sem"]}), row=1, col=col)
            fig.add_trace(go.Scatter(x=[last], y=[part["paper_last_layer"].iloc[0]], mode="markers",
                                     marker={"symbol": "circle-open", "size": 11, "color": colours[method]},
                                     name=f"paper {method}", legendgroup=method, showlegend=False), row=1, col=col)
        fig.update_xaxes(title_text="layer (0-based block)", row=1, col=col)
    fig.update_yaxes(title_text="Spearman ρ (mean over prompts)", row=1, col=1)
    fig.update_layout(title=f"Attention vs input importance: {meta['model']} "
                            f"(open markers: Abnar & Zuidema 2020, Table 1)")
    return fig


# ------------------------------------------------------------------ sinks


def draw_sinks(tables: Tables, meta: dict) -> go.Figure:
    """Left: the sink rate per key position. Right: per head, the share of prompts with a sink
    at key 0."""
    rates, heads = tables["rates"], tables["heads"]
    parameters = _parameters(meta)
    labels = [f"{k}:{t}" if t else str(k) for k, t in zip(rates["key"], rates["token"])]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("sink rate per key position", "heads with a sink at key 0"))
    fig.add_trace(go.Bar(x=labels, y=rates["rate"], name="sink rate (%)"), row=1, col=1)
    first = heads[heads["key"] == 0]
    z, _, n_layers, n_heads = layer_head_grid(first, "sink_fraction")
    fig.add_trace(go.Heatmap(z=z, x=[f"H{h}" for h in range(n_heads)], y=[f"L{l}" for l in range(n_layers)],
                             showscale=False, hovertemplate="%{y}%{x}: %{z:.2f}<extra></extra>",
                             **colouring(z, "share of prompts", "share")), row=1, col=2)
    fig.update_yaxes(title_text="% of heads (α > ε)", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_layout(title=f"sinks: {meta['model']}, ε={parameters.get('epsilon')}, frame {meta.get('model_frame')}, "
                            f"BOS prepended: {parameters.get('bos_prepended')}", showlegend=False)
    return fig


def sink_label(meta: dict, group: str | None) -> str:
    return f"sink rate at key 0 (share of prompts with α > {_parameters(meta).get('epsilon')})"


def key_zero(frame: pd.DataFrame, meta: dict) -> pd.DataFrame:
    return frame[frame["key"] == 0]


def alpha_view(tables: Tables, meta: dict, layer: int, head: int) -> list:
    """The mean attention α the head gives each key position, against ε."""
    rows = _head_rows(tables["heads"], layer, head).sort_values("key")
    if rows.empty:
        return []
    tokens = tables["rates"].set_index("key")["token"]
    fig = go.Figure(go.Bar(x=[f"{k}:{tokens.get(k, '')}" for k in rows["key"]], y=rows["alpha"], name="α"))
    epsilon = _parameters(meta).get("epsilon")
    if epsilon is not None:
        fig.add_hline(y=epsilon, line_dash="dot", annotation_text=f"ε = {epsilon}")
    fig.update_layout(title=f"mean attention α per key — frame {rows['frame'].iloc[0]}", yaxis_title="α", height=320)
    return [fig]


# ------------------------------------------------------------------ pruning


def draw_pruning_curve(tables: Tables, meta: dict) -> go.Figure:
    """The task's score against the fraction of heads pruned, one line per pruning order
    (random orders: mean ± std over the seeded orders)."""
    curve = tables["curve"]
    metric = _parameters(meta).get("metric", "metric")
    fig = go.Figure()
    for order, rows in curve.groupby("order", sort=False):
        rows = rows.sort_values("fraction")
        spread = rows["metric_std"] if rows["metric_std"].gt(0).any() else None
        fig.add_trace(go.Scatter(x=rows["fraction"], y=rows["metric"], mode="lines+markers", name=str(order),
                                 customdata=rows["n_pruned"],
                                 error_y=None if spread is None else {"type": "data", "array": spread},
                                 hovertemplate="%{x:.2f} pruned (%{customdata} heads): %{y:.4g}<extra>"
                                               + str(order) + "</extra>"))
    fig.update_layout(title=f"{metric} as heads are pruned — {meta['model']}, {meta.get('task')}",
                      xaxis_title="fraction of heads pruned", yaxis_title=metric, height=420,
                      legend_title="pruning order")
    return fig


# ------------------------------------------------------------------ MAPS


def draw_relation_scores(tables: Tables, meta: dict, suppression: bool = False) -> go.Figure:
    """Heads (rows) x relations (columns): the share of the relation's pairs whose target is
    among the head's top-k outputs (`suppression`: among its bottom-k), on the 0-1 scale."""
    scores, relations = tables["scores"], tables["relations"].set_index("relation")
    column = "suppression" if suppression else "score"
    grid = scores.pivot(index=["layer", "head"], columns="relation", values=column)
    grid = grid[[r for r in relations.index if r in grid.columns]]
    labels = [f"{r} (k={relations.loc[r, 'k']}, n={relations.loc[r, 'pairs_usable']})" for r in grid.columns]
    heads = [f"L{l}H{h}" for l, h in grid.index]
    what = "suppression score" if suppression else "relation score"
    fig = heatmap(grid.to_numpy(), labels, heads, quantity=f"{what}<br>(share of pairs)", scale="share",
                  height=max(400, 14 * len(heads)),
                  title=f"MAPS {what}s — {meta['model']} (U = {meta.get('unembedding')}, "
                        f"E = {_parameters(meta).get('embedding')})")
    fig.update_xaxes(title="relation")
    fig.update_yaxes(title="head")
    return fig


def draw_suppression_scores(tables: Tables, meta: dict) -> go.Figure:
    return draw_relation_scores(tables, meta, suppression=True)


def best_relation(frame: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """Each head's best relation score (ties: the first relation)."""
    scores = frame.dropna(subset=["score"])
    return scores.loc[scores.groupby(["layer", "head"])["score"].idxmax()].sort_values(["layer", "head"])


def relations_view(tables: Tables, meta: dict, layer: int, head: int) -> list:
    """The head's ten best relations, and its salient operations when they were listed."""
    rows = _head_rows(tables["scores"], layer, head).sort_values("score", ascending=False)
    parts = [rows.drop(columns=["layer", "head"]).head(10)] if len(rows) else []
    salient = f"salient_L{layer}H{head}"
    if salient in tables:
        parts.append(tables[salient])
    return parts


# ------------------------------------------------------------------ MAPS validation


def draw_static_vs_dynamic(tables: Tables, meta: dict) -> go.Figure:
    """Static (x) against dynamic (y) score of every head, one colour per relation; left
    without context, right with context; the legend gives each relation's Pearson r."""
    frame, corr = tables["heads"], tables["correlations"].set_index("relation")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("without context", "with context"), shared_yaxes=True)
    for i, relation in enumerate(corr.index):
        part, colour = frame[frame["relation"] == relation], qualitative.Dark24[i % 24]
        heads = [f"L{l}H{h}" for l, h in zip(part["layer"], part["head"])]
        for col, column in ((1, "dynamic_without_context"), (2, "dynamic_with_context")):
            fig.add_trace(go.Scatter(
                x=part["static"], y=part[column], mode="markers", text=heads, legendgroup=relation,
                name=f"{relation} (r={corr.loc[relation, 'r_without_context']:.2f} / "
                     f"{corr.loc[relation, 'r_with_context']:.2f})",
                showlegend=col == 1, marker={"color": colour, "size": 6},
                hovertemplate="%{text}: static %{x:.2f}, dynamic %{y:.2f}<extra>" + relation + "</extra>"),
                row=1, col=col)
    fig.update_xaxes(title_text="static score", range=[-0.02, 1.02])
    fig.update_yaxes(title_text="dynamic score", range=[-0.02, 1.02], col=1)
    fig.update_layout(title=f"MAPS static vs dynamic scores — {meta['model']} (U = {meta.get('unembedding')})",
                      height=500)
    return fig


def draw_ablation_curves(tables: Tables, meta: dict) -> go.Figure:
    """Relation accuracy against the number of heads ablated: the top heads by static score
    against random heads (mean ± std over draws)."""
    frame = tables["causal"]
    parameters = _parameters(meta)
    fig = go.Figure()
    for i, relation in enumerate(dict.fromkeys(frame["relation"])):
        part, colour = frame[frame["relation"] == relation], qualitative.Dark24[i % 24]
        fig.add_trace(go.Scatter(x=part["m"], y=part["top_accuracy"], mode="lines+markers", legendgroup=relation,
                                 name=f"{relation}: top heads", line={"color": colour}))
        fig.add_trace(go.Scatter(x=part["m"], y=part["random_accuracy_mean"], mode="lines+markers",
                                 legendgroup=relation, name=f"{relation}: random heads",
                                 line={"color": colour, "dash": "dash"},
                                 error_y={"type": "data", "array": part["random_accuracy_std"]}))
    fig.update_layout(title=f"Relation accuracy after {parameters.get('ablation')}-ablating heads — {meta['model']} "
                            f"(top-{parameters.get('k')})", xaxis_title="heads ablated (m)", yaxis_title="accuracy",
                      yaxis={"range": [-0.02, 1.02]}, height=450)
    return fig
