"""Two bundles of one analysis compared (`/compare?a=NAME&b=NAME`): e.g. the same sweep on two
models, or two pruning orders.

Each registered figure is drawn for both bundles (each control at its default) and combined
by `combine`: heatmaps on the same axes become their difference B − A on a diverging scale,
curves and bars are overlaid, and anything else is shown side by side with the reason. Each
per-head metric both bundles have becomes a difference grid and a scatter of A against B (one
point per head; a click on either opens the head's page, of A's model).
"""

from __future__ import annotations

import re
from dataclasses import replace
from urllib.parse import urlencode

import numpy as np
import plotly.graph_objects as go
from dash import dcc, html

from app.data import GridMetric, Runs, analysis_of, bundle_metrics
from app.views.common import bundle_href, error_card, graph, notice, section
from app.views.heads import grid_figure, scatter_figure
from interp.results.figures import colouring
from interp.results.registry import Figure

OVERLAID = ("scatter", "scattergl", "bar")


def compare_href(a: str, b: str) -> str:
    return "/compare?" + urlencode({"a": a, "b": b})


def compare_page(runs: Runs, a, b) -> list:
    """The comparison of listed bundles `a` and `b` (BundleEntry): refused with a notice
    unless both are readable bundles of one registered analysis."""
    heading = html.H2("Comparison")
    names = html.P(["A: ", dcc.Link(a.path.name, href=bundle_href(a.path.name)), " · B: ",
                    dcc.Link(b.path.name, href=bundle_href(b.path.name))], id="compare-names")
    for entry in (a, b):
        if not entry.ok:
            return [heading, names, error_card(f"bundle {entry.path.name}", entry.error)]
    analysis = analysis_of(a)
    if a.bundle.meta["analysis"] != b.bundle.meta["analysis"] or analysis is None:
        return [heading, names, notice(f"A comparison needs two bundles of one registered analysis; A is "
                                       f"{a.bundle.meta['analysis']!r}, B is {b.bundle.meta['analysis']!r}.")]
    models = f"{a.bundle.meta['model']} (A) and {b.bundle.meta['model']} (B)"
    parts = [html.H2(f"Comparison of two {analysis.name} bundles: {models}"), names]
    for figure in analysis.figures:
        if all(t in runs.tables(a) and t in runs.tables(b) for t in figure.needs):
            parts.append(_figure_pair(runs, a, b, figure))
    parts += _metric_pairs(runs, a, b)
    return parts


def _figure_pair(runs: Runs, a, b, figure: Figure) -> html.Div:
    try:
        drawn = [_draw_default(runs, entry, figure) for entry in (a, b)]
    except Exception as error:  # a bundle whose tables do not suit the figure: say so
        return html.Div(error_card(f"figure {figure.name}", f"{type(error).__name__}: {error}"),
                        id=f"compare-{figure.name}")
    combined, how = combine(*drawn)
    if combined is None:
        return html.Div([notice(f"{figure.name}: {how}; shown side by side (A, then B)."),
                         html.Div([graph(drawn[0]), graph(drawn[1])], className="grid-2")],
                        id=f"compare-{figure.name}")
    return html.Div([html.P(how, className="muted"), graph(combined)], id=f"compare-{figure.name}")


def _draw_default(runs: Runs, entry, figure: Figure) -> go.Figure:
    tables, meta = runs.tables(entry), entry.bundle.meta
    values = {}
    for control in figure.controls:
        options = control.options(tables, meta)
        if not options:
            raise ValueError(f"its control {control.label!r} has no choices in {entry.path.name}")
        values[control.name] = options[0][0] if control.default == "first" else options[-1][0]
    return figure.draw(tables, meta, **values)


def combine(a: go.Figure, b: go.Figure) -> tuple[go.Figure | None, str]:
    """(figure, what it shows) for two drawings of one registered figure: the difference
    B − A of heatmaps with the same axes, the overlay of curves and bars, or (None, why
    neither applies)."""
    kinds = {t.type for t in (*a.data, *b.data)}
    if kinds == {"heatmap"}:
        if len(a.data) != len(b.data):
            return None, "the two bundles draw different numbers of heatmaps"
        for ta, tb in zip(a.data, b.data):
            if not (_same(ta.x, tb.x) and _same(ta.y, tb.y)
                    and np.shape(np.asarray(ta.z, float)) == np.shape(np.asarray(tb.z, float))):
                return None, "the heatmaps of A and B have different axes (other prompts, tokens or layers)"
        return _difference(a, b), "B − A, cell by cell (red: larger in B, blue: larger in A)."
    if kinds <= set(OVERLAID):
        return _overlay(a, b), "A (solid) and B (dashed) on one set of axes."
    return None, f"a figure of {', '.join(sorted(kinds))} traces has no difference or overlay"


def _same(x, y) -> bool:
    if x is None or y is None:
        return x is None and y is None
    return len(x) == len(y) and all(str(u) == str(v) for u, v in zip(x, y))


def _difference(a: go.Figure, b: go.Figure) -> go.Figure:
    fig = go.Figure(a)
    for trace, tb in zip(fig.data, b.data):
        z = np.asarray(tb.z, float) - np.asarray(trace.z, float)
        trace.update(z=z, **colouring(z, "B − A", "signed"))
    title = a.layout.title.text or ""
    return fig.update_layout(title=f"B − A: {title}")


def _overlay(a: go.Figure, b: go.Figure) -> go.Figure:
    fig = go.Figure(layout=a.layout)
    for label, source, dash in (("A", a, "solid"), ("B", b, "dash")):
        for trace in source.data:
            copy = go.Figure(trace).data[0]
            copy.update(name=f"{label}: {trace.name or ''}".rstrip(": "), showlegend=True)
            if trace.type == "bar":
                copy.update(offsetgroup=label, marker_pattern_shape="/" if label == "B" else "")
            else:
                copy.update(line_dash=dash)
            fig.add_trace(copy)
    title = a.layout.title.text or ""
    return fig.update_layout(title=f"A vs B: {title}", barmode="group", showlegend=True)


def _metric_pairs(runs: Runs, a, b) -> list:
    """A difference grid and an A-against-B scatter for each per-head metric of both."""
    by_label = {m.label: m for m in bundle_metrics(runs, b)}
    model = a.bundle.meta["model"]
    parts = []
    for index, ma in enumerate(bundle_metrics(runs, a)):
        mb = by_label.get(ma.label)
        if mb is None:
            continue
        both = ma.values.merge(mb.values, on=["layer", "head"], suffixes=("_a", "_b"))
        difference = both.assign(value=both["value_b"] - both["value_a"],
                                 detail=[f"A {x:.4g}, B {y:.4g}" for x, y in zip(both["value_a"], both["value_b"])])
        diff = GridMetric(f"{ma.key}:diff", f"{ma.label}: B − A", ma.bundle, ma.analysis,
                          difference[["layer", "head", "value", "detail"]], ma.unit, "signed")
        parts.append(html.Div(section(f"Per head: {ma.label}",
                             graph(grid_figure(diff), {"type": "head-grid", "model": model, "index": index}),
                             graph(scatter_figure(replace(ma, label=f"A: {ma.label}"),
                                                  replace(mb, label=f"B: {mb.label}")),
                                   {"type": "head-scatter", "model": model, "index": index}),
                             html.P("Click a cell or a point to open that head's page (of A's model).",
                                    className="muted")), id="per-head-" + re.sub(r"[^a-z0-9]+", "-", ma.label.lower())))
    return parts
