"""The page of one bundle: its meta, how to read its analysis, the analysis's registered
figures (with their controls), its per-head numbers as grids, and its tables. Bundles of an
analysis that is not registered show their stored figures and tables.

Every figure here is drawn by the registration's own draw function from the bundle's tables,
the same function `Result.figure()` calls: the dashboard draws nothing of its own.
"""

from __future__ import annotations

from dash import dcc, html

from app.data import GridMetric, Runs, analysis_of, bundle_metrics, distinct_runs
from app.views.attention import bundle_explorer
from app.views.common import (bundle_href, bundle_zip_href, compact, download_href, error_card, graph, grid_href, head_href, notice,
                              section, when)
from app.views.heads import grid_figure
from app.views.tables import folded_table
from interp.results.registry import Analysis, Figure, top_heads

TOP_HEADS = 3


def bundle_not_found(name: str) -> list:
    return [html.H2("Bundle not found"), notice(f"There is no bundle named {name!r} in the runs folder.")]


def bundle_page(runs: Runs, entry, query: dict[str, str] | None = None, search: str = "") -> list:
    """The page of one listed bundle (an error card for an unreadable one). `query` holds the
    URL's control values (`url_params`), so a shared link shows the same view; `search` is the
    raw query string, which the attention explorer reads (blank values included)."""
    name = entry.path.name
    if not entry.ok:
        return [html.H2(f"Bundle {name}"), error_card(f"bundle {name}", entry.error)]
    meta = entry.bundle.meta
    analysis = analysis_of(entry)
    try:
        body = _registered(runs, entry, analysis, query or {}, search) if analysis else _unregistered(runs, entry)
    except Exception as error:  # a part that fails to load: say which bundle, keep serving
        body = [error_card(f"bundle {name}", f"{type(error).__name__}: {error}")]
    return [html.H2(f"{meta['analysis']} — {meta['model']}"), _meta_block(entry), *_others(runs, entry, analysis),
            *body, _downloads(entry)]


MAX_RELATED = 5


def _others(runs: Runs, entry, analysis: Analysis | None) -> list:
    """A picker of the bundles of the same analysis to compare this one with, and links to the
    bundles of the same model that its analysis names as related (newest first, at most
    MAX_RELATED distinct runs each) and to the newest bundle of each other analysis of the model."""
    meta, name = entry.bundle.meta, entry.path.name
    others = [e for e in runs.entries() if e.ok and e.path.name != name]  # newest first, as listed
    same_model = [e for e in others if e.bundle.meta["model"] == meta["model"]]
    peers = [e for e in others if e.bundle.meta["analysis"] == meta["analysis"]]
    parts = []
    if peers:
        options = [{"label": f"{e.path.name} ({e.bundle.meta['model']}, {when(e.bundle.meta.get('created'))})",
                    "value": e.path.name} for e in peers]
        parts.append(html.Div([html.Label("compare with", htmlFor="compare-with"),
                               dcc.Dropdown(id="compare-with", options=options, placeholder="another bundle of "
                                            f"{meta['analysis']}: see the difference or the overlay"),
                               dcc.Store(id="compare-a", data=name)], className="control"))
    related = analysis.related if analysis else ()
    groups = [(other, distinct_runs([e for e in same_model if e.bundle.meta["analysis"] == other])[:MAX_RELATED])
              for other in related]
    newest: dict[str, object] = {}
    for e in same_model:
        if e.bundle.meta["analysis"] not in related and e.bundle.meta["analysis"] != meta["analysis"]:
            newest.setdefault(e.bundle.meta["analysis"], e)
    items = [html.Li([f"{other}: ", *[part for e in found for part in (dcc.Link(e.path.name, href=bundle_href(
        e.path.name)), " ")]]) for other, found in groups if found]
    items += [html.Li([f"{other} (newest): ", dcc.Link(e.path.name, href=bundle_href(e.path.name))])
              for other, e in newest.items()]
    if items:
        parts.append(html.Details([html.Summary(f"Related bundles of {meta['model']}"), html.Ul(items)],
                                  id="related", open=bool(groups and any(found for _, found in groups))))
    return parts


def _meta_block(entry) -> html.Table:
    meta = entry.bundle.meta
    rows = [("bundle", entry.path.name), ("analysis", meta["analysis"]),
            ("model", dcc.Link(meta["model"], href=grid_href(meta["model"]))), ("task", str(meta.get("task") or "")),
            ("created", when(meta.get("created"))), ("seed", str(meta.get("seed"))),
            ("headlab", str(meta.get("headlab_version")))]
    rows += [(f"parameters.{k}", compact(v)) for k, v in (meta.get("parameters") or {}).items()]
    return html.Table([html.Tr([html.Th(k), html.Td(v)]) for k, v in rows], className="meta", id="bundle-meta")


def _downloads(entry) -> html.Section:
    links = [html.A(f"{t}.csv", href=download_href(entry.path.name, t)) for t in entry.bundle.table_names]
    whole = html.A("the whole bundle (.zip)", href=bundle_zip_href(entry.path.name), id="bundle-zip")
    return section("Downloads", html.Div([whole, *links], className="inline"))


def _registered(runs: Runs, entry, analysis: Analysis, query: dict[str, str], search: str) -> list:
    tables, meta = runs.tables(entry), entry.bundle.meta
    parts: list = [html.P(analysis.how_to_read, className="muted", id="how-to-read")]
    params = url_params(analysis)
    for index, figure in enumerate(analysis.figures):
        if all(t in tables for t in figure.needs):
            parts.append(figure_block(runs, entry, index, figure, {c.name: query.get(params[index, c.name])
                                                                   for c in figure.controls}))
    parts += bundle_explorer(runs, entry, search)
    parts += [graph(runs.figure(entry, name)) for name in entry.bundle.figure_names]  # stored by older versions
    metrics = bundle_metrics(runs, entry)
    if metrics:
        blocks = [[graph(grid_figure(m), {"type": "head-grid", "model": meta["model"], "index": i}),
                   html.P(m.how_to_read, className="muted"), _top_heads(m, meta["model"])]
                  for i, m in enumerate(metrics)]
        parts.append(section("Per head", *[part for block in blocks for part in block],
                             dcc.Link("open in the heads grid (click a head for its page)",
                                      href=grid_href(meta["model"]))))
    return parts + _tables(runs, entry)


def _top_heads(metric: GridMetric, model: str) -> html.P:
    """Links to the TOP_HEADS heads of largest value (largest |value| for signed metrics)."""
    top = top_heads(metric.values, metric.scale, TOP_HEADS)
    links = [dcc.Link(f"L{r.layer}H{r.head} ({r.value:.3g})", href=head_href(model, r.layer, r.head))
             for r in top.itertuples()]
    return html.P([f"largest {metric.label}: ", *[part for link in links for part in (link, " ")]],
                  className="inline")


def _unregistered(runs: Runs, entry) -> list:
    return ([notice(f"No analysis {entry.bundle.meta['analysis']!r} is registered in this version of headlab: "
                    "its stored figures and tables are shown as they are.")]
            + [graph(runs.figure(entry, name)) for name in entry.bundle.figure_names] + _tables(runs, entry))


def _tables(runs: Runs, entry) -> list:
    return [section(f"table {name}", folded_table(entry.path.name, name, runs.table(entry, name)))
            for name in entry.bundle.table_names]


# ---------------------------------------------------------------------- figures with controls
# A figure's graph and its controls carry pattern-matching ids {type, bundle, figure[, name]};
# one callback (app.server) redraws any figure from its controls' values. Each block also has
# a plain id, "figure-<name>", and each control "control-<name>", for links and tests.


def url_params(analysis: Analysis) -> dict[tuple[int, str], str]:
    """The URL parameter of each control, by (figure index, control name): the control's name,
    or "INDEX.NAME" when two figures of the analysis have a control of that name. The
    browser writes the same names (`KEEP_CONTROLS_IN_URL` in app.server)."""
    names = [c.name for figure in analysis.figures for c in figure.controls]
    return {(i, c.name): c.name if names.count(c.name) == 1 else f"{i}.{c.name}"
            for i, figure in enumerate(analysis.figures) for c in figure.controls}


def figure_ids(bundle: str, index: int) -> dict:
    return {"type": "figure", "bundle": bundle, "figure": index}


def control_ids(bundle: str, index: int, name: str) -> dict:
    return {"type": "figure-control", "bundle": bundle, "figure": index, "name": name}


def figure_block(runs: Runs, entry, index: int, figure: Figure, wanted: dict[str, str | None]) -> html.Div:
    """The figure drawn with each control at the value `wanted` by the URL (its text), else
    at its default, and the controls; a notice says which wanted values the bundle lacks."""
    tables, meta, name = runs.tables(entry), entry.bundle.meta, entry.path.name
    controls, values, missing = [], {}, []
    for control in figure.controls:
        options = control.options(tables, meta)
        if not options:
            return error_card(f"figure {figure.name} of {name}", f"its control {control.label!r} has no choices")
        value = options[0][0] if control.default == "first" else options[-1][0]
        text = wanted.get(control.name)
        if text is not None:
            chosen = [v for v, _ in options if str(v) == text]
            if chosen:
                value = chosen[0]
            else:
                missing.append(f"{control.label} {text!r} (it has {_choices(options)})")
        values[control.name] = value
        controls.append(html.Div([html.Label(control.label), _widget(control, options, value,
                                                                     control_ids(name, index, control.name))],
                                 id=f"control-{control.name}", className="control"))
    try:
        drawn = graph(figure.draw(tables, meta, **values), figure_ids(name, index))
    except Exception as error:  # the bundle's tables do not suit the figure: say so, keep the page
        drawn = error_card(f"figure {figure.name} of {name}", f"{type(error).__name__}: {error}")
    shown_as = [notice(f"This bundle has no {', no '.join(missing)}: shown at the defaults instead.")] if missing else []
    return html.Div([*shown_as, *controls, drawn], id=f"figure-{figure.name}", className="figure-block")


def _choices(options: list) -> str:
    values = [str(v) for v, _ in options]
    return ", ".join(values) if len(values) <= 8 else f"{', '.join(values[:4])}, ..., {values[-1]}"


def _widget(control, options: list, value, widget_id: dict):
    if control.widget == "slider":
        values = [v for v, _ in options]
        consecutive = values == list(range(values[0], values[0] + len(values)))
        shown = options if len(options) <= 20 or not consecutive else [options[0], options[-1]]
        # Whole steps between consecutive values (so the keyboard moves one at a time); else
        # only the listed values can be chosen.
        return dcc.Slider(id=widget_id, min=min(values), max=max(values), step=1 if consecutive else None,
                          value=value, marks={v: label for v, label in shown})
    return dcc.Dropdown(id=widget_id, options=[{"label": label, "value": v} for v, label in options], value=value,
                        clearable=False)


def redraw(runs: Runs, bundle: str, index: int, values: dict):
    """Figure `index` of the bundle's analysis drawn with the controls' `values` (name ->
    value), or a figure whose title says why it cannot be drawn."""
    entry = runs.entry(bundle)
    try:
        if entry is None or not entry.ok:
            raise ValueError("it is gone or unreadable")
        analysis = analysis_of(entry)
        if analysis is None or not 0 <= index < len(analysis.figures):
            raise ValueError("its analysis has no such figure")
        return analysis.figures[index].draw(runs.tables(entry), entry.bundle.meta, **values)
    except Exception as error:  # say so in the figure; the page stays usable
        return {"layout": {"title": {"text": f"bundle {bundle}: {error}"}}}
