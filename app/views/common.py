"""Building blocks shared by the pages: links, cards, tables and heatmaps."""

from __future__ import annotations

import json
import re
from urllib.parse import quote, urlencode

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import dcc, html
from dash.development.base_component import Component

from app.plotly_js import check_traces

MAX_ROWS = 200


def head_href(model: str, layer: int, head: int) -> str:
    return "/head?" + urlencode({"model": model, "layer": int(layer), "head": int(head)})


def grid_href(model: str) -> str:
    return "/heads?" + urlencode({"model": model})


def bundle_href(name: str) -> str:
    return "/bundle/" + quote(name, safe="")


def bundle_zip_href(bundle: str) -> str:
    return f"/download/{quote(bundle, safe='')}.zip"


def download_href(bundle: str, table: str) -> str:
    return f"/download/{quote(bundle, safe='')}/{quote(table, safe='')}.csv"


# A point stands for a head when its text, hover text or an axis label reads "L1H2" (the
# dashboard's labels) or "a1.h2" (circuit node names); edges ("a0.h1->a1.h2") do not.
_HEAD_LABEL = re.compile(r"^(?:L(\d+)H(\d+)|a(\d+)\.h(\d+))(?![\d.])")


def head_of_point(point: dict) -> tuple[int, int] | None:
    """(layer, head) of a clicked plotly point that stands for one head, else None: a label
    as above, or a cell whose x label is "H{head}" and y label "L{layer}" or the layer number."""
    for field in ("text", "hovertext", "y", "x"):
        value = point.get(field)
        if isinstance(value, str) and "->" not in value and (match := _HEAD_LABEL.match(value)):
            layer, head = (match[1], match[2]) if match[1] is not None else (match[3], match[4])
            return int(layer), int(head)
    x, y = point.get("x"), point.get("y")
    if isinstance(x, str) and re.fullmatch(r"H\d+", x) and re.fullmatch(r"L?\d+", str(y)):
        return int(str(y).lstrip("L")), int(x[1:])
    return None


def error_card(title: str, message: str) -> html.Div:
    """A red card: `title` names what failed (usually the bundle), `message` says why."""
    return html.Div([html.Strong(title), html.Pre(message)], className="card error-card")


def notice(text: str) -> html.Div:
    return html.Div(text, className="card notice")


def section(title: str, *children) -> html.Section:
    return html.Section([html.H3(title), *children])


def when(created: str | None) -> str:
    """ISO time as 'YYYY-MM-DD HH:MM:SS UTC'."""
    if not created:
        return ""
    return created[:19].replace("T", " ") + " UTC"


def compact(value) -> str:
    """A parameter value on one short line."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def frame_table(frame: pd.DataFrame, max_rows: int = MAX_ROWS, table_id: str | None = None) -> html.Div:
    """A DataFrame as an HTML table (floats to 4 significant digits), cut at `max_rows`."""
    shown = frame.head(max_rows)
    header = html.Tr([html.Th(str(c)) for c in shown.columns])
    rows = [html.Tr([html.Td(_cell(v)) for v in row]) for row in shown.itertuples(index=False)]
    kwargs = {"id": table_id} if table_id else {}
    children = [html.Table([html.Thead(header), html.Tbody(rows)], className="data", **kwargs)]
    if len(frame) > max_rows:
        children.append(html.P(f"first {max_rows} of {len(frame)} rows", className="muted"))
    return html.Div(children, className="table-wrap")


def _cell(value):
    if isinstance(value, Component):  # e.g. a link
        return value
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(map(str, value))
    return str(value)


# The plotly mode bar without its logo and without plotly.js 4's "Share chart..." button
# (on by default, it posts the chart to plotlyServerURL, cloud.plotly.com by default): the
# results may be unpublished. The empty URL keeps any such button inert. Its camera button
# saves an SVG (vector, for papers) rather than a PNG.
GRAPH_CONFIG = {"displaylogo": False, "showSendToCloud": False, "plotlyServerURL": "",
                "toImageButtonOptions": {"format": "svg"}}


def graph(fig: go.Figure, graph_id: str | dict | None = None) -> html.Div:
    """Every figure of the dashboard is shown through this (see GRAPH_CONFIG), with buttons
    that save it as PNG or SVG (`EXPORT_SCRIPT` in app.server does the saving). Raises
    ValueError for a trace type the dashboard's plotly.js lacks (`app.plotly_js`)."""
    check_traces(fig)
    kwargs = {"id": graph_id} if graph_id else {}
    save = html.Div(["save as ", html.Button("PNG", className="export", **{"data-export": "png"}), " ",
                     html.Button("SVG", className="export", **{"data-export": "svg"})], className="muted")
    return html.Div([dcc.Graph(figure=fig, config=GRAPH_CONFIG, **kwargs), save], className="graph-box")
