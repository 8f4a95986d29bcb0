"""The run list: every bundle in the runs folder, newest first, and an error card for each
folder that is not a readable bundle."""

from __future__ import annotations

from dash import dcc, html

from app.data import Runs
from app.views.common import bundle_href, compact, error_card, grid_href, notice, section, when


def runs_page(runs: Runs) -> list:
    entries = runs.entries()
    if not entries:
        return [html.H2("Runs"), notice(f"No result bundles in {runs.root} yet. Run e.g. "
                                        f"`headlab heads zoo/induction-2l --out {runs.root}`.")]
    broken = [e for e in entries if not e.ok]
    readable = [e for e in entries if e.ok]
    page = [html.H2("Runs"), html.P(f"{len(entries)} bundles in {runs.root}", className="muted")]
    if broken:
        page.append(section(f"Unreadable bundles ({len(broken)})",
                            *[error_card(f"bundle {e.path.name}", e.error) for e in broken]))
    models = sorted({e.bundle.meta["model"] for e in readable})
    if models:
        page.append(section("Heads grids", html.Ul(
            [html.Li(dcc.Link(model, href=grid_href(model))) for model in models], className="inline")))
    header = html.Tr([html.Th(c) for c in ("bundle", "analysis", "model", "task", "time (UTC)", "parameters")])
    rows = [_row(e) for e in readable]
    page.append(html.Table([html.Thead(header), html.Tbody(rows)], className="data", id="run-list"))
    return page


def _row(entry) -> html.Tr:
    meta = entry.bundle.meta
    parameters = meta.get("parameters") or {}
    return html.Tr([
        html.Td(dcc.Link(entry.path.name, href=bundle_href(entry.path.name))),
        html.Td(meta["analysis"]),
        html.Td(dcc.Link(meta["model"], href=grid_href(meta["model"]))),
        html.Td(str(meta.get("task") or "")),
        html.Td(when(meta.get("created"))),
        html.Td(html.Span(", ".join(f"{k}={compact(v)}" for k, v in parameters.items()), className="params")),
    ], className="run")
