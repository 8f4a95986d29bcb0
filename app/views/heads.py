"""The heads grid of one model (layers x heads, coloured by a chosen per-head metric) and
the page of one head (its numbers in every analysis, its patterns, MAPS operations, ...)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import dcc, html

from app.data import HeadMetric, Runs, patching_baseline, patching_quantity
from app.views.common import (bundle_href, error_card, frame_table, graph, grid_href, head_href, heatmap,
                              notice, section)

MAX_PATTERN_PROMPTS = 6


def models_page(runs: Runs, model: str | None) -> list:
    """The list of models with a heads grid; `model`, if given, is one without readable bundles."""
    return [html.H2("Heads grids" if model is None else "Model not found"),
            notice("Choose a model." if model is None else f"No readable bundle is for model {model!r}."),
            html.Ul([html.Li(dcc.Link(m, href=grid_href(m))) for m in runs.models()], className="inline")]


def head_not_found(model: str, why: str) -> list:
    return [html.H2("Head not found"), notice(why), html.P(dcc.Link("heads grid", href=grid_href(model)))]


def grid_page(runs: Runs, model: str) -> list:
    metrics, errors = runs.head_metrics(model)
    page = [html.H2(f"Heads grid: {model}"), *[error_card(f"bundle {name}", why) for name, why in errors]]
    if not metrics:
        return page + [notice("No bundle of this model has per-head numbers (heads, sinks, pruning, maps, "
                              "or patching of heads without positions).")]
    options = [{"label": f"{m.label} — {m.bundle}", "value": m.key} for m in metrics]
    return page + [
        html.Label("colour by", htmlFor="grid-metric"),
        dcc.Dropdown(id="grid-metric", options=options, value=metrics[0].key, clearable=False),
        dcc.Store(id="grid-model", data=model),
        graph(grid_figure(metrics[0]), "heads-grid"),
        html.P("Click a cell to open that head's page.", className="muted"),
    ]


def grid_figure(metric: HeadMetric) -> go.Figure:
    """`metric` as a layers x heads heatmap on numeric axes (x head, y layer), with each
    cell's detail in its hover text."""
    values = metric.values
    n_layers, n_heads = int(values["layer"].max()) + 1, int(values["head"].max()) + 1
    z = np.full((n_layers, n_heads), np.nan)
    detail = np.full((n_layers, n_heads), "", dtype=object)
    rows, cols = values["layer"].to_numpy(), values["head"].to_numpy()
    z[rows, cols] = values["value"].to_numpy()
    detail[rows, cols] = values["detail"].to_numpy()
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    custom = np.dstack([layer, head, detail]).tolist()
    fig = heatmap(z, list(range(n_heads)), list(range(n_layers)), title=f"{metric.label} — {metric.bundle}",
                  quantity=metric.quantity, scale=metric.scale, customdata=custom,
                  hovertemplate="L%{customdata[0]}H%{customdata[1]}: %{z:.4f} %{customdata[2]}<extra></extra>",
                  height=max(300, 60 * n_layers + 150))
    fig.update_xaxes(title="head", tickvals=list(range(n_heads)), ticktext=[f"H{h}" for h in range(n_heads)])
    fig.update_yaxes(title="layer", tickvals=list(range(n_layers)), ticktext=[f"L{l}" for l in range(n_layers)])
    return fig


def head_page(runs: Runs, model: str, layer: int, head: int, n_heads: int) -> list:
    """The page of head L`layer`H`head` of `model`, which has `n_heads` heads per layer."""
    metrics, errors = runs.head_metrics(model)
    page = [html.H2(f"Head L{layer}H{head} of {model}"),
            html.P([dcc.Link("← heads grid", href=grid_href(model)),
                    *([" · ", dcc.Link("previous head", href=head_href(model, layer, head - 1))] if head > 0 else []),
                    *([" · ", dcc.Link("next head", href=head_href(model, layer, head + 1))]
                      if head + 1 < n_heads else [])]),
            *[error_card(f"bundle {name}", why) for name, why in errors],
            section("Numbers in every analysis", _numbers(metrics, layer, head))]
    entries = [e for e in runs.entries() if e.ok and e.bundle.meta["model"] == model]
    for title, build in (("Attention patterns on stored prompts", _patterns),
                         ("QK / OV summaries", _qk_ov),
                         ("Attention received per key position (sinks)", _sink_alpha),
                         ("MAPS: relations and salient operations", _maps),
                         ("Patching effect per position", _patching_positions)):
        parts = []
        for entry in entries:
            try:
                parts.extend(build(runs, entry, layer, head))
            except Exception as error:  # a damaged bundle must not take the page down
                parts.append(error_card(f"bundle {entry.path.name}", f"{type(error).__name__}: {error}"))
        if parts:
            page.append(section(title, *parts))
    return page


def _numbers(metrics: list[HeadMetric], layer: int, head: int) -> html.Div:
    rows = []
    for metric in metrics:
        values = metric.values
        here = values[(values["layer"] == layer) & (values["head"] == head)]
        if here.empty:
            continue
        size = values["value"].abs() if metric.scale == "signed" else values["value"]
        rank = int((size > size[here.index[0]]).sum()) + 1
        rows.append({"analysis": metric.analysis, "metric": metric.label, "value": float(here["value"].iloc[0]),
                     "rank": f"{rank} of {len(values)}", "detail": here["detail"].iloc[0],
                     "bundle": dcc.Link(metric.bundle, href=bundle_href(metric.bundle))})
    if not rows:
        return notice("No per-head numbers for this head.")
    return frame_table(pd.DataFrame(rows), table_id="head-numbers")


def _head_rows(frame: pd.DataFrame, layer: int, head: int) -> pd.DataFrame:
    return frame[(frame["layer"] == layer) & (frame["head"] == head)]


def _patterns(runs: Runs, entry, layer: int, head: int) -> list:
    """Table "patterns" (prompt, layer, head, query, key, value, [query_token, key_token])."""
    if "patterns" not in entry.bundle.table_names:
        return []
    rows = _head_rows(runs.table(entry, "patterns"), layer, head)
    figures = []
    for prompt, grid in list(rows.groupby("prompt"))[:MAX_PATTERN_PROMPTS]:
        z = grid.pivot(index="query", columns="key", values="value")
        labels = _token_labels(grid, z.index, z.columns)
        figures.append(graph(heatmap(z.to_numpy(), labels[1], labels[0], quantity="attention<br>(share)",
                                     scale="share", height=380, title=f"prompt {prompt} — {entry.path.name}")))
    return [html.Div(figures, className="grid-2")]


def _token_labels(grid: pd.DataFrame, queries, keys) -> tuple[list[str], list[str]]:
    if "query_token" not in grid or "key_token" not in grid:
        return [str(q) for q in queries], [str(k) for k in keys]
    q_tok = dict(zip(grid["query"], grid["query_token"]))
    k_tok = dict(zip(grid["key"], grid["key_token"]))
    return [f"{q}:{q_tok[q]}" for q in queries], [f"{k}:{k_tok[k]}" for k in keys]


def _qk_ov(runs: Runs, entry, layer: int, head: int) -> list:
    """Any table whose name starts with "qk" or "ov" and has layer and head columns."""
    parts = []
    for name in entry.bundle.table_names:
        if not name.lower().startswith(("qk", "ov")):
            continue
        frame = runs.table(entry, name)
        if {"layer", "head"} <= set(frame.columns):
            parts += [html.H4(f"{name} — {entry.path.name}"), frame_table(_head_rows(frame, layer, head))]
    return parts


def _sink_alpha(runs: Runs, entry, layer: int, head: int) -> list:
    if entry.bundle.meta["analysis"] != "sinks":
        return []
    rows = _head_rows(runs.table(entry, "heads"), layer, head).sort_values("key")
    tokens = runs.table(entry, "rates").set_index("key")["token"]
    labels = [f"{k}:{tokens.get(k, '')}" for k in rows["key"]]
    fig = go.Figure(go.Bar(x=labels, y=rows["alpha"], name="α"))
    epsilon = entry.bundle.meta.get("parameters", {}).get("epsilon")
    if epsilon is not None:
        fig.add_hline(y=epsilon, line_dash="dot", annotation_text=f"ε = {epsilon}")
    frame = rows["frame"].iloc[0] if len(rows) else ""
    fig.update_layout(title=f"mean attention α per key — frame {frame} — {entry.path.name}",
                      yaxis_title="α", height=320)
    return [graph(fig)]


def _maps(runs: Runs, entry, layer: int, head: int) -> list:
    if entry.bundle.meta["analysis"] != "maps":
        return []
    scores = _head_rows(runs.table(entry, "scores"), layer, head).sort_values("score", ascending=False)
    parts = [html.H4(f"relation scores — {entry.path.name}"),
             frame_table(scores.drop(columns=["layer", "head"]).head(10))]
    salient = f"salient_L{layer}H{head}"
    if salient in entry.bundle.table_names:
        parts += [html.H4("salient operations (source token → tokens it is mapped to)"),
                  frame_table(runs.table(entry, salient), table_id="salient")]
    return parts


def _patching_positions(runs: Runs, entry, layer: int, head: int) -> list:
    meta = entry.bundle.meta
    axes = list(meta.get("parameters", {}).get("axes", []))
    if not meta["analysis"].startswith("patching") or axes not in (["layer", "pos", "head"], ["layer", "head", "dest_pos"]):
        return []
    position = axes[-1] if axes[-1] != "head" else "pos"
    rows = _head_rows(runs.table(entry, "values"), layer, head).sort_values(position)
    labels = meta.get("pos_labels") or []
    x = [f"{p}:{labels[p]}" if p < len(labels) else str(p) for p in rows[position]]
    fig = go.Figure(go.Bar(x=x, y=rows["value"] - patching_baseline(meta)))
    fig.update_layout(title=f"{meta['parameters'].get('component')} per {position} — {entry.path.name}",
                      yaxis_title=patching_quantity(meta), margin={"l": 90}, height=320)
    return [graph(fig), dcc.Link("whole sweep", href=bundle_href(entry.path.name))]
