"""The plotly.js the dashboard's graphs run on: plotly.js's own *cartesian* bundle (1.5 MB)
instead of the full one (4.8 MB) that Dash serves.

Why: `dcc.Graph` fetches plotly.js the first time a page draws a graph, and every new tab
evaluates it afresh (the browser keeps no compiled copy). The full bundle took 1.4-1.8 s of a
tab's main thread on this project's 2-core machine, most of the 2 s a page may take; the
cartesian one 0.5 s (measured in headless chromium, `benchmarks/dashboard.py`).

The dashboard draws only cartesian traces (`TRACE_TYPES`, what that bundle holds); `check_traces`
refuses a figure with any other, which would otherwise be drawn blank. The bundle is answered
at the address Dash's renderer loads plotly.js from, and only while it is the same plotly.js
version as the installed plotly's (whose figures it draws); otherwise Dash's full bundle is
served, as without this module.
"""

from __future__ import annotations

import re
from pathlib import Path

import plotly.graph_objects as go
from flask import Flask, request, send_file
from plotly.offline import get_plotlyjs_version

VERSION = "4.1.1"
BUNDLE = Path(__file__).with_name("static") / f"plotly-cartesian-{VERSION}.min.js"  # MIT, see plotly-LICENSE.txt

# The trace modules of the cartesian bundle (its package's README).
TRACE_TYPES = frozenset({"bar", "box", "contour", "heatmap", "histogram", "histogram2d", "histogram2dcontour",
                         "image", "pie", "scatter", "scatterternary", "violin"})

# Where Dash's renderer loads plotly.js from (`window._dashPlotlyJSURL`), with or without
# Dash's cache-busting fingerprint.
_DASH_PLOTLY_JS = re.compile(r"/_dash-component-suites/plotly/package_data/plotly(\.v[\w]+)?\.min\.js")


def check_traces(fig: go.Figure | dict) -> None:
    """Raise ValueError when `fig` (a Figure or its dict) has a trace type the dashboard's
    plotly.js cannot draw."""
    traces = (fig.get("data") or []) if isinstance(fig, dict) else fig.data
    types = {(trace["type"] if "type" in trace else None) or "scatter" for trace in traces}  # plotly's default
    missing = sorted(types - TRACE_TYPES)
    if missing:
        raise ValueError(f"the dashboard draws only cartesian plotly traces {sorted(TRACE_TYPES)}; this figure has "
                         f"{missing} (see app/plotly_js.py)")


def serve_cartesian_plotly(server: Flask) -> bool:
    """Answer Dash's plotly.js address with the cartesian bundle (revalidated by ETag on each
    load). Returns False, changing nothing, when the installed plotly is for another plotly.js
    version than the bundle's, or the bundle is missing."""
    if get_plotlyjs_version() != VERSION or not BUNDLE.is_file():
        return False

    @server.before_request
    def cartesian_plotly():
        if request.method in ("GET", "HEAD") and _DASH_PLOTLY_JS.fullmatch(request.path):
            response = send_file(BUNDLE, mimetype="application/javascript", conditional=True, etag=True, max_age=0)
            response.headers["Cache-Control"] = "no-cache"
            return response
        return None

    return True
