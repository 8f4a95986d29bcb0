"""The heads grid of one model (layers x heads, coloured by a chosen per-head metric) and
the page of one head (its numbers in every analysis, then every registered head view of the
bundles of its model: patterns, QK/OV, sinks, MAPS operations, patching per position, ...)."""

from __future__ import annotations

from urllib.parse import urlencode

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import dcc, html

from app.data import GridMetric, Runs, analysis_of, run_key
from app.views.attention import head_explorer
from app.views.common import bundle_href, error_card, frame_table, graph, grid_href, head_href, notice, section
from interp.results.figures import layer_head_heatmap


def models_page(runs: Runs, model: str | None) -> list:
    """The list of models with a heads grid; `model`, if given, is one without readable bundles."""
    return [html.H2("Heads grids" if model is None else "Model not found"),
            notice("Choose a model." if model is None else f"No readable bundle is for model {model!r}."),
            html.Ul([html.Li(dcc.Link(m, href=grid_href(m))) for m in runs.models()], className="inline")]


def head_not_found(model: str, why: str) -> list:
    return [html.H2("Head not found"), notice(why), html.P(dcc.Link("heads grid", href=grid_href(model)))]


# The heads grid's pickers and the URL parameters that hold their choices (the browser keeps
# them in the URL as they change; a link with them opens the same view).
GRID_PICKERS = {"grid-metric": "metric", "scatter-x": "x", "scatter-y": "y"}


def grid_page(runs: Runs, model: str, query: dict[str, str] | None = None) -> list:
    metrics, errors = runs.head_metrics(model)
    page = [html.H2(f"Heads grid: {model}"), *[error_card(f"bundle {name}", why) for name, why in errors]]
    if not metrics:
        return page + [notice("No bundle of this model has per-head numbers (heads, sinks, pruning, maps, "
                              "or patching of heads without positions).")]
    by_key = {m.key: m for m in metrics}
    defaults = {"grid-metric": metrics[0].key, "scatter-x": metrics[0].key,
                "scatter-y": metrics[min(1, len(metrics) - 1)].key}
    chosen, unknown = {}, []
    for picker, param in GRID_PICKERS.items():
        wanted = (query or {}).get(param)
        if wanted is not None and wanted not in by_key:
            unknown.append(f"{param}={wanted!r}")
        chosen[picker] = wanted if wanted in by_key else defaults[picker]
    if unknown:
        page.append(notice(f"No per-head metric of {model} is named {' or '.join(unknown)}: shown with the first "
                           "metrics instead. Pick one below."))
    offered = newest_runs_metrics(runs, metrics)
    offered += [by_key[key] for key in dict.fromkeys(chosen.values()) if by_key[key] not in offered]  # linked older runs
    options = [{"label": f"{m.label} — {m.bundle}", "value": m.key} for m in offered]
    return page + [
        html.Label("colour by", htmlFor="grid-metric"),
        dcc.Dropdown(id="grid-metric", options=options, value=chosen["grid-metric"], clearable=False),
        html.P(by_key[chosen["grid-metric"]].how_to_read, id="grid-metric-help", className="muted"),
        dcc.Store(id="grid-model", data=model),
        graph(grid_figure(by_key[chosen["grid-metric"]]), "heads-grid"),
        html.P("Click a cell to open that head's page.", className="muted"),
        section("Two metrics across heads",
                html.Div([html.Div([html.Label("x", htmlFor="scatter-x"),
                                    dcc.Dropdown(id="scatter-x", options=options, value=chosen["scatter-x"],
                                                 clearable=False)]),
                          html.Div([html.Label("y", htmlFor="scatter-y"),
                                    dcc.Dropdown(id="scatter-y", options=options, value=chosen["scatter-y"],
                                                 clearable=False)])], className="grid-2"),
                graph(scatter_figure(by_key[chosen["scatter-x"]], by_key[chosen["scatter-y"]]), "metric-scatter"),
                html.P("Each point is a head; click one to open its page.", className="muted")),
    ]


def newest_runs_metrics(runs: Runs, metrics: list[GridMetric]) -> list[GridMetric]:
    """`metrics` without those of older identical runs (`run_key`) of a bundle already there
    (metrics come newest first): the pickers offer each distinct run once. A chosen or linked
    older one is still shown."""
    key_of = runs.run_keys()
    seen, kept = set(), []
    for metric in metrics:
        same = (key_of.get(metric.bundle, metric.bundle), metric.label)
        if same not in seen:
            seen.add(same)
            kept.append(metric)
    return kept


def scatter_figure(x: GridMetric, y: GridMetric) -> go.Figure:
    """One point per head that both metrics have, x against y, labelled L{layer}H{head}."""
    both = x.values.merge(y.values, on=["layer", "head"], suffixes=("_x", "_y"))
    fig = go.Figure(go.Scatter(x=both["value_x"], y=both["value_y"], mode="markers",
                               text=[f"L{l}H{h}" for l, h in zip(both["layer"], both["head"])],
                               customdata=both[["layer", "head"]].to_numpy().tolist(),
                               hovertemplate="%{text}: (%{x:.4g}, %{y:.4g})<extra></extra>"))
    fig.update_layout(title=f"{len(both)} heads", height=480,
                      xaxis_title=x.quantity.replace("<br>", " "), yaxis_title=y.quantity.replace("<br>", " "))
    return fig


def grid_figure(metric: GridMetric) -> go.Figure:
    """`metric` as a layers x heads heatmap on numeric axes (x head, y layer), with each
    cell's detail in its hover text."""
    return layer_head_heatmap(metric.values, "value", quantity=metric.quantity, scale=metric.scale,
                              title=f"{metric.label} — {metric.bundle}", detail="detail")


def head_page(runs: Runs, model: str, layer: int, head: int, shape: tuple[int, int], search: str = "") -> list:
    """The page of head L`layer`H`head` of `model`, whose shape is (n_layers, n_heads);
    `search`, the URL's raw query string, holds the attention explorer's view.

    Each head view (patterns, QK/OV, sinks, ...) is drawn for the model's newest bundle that
    has it; older bundles' views are listed folded and drawn when unfolded (`head_view`), so a
    model with hundreds of bundles gets a page as quick as one with a few."""
    metrics, errors = runs.head_metrics(model)
    links = [dcc.Link("← heads grid", href=grid_href(model))]
    for label, neighbour in (("previous head", _neighbour(layer, head, shape, -1)),
                             ("next head", _neighbour(layer, head, shape, +1))):
        if neighbour is not None:
            links += [" · ", dcc.Link(f"{label} (L{neighbour[0]}H{neighbour[1]})", href=head_href(model, *neighbour))]
    page = [html.H2(f"Head L{layer}H{head} of {model}"), html.P(links),
            *[error_card(f"bundle {name}", why) for name, why in errors],
            section("Numbers in every analysis", _numbers(runs, metrics, layer, head)),
            *head_explorer(runs, model, layer, head, search)]
    sections: dict[str, list] = {}
    shown_runs: set[tuple[str, str]] = set()  # (view title, run_key): identical older runs are not listed again
    for entry in (e for e in runs.entries() if e.ok and e.bundle.meta["model"] == model):  # newest first
        analysis = analysis_of(entry)
        for index, view in enumerate(analysis.head_views if analysis else ()):
            if not all(t in entry.bundle.table_names for t in view.needs) or (view.title, run_key(entry)) in shown_runs:
                continue
            shown_runs.add((view.title, run_key(entry)))
            parts = sections.setdefault(view.title, [])
            if not parts:
                drawn = head_view(runs, entry.path.name, index, layer, head)
                if drawn:
                    parts.append(html.Div(drawn))
            else:
                ids = head_view_ids(entry.path.name, index, layer, head)
                parts.append(html.Details([html.Summary(f"{entry.path.name} (click to draw)",
                                                        id={**ids, "type": "head-view-fold"}), html.Div(id=ids)]))
    return page + [section(title, *parts) for title, parts in sections.items() if parts]


def head_view_ids(bundle: str, index: int, layer: int, head: int) -> dict:
    return {"type": "head-view", "bundle": bundle, "view": index, "layer": layer, "head": head}


def head_view(runs: Runs, bundle: str, index: int, layer: int, head: int) -> list:
    """Head view `index` of `bundle`'s analysis for head L`layer`H`head`: a link to the bundle
    and what the view draws (figures, tables); [] when it has nothing on this head; an error
    card when the bundle is gone or the view fails on it."""
    entry = runs.entry(bundle)
    analysis = analysis_of(entry) if entry is not None and entry.ok else None
    if analysis is None or not 0 <= index < len(analysis.head_views):
        return [error_card(f"bundle {bundle}", "it is gone, unreadable or has no such head view")]
    view = analysis.head_views[index]
    try:
        shown = view.draw(runs.tables(entry), entry.bundle.meta, layer, head)
    except Exception as error:  # a damaged bundle must not take the page down
        return [error_card(f"bundle {bundle}", f"{type(error).__name__}: {error}")]
    if not shown:
        return []
    return [html.H4(dcc.Link(bundle, href=bundle_href(bundle))),
            *[frame_table(item) if isinstance(item, pd.DataFrame) else graph(item) for item in shown]]


def _neighbour(layer: int, head: int, shape: tuple[int, int], step: int) -> tuple[int, int] | None:
    """The head `step` (+1 or -1) places on in layer-major order, across layer ends; None past the model's ends."""
    n_layers, n_heads = shape
    index = layer * n_heads + head + step
    return divmod(index, n_heads) if 0 <= index < n_layers * n_heads else None


def tie_aware_rank(sizes: pd.Series | np.ndarray, value: float) -> str:
    """"r of n", or "r–s of n (k tied)" when k heads share the value (ranked by size, largest first)."""
    above, tied = int((sizes > value).sum()), int((sizes == value).sum())
    if tied <= 1:
        return f"{above + 1} of {len(sizes)}"
    return f"{above + 1}–{above + tied} of {len(sizes)} ({tied} tied)"


def _numbers(runs: Runs, metrics: list[GridMetric], layer: int, head: int) -> html.Div:
    """The head's row of every metric; the rows of identical older runs (`run_key`) that give
    the same value, rank and detail are folded into the newest's, with a link listing them."""
    key_of = runs.run_keys()
    rows, repeats = {}, {}
    for metric in metrics:  # newest bundle first within an analysis
        values = metric.values
        at = np.flatnonzero((values["layer"].to_numpy() == layer) & (values["head"].to_numpy() == head))
        if not at.size:
            continue
        value = values["value"].to_numpy(float)
        size = np.abs(value) if metric.scale == "signed" else value
        row = {"analysis": metric.analysis, "metric": metric.label, "value": float(value[at[0]]),
               "rank": tie_aware_rank(size, size[at[0]]), "detail": values["detail"].iloc[at[0]]}
        same = (key_of.get(metric.bundle, metric.bundle), *row.values())
        if same in rows:
            repeats[same] += 1
        else:
            rows[same], repeats[same] = {**row, "bundle": metric.bundle}, 0
    for same, row in rows.items():
        link = dcc.Link(row["bundle"], href=bundle_href(row["bundle"]))
        older = repeats[same]
        row["bundle"] = link if not older else html.Span([link, " and ", dcc.Link(
            f"{older} identical older run{'s' * (older > 1)}", href="/?" + urlencode({"same": row["bundle"]}))])
    rows = list(rows.values())
    if not rows:
        return notice("No per-head numbers for this head.")
    meanings = {m.label: m.how_to_read for m in metrics if m.how_to_read}
    shown = [r["metric"] for r in rows]
    return html.Div([frame_table(pd.DataFrame(rows), table_id="head-numbers"),
                     html.Details([html.Summary("what these numbers mean"),
                                   html.Ul([html.Li([html.Strong(label), ": ", meanings[label]])
                                            for label in dict.fromkeys(shown) if label in meanings])],
                                  id="head-numbers-help")])
