"""The dashboard: a Dash app over one runs folder, routed by URL, served by a threaded
WSGI server on loopback.

    create_app("runs").server          # the Flask app, for any WSGI server
    serve("runs", port=8050)           # what `headlab dashboard runs` runs

Pages (all built from the bundles on disk at request time):

    /                                  run list, error cards for unreadable bundles
    /heads?model=M                     heads grid of model M
    /head?model=M&layer=L&head=H       one head in every analysis
    /bundle/NAME                       one bundle, drawn for its analysis
    /download/NAME/TABLE.csv           one table as CSV
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote

import dash
from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate
from flask import Flask, Response, request
from werkzeug.serving import make_server

from app.data import Runs
from app.views.bundle import bundle_page, token_map_figure
from app.views.common import error_card, head_href, notice
from app.views.heads import grid_figure, grid_page, head_page, unknown_model
from app.views.runs import runs_page

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; }
header { background: #1f2a44; color: white; padding: 10px 24px; display: flex; gap: 24px; align-items: baseline; }
header a { color: #cfe0ff; } header h1 { font-size: 20px; margin: 0; }
main { padding: 8px 24px 40px; max-width: 1300px; }
table.data { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
table.data th { background: #f3f5f9; }
table.maps th.rotate { writing-mode: vertical-rl; transform: rotate(180deg); padding: 6px 2px; }
table.meta th { text-align: left; padding-right: 16px; color: #555; font-weight: normal; }
.card { border-radius: 6px; padding: 10px 14px; margin: 8px 0; }
.error-card { background: #fdecea; border: 1px solid #e57373; }
.error-card pre { white-space: pre-wrap; margin: 4px 0 0; font-size: 12px; }
.notice { background: #eef4fd; border: 1px solid #9bbcf0; }
.muted { color: #777; font-size: 13px; }
.inline { display: flex; flex-wrap: wrap; gap: 8px 18px; padding-left: 0; list-style: none; }
.params { font-family: monospace; font-size: 12px; }
.table-wrap { overflow-x: auto; }
.grid-2 { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
"""


def create_app(runs_dir: str | Path) -> dash.Dash:
    """The Dash app browsing the bundles of `runs_dir` (which must exist)."""
    runs = Runs(runs_dir)
    server = Flask(__name__)
    app = dash.Dash(__name__, server=server, title="headlab dashboard", update_title=None,
                    suppress_callback_exceptions=True)
    app.index_string = app.index_string.replace("{%css%}", "{%css%}<style>" + _CSS + "</style>")
    app.layout = html.Div([
        dcc.Location(id="url", refresh="callback-nav"),
        html.Header([html.H1("headlab"), dcc.Link("runs", href="/"), dcc.Link("heads grids", href="/heads"),
                     html.Span(str(runs.root), className="muted")]),
        html.Main(id="page"),
    ])
    _refuse_unsafe_paths(server)
    _add_download_route(server, runs)
    _add_callbacks(app, runs)
    return app


def route(runs: Runs, pathname: str | None, search: str | None) -> list:
    """The page for a URL. Names and numbers from the URL are matched against what the runs
    folder holds, never used as paths."""
    query = {k: v[-1] for k, v in parse_qs((search or "").lstrip("?")).items()}
    path = (pathname or "/").rstrip("/") or "/"
    if path == "/":
        return runs_page(runs)
    if path == "/heads":
        model = query.get("model")
        return grid_page(runs, model) if model in runs.models() else unknown_model(runs, model)
    if path == "/head":
        model = query.get("model")
        if model not in runs.models():
            return unknown_model(runs, model)
        try:
            layer, head = int(query["layer"]), int(query["head"])
        except (KeyError, ValueError):
            return [notice("A head page needs integer layer and head, e.g. /head?model=M&layer=0&head=1.")]
        if layer < 0 or head < 0:
            return [notice(f"layer and head must be >= 0, got layer {layer}, head {head}.")]
        return head_page(runs, model, layer, head)
    if path.startswith("/bundle/"):
        return bundle_page(runs, unquote(path.removeprefix("/bundle/")))
    return [html.H2("Page not found"), notice(f"No page at {pathname!r}.")]


def _add_callbacks(app: dash.Dash, runs: Runs) -> None:
    @app.callback(Output("page", "children"), Input("url", "pathname"), Input("url", "search"))
    def render(pathname, search):
        try:
            return route(runs, pathname, search)
        except Exception as error:  # keep the app usable whatever one page hits
            return [error_card(f"page {pathname}", f"{type(error).__name__}: {error}")]

    @app.callback(Output("heads-grid", "figure"), Input("grid-metric", "value"), State("grid-model", "data"),
                  prevent_initial_call=True)
    def recolour(key, model):
        metrics, _ = runs.head_metrics(model)
        chosen = next((m for m in metrics if m.key == key), None)
        if chosen is None:
            return {"layout": {"title": {"text": f"{key} is no longer in the runs folder"}}}
        return grid_figure(chosen)

    @app.callback(Output("url", "href"), Input("heads-grid", "clickData"), State("grid-model", "data"),
                  prevent_initial_call=True)
    def open_head(click, model):
        if not click or not click.get("points"):
            raise PreventUpdate
        point = click["points"][0]  # the grid's axes are numeric: x is the head, y the layer
        return head_href(model, int(point["y"]), int(point["x"]))

    @app.callback(Output("tokmap-graph", "figure"), Input("tokmap-prompt", "value"), Input("tokmap-layer", "value"),
                  State("tokmap-bundle", "data"), prevent_initial_call=True)
    def token_map(prompt, layer, name):
        entry = runs.entry(name)
        try:
            if entry is None or not entry.ok:
                raise ValueError("it is gone or unreadable")
            return token_map_figure(runs, entry, int(prompt), int(layer))
        except Exception as error:  # say so in the figure; the page stays usable
            return {"layout": {"title": {"text": f"bundle {name}: {error}"}}}


def _refuse_unsafe_paths(server: Flask) -> None:
    """404 for any request whose (decoded) path has a '.'-led segment such as '..', an empty
    segment ('//', an absolute path smuggled in), a backslash or a NUL."""

    def unsafe(path: str) -> bool:
        segments = path.split("/")[1:]
        return ("\\" in path or "\x00" in path or any(s.startswith(".") for s in segments)
                or "" in segments[:-1])

    @server.before_request
    def refuse():
        # The raw request path too, as some WSGI servers normalise it and others do not.
        raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.path
        if unsafe(request.path) or unsafe(unquote(raw.split("?", 1)[0])):
            return Response("not found\n", status=404, mimetype="text/plain")
        return None


def _add_download_route(server: Flask, runs: Runs) -> None:
    @server.route("/download/<bundle>/<table>.csv")
    def download(bundle: str, table: str):
        entry = runs.entry(bundle)
        if entry is None or not entry.ok or table not in entry.bundle.table_names:
            return Response("not found\n", status=404, mimetype="text/plain")
        try:
            csv = runs.table(entry, table).to_csv(index=False)
        except Exception as error:  # a damaged part: say which bundle
            return Response(f"bundle {bundle}: {error}\n", status=500, mimetype="text/plain")
        return Response(csv, mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{bundle}-{table}.csv"'})


def serve(runs_dir: str | Path, host: str = "127.0.0.1", port: int = 8050) -> None:
    """Serve the dashboard until interrupted; `port` 0 picks a free one. Prints the URL."""
    app = create_app(runs_dir)
    httpd = make_server(host, port, app.server, threaded=True)
    shown = f"[{host}]" if ":" in host else host
    print(f"headlab dashboard: {Path(runs_dir).resolve()} at http://{shown}:{httpd.server_port}/  (Ctrl+C stops)",
          flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
