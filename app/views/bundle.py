"""The page of one bundle: its meta, then a view made for its analysis (rollout/flow maps
over tokens, patching heatmaps, pruning curves, the MAPS heads x relations table, ...),
falling back to its stored figures and tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import dcc, html

from app.data import Runs, bundle_metrics, patching_baseline, patching_quantity
from app.views.common import (compact, download_href, error_card, frame_table, graph, grid_href, head_href, heatmap,
                              notice, section, when)
from app.views.heads import grid_figure


def bundle_not_found(name: str) -> list:
    return [html.H2("Bundle not found"), notice(f"There is no bundle named {name!r} in the runs folder.")]


def bundle_page(runs: Runs, entry) -> list:
    """The page of one listed bundle (an error card for an unreadable one)."""
    name = entry.path.name
    if not entry.ok:
        return [html.H2(f"Bundle {name}"), error_card(f"bundle {name}", entry.error)]
    meta = entry.bundle.meta
    family = "patching" if meta["analysis"].startswith("patching") else meta["analysis"]
    render = _VIEWS.get(family, _generic)
    try:
        body = render(runs, entry)
    except Exception as error:  # a part that fails to load: say which bundle, keep serving
        body = [error_card(f"bundle {name}", f"{type(error).__name__}: {error}")]
    return [html.H2(f"{meta['analysis']} — {meta['model']}"), _meta_block(entry), *body, _downloads(entry)]


def _meta_block(entry) -> html.Div:
    meta = entry.bundle.meta
    rows = [("bundle", entry.path.name), ("analysis", meta["analysis"]),
            ("model", dcc.Link(meta["model"], href=grid_href(meta["model"]))), ("task", str(meta.get("task") or "")),
            ("created", when(meta.get("created"))), ("seed", str(meta.get("seed"))),
            ("headlab", str(meta.get("headlab_version")))]
    rows += [(f"parameters.{k}", compact(v)) for k, v in (meta.get("parameters") or {}).items()]
    return html.Table([html.Tr([html.Th(k), html.Td(v)]) for k, v in rows], className="meta", id="bundle-meta")


def _downloads(entry) -> html.Div:
    links = [html.A(f"{t}.csv", href=download_href(entry.path.name, t)) for t in entry.bundle.table_names]
    return section("Tables as CSV", html.Div(links, className="inline"))


def _stored_figures(runs: Runs, entry) -> list:
    return [graph(runs.figure(entry, name)) for name in entry.bundle.figure_names]


def _generic(runs: Runs, entry) -> list:
    tables = [section(f"table {name}", frame_table(runs.table(entry, name), max_rows=50))
              for name in entry.bundle.table_names]
    return _stored_figures(runs, entry) + tables


def _with_grids(runs: Runs, entry) -> list:
    """Layers x heads heatmaps of the bundle's per-head numbers, linking to the grid."""
    metrics = bundle_metrics(runs, entry)
    if not metrics:
        return []
    model = entry.bundle.meta["model"]
    return [section("Per head", *[graph(grid_figure(m)) for m in metrics],
                    dcc.Link("open in the heads grid (click a head for its page)", href=grid_href(model)))]


# ---------------------------------------------------------------------- heads, sinks, other


def _heads(runs: Runs, entry) -> list:
    scores = runs.table(entry, "scores")
    top = scores.sort_values("score", ascending=False).groupby("kind", sort=False).head(3)
    model = entry.bundle.meta["model"]
    links = [dcc.Link(f"{r.kind} L{r.layer}H{r.head} ({r.score:.3f})", href=head_href(model, r.layer, r.head))
             for r in top.itertuples()]
    return [section("Top heads per kind", html.Div(links, className="inline"))] + _with_grids(runs, entry)


def _sinks(runs: Runs, entry) -> list:
    return (_stored_figures(runs, entry) + _with_grids(runs, entry)
            + [section("Sink rate per key position", frame_table(runs.table(entry, "rates"), max_rows=40))])


def _attribution(runs: Runs, entry) -> list:
    return _stored_figures(runs, entry) + [section("Summary", frame_table(runs.table(entry, "summary")))]


# ---------------------------------------------------------------------- rollout / flow


def _token_maps(runs: Runs, entry) -> list:
    maps = runs.table(entry, "maps")
    str_tokens = entry.bundle.meta.get("str_tokens") or []
    prompts = sorted(maps["prompt"].unique())
    layers = sorted(maps["layer"].unique())
    options = [{"label": f"{p}: " + (" ".join(str_tokens[p])[:80] if p < len(str_tokens) else ""), "value": int(p)}
               for p in prompts]
    what = entry.bundle.meta["analysis"]
    return [
        html.P(f"{what}: how much each output position (row) draws on each input token (column), after "
               "the chosen layer.", className="muted"),
        dcc.Store(id="tokmap-bundle", data=entry.path.name),
        html.Label("prompt", htmlFor="tokmap-prompt"),
        dcc.Dropdown(id="tokmap-prompt", options=options, value=int(prompts[0]), clearable=False),
        html.Label("after layer"),
        dcc.Slider(id="tokmap-layer", min=int(layers[0]), max=int(layers[-1]), step=1, value=int(layers[-1]),
                   marks={layer: str(layer) for layer in range(int(layers[0]), int(layers[-1]) + 1)}),
        graph(token_map_figure(runs, entry, int(prompts[0]), int(layers[-1])), "tokmap-graph"),
    ]


def token_map_figure(runs: Runs, entry, prompt: int, layer: int) -> go.Figure:
    """One prompt's rollout/flow map after `layer`, queries x keys, from table "maps"."""
    maps = runs.table(entry, "maps")
    rows = maps[(maps["prompt"] == prompt) & (maps["layer"] == layer)]
    if rows.empty:
        return go.Figure(layout={"title": f"no values for prompt {prompt} after layer {layer}"})
    z = rows.pivot(index="query", columns="key", values="value")
    q_tok = dict(zip(rows["query"], rows.get("query_token", rows["query"])))
    k_tok = dict(zip(rows["key"], rows.get("key_token", rows["key"])))
    fig = heatmap(z.to_numpy(), [f"{k}:{k_tok[k]}" for k in z.columns], [f"{q}:{q_tok[q]}" for q in z.index],
                  title=f"{entry.bundle.meta['analysis']} after layer {layer}, prompt {prompt}",
                  quantity="attribution<br>(share of the output)", scale="share", height=520)
    fig.update_xaxes(title="input token (key)")
    fig.update_yaxes(title="output position (query)")
    return fig


# ---------------------------------------------------------------------- patching


def _patching(runs: Runs, entry) -> list:
    meta = entry.bundle.meta
    parameters = meta.get("parameters", {})
    axes = tuple(parameters.get("axes", []))
    values = runs.table(entry, "values")
    effects = values.assign(value=values["value"] - patching_baseline(meta))
    grid = _patching_grid(effects, axes, meta.get("pos_labels") or [])
    summary = html.P(f"clean metric {meta.get('clean_metric', float('nan')):.4g}, corrupted "
                     f"{meta.get('corrupt_metric', float('nan')):.4g}; {parameters.get('direction')} patching of "
                     f"{parameters.get('component')}" + (", normalised (1 = clean behaviour restored)"
                                                        if parameters.get("normalized") else ""))
    if grid is None:
        return [summary] + _stored_figures(runs, entry)
    z, x, y, x_title, y_title = grid
    fig = heatmap(z, x, y, quantity=patching_quantity(meta), scale="signed", height=max(320, 28 * len(y) + 160),
                  title=f"{meta['analysis']} of {parameters.get('component')} — {meta['model']}, {meta.get('task')}")
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title)
    return [summary, graph(fig, "patching-heatmap")]


def _patching_grid(values: pd.DataFrame, axes: tuple, labels: list[str]):
    """(z, x labels, y labels, x title, y title) for the axes this page draws, else None."""
    def tokens(positions):
        return [f"{p}:{labels[p]}" if p < len(labels) else str(p) for p in positions]

    if axes == ("layer", "head"):
        z = values.pivot(index="layer", columns="head", values="value")
        return z.to_numpy(), [f"H{h}" for h in z.columns], [f"L{l}" for l in z.index], "head", "layer"
    if axes == ("layer", "pos"):
        z = values.pivot(index="layer", columns="pos", values="value")
        return z.to_numpy(), tokens(z.columns), [f"L{l}" for l in z.index], "position", "layer"
    if axes in (("layer", "pos", "head"), ("layer", "head", "dest_pos")):
        position = "pos" if axes[1] == "pos" else "dest_pos"
        z = values.pivot(index=["layer", "head"], columns=position, values="value")
        return z.to_numpy(), tokens(z.columns), [f"L{l}H{h}" for l, h in z.index], position, "head"
    if axes == ("layer",):
        return values["value"].to_numpy()[None], [f"L{l}" for l in values["layer"]], ["all positions"], "layer", ""
    return None


# ---------------------------------------------------------------------- pruning


def _pruning(runs: Runs, entry) -> list:
    meta = entry.bundle.meta
    metric = (meta.get("parameters") or {}).get("metric", "metric")
    curve = runs.table(entry, "curve")
    fig = go.Figure()
    for order, rows in curve.groupby("order", sort=False):
        rows = rows.sort_values("fraction")
        spread = rows["metric_std"] if "metric_std" in rows and rows["metric_std"].gt(0).any() else None
        fig.add_trace(go.Scatter(x=rows["fraction"], y=rows["metric"], mode="lines+markers", name=str(order),
                                 customdata=rows["n_pruned"],
                                 error_y=None if spread is None else {"type": "data", "array": spread},
                                 hovertemplate="%{x:.2f} pruned (%{customdata} heads): %{y:.4g}<extra>" + str(order)
                                               + "</extra>"))
    fig.update_layout(title=f"{metric} as heads are pruned — {meta['model']}, {meta.get('task')}",
                      xaxis_title="fraction of heads pruned", yaxis_title=metric, height=420,
                      legend_title="pruning order")
    return [graph(fig, "pruning-curve")] + _with_grids(runs, entry)


# ---------------------------------------------------------------------- MAPS


def _maps(runs: Runs, entry) -> list:
    scores = runs.table(entry, "scores")
    table = scores.pivot(index=["layer", "head"], columns="relation", values="score")
    model = entry.bundle.meta["model"]
    salient = [name for name in entry.bundle.table_names if name.startswith("salient_")]
    parts = [section("Heads × relations (share of pairs whose target is among the head's top-k outputs; "
                     "shaded from 0, white, to 1)",
                     _scores_table(table, model)),
             section("Relations", frame_table(runs.table(entry, "relations")))]
    if salient:
        links = [dcc.Link(name.removeprefix("salient_"), href=_salient_href(model, name)) for name in salient]
        parts.append(section("Heads with salient operations", html.Div(links, className="inline")))
    return parts + _stored_figures(runs, entry)


def _salient_href(model: str, table: str) -> str:
    layer, head = table.removeprefix("salient_L").split("H")
    return head_href(model, int(layer), int(head))


def _scores_table(table: pd.DataFrame, model: str) -> html.Div:
    """Rows heads, columns relations; each cell shaded by its score on a fixed 0-1 scale
    (white 0, darkest 1), the same in every bundle."""
    header = html.Tr([html.Th("head")] + [html.Th(r, className="rotate") for r in table.columns])
    rows = []
    for (layer, head), values in table.iterrows():
        cells = [html.Td(dcc.Link(f"L{layer}H{head}", href=head_href(model, layer, head)))]
        for v in values:
            shade = 0.0 if np.isnan(v) else float(v)
            style = {"backgroundColor": f"rgba(31, 119, 180, {shade:.2f})", "color": "white" if shade > 0.6 else "black"}
            cells.append(html.Td("" if np.isnan(v) else f"{v:.2f}", style=style))
        rows.append(html.Tr(cells))
    return html.Div(html.Table([html.Thead(header), html.Tbody(rows)], className="data maps", id="maps-table"),
                    className="table-wrap")


_VIEWS = {
    "heads": _heads,
    "sinks": _sinks,
    "attribution-compare": _attribution,
    "rollout": _token_maps,
    "flow": _token_maps,
    "patching": _patching,
    "pruning": _pruning,
    "maps": _maps,
}
