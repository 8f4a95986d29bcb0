"""The dashboard: a Dash app over one runs folder, routed by URL, served by a threaded
WSGI server on loopback.

    create_app("runs").server          # the Flask app, for any WSGI server
    serve("runs", port=8050)           # what `headlab dashboard runs` runs

Pages (all built from the bundles on disk at request time):

    /                                  run list, error cards for unreadable bundles
    /heads?model=M                     heads grid of model M
    /head?model=M&layer=L&head=H       one head in every analysis
    /bundle/NAME                       one bundle, drawn for its analysis
    /compare?a=NAME&b=NAME             two bundles of one analysis: differences, overlays
    /download/NAME/TABLE.csv           one table as CSV

Dash draws every page in the browser, from a callback; the HTML shell is the same for all
URLs. So that a URL naming something the runs folder lacks (a bundle, a model, a head) is
answered 404, the shell of such a URL is sent with status 404 (the browser still draws the
"not found" page), decided by the same `locate` the callback draws with.
"""

from __future__ import annotations

import io
import json
import ipaddress
import zipfile
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, quote, unquote

import dash
from dash import ALL, MATCH, Input, Output, State, ctx, dcc, html
from dash.exceptions import PreventUpdate
from flask import Flask, Response, request
from werkzeug.serving import make_server

from app.data import Runs
from app.plotly_js import serve_cartesian_plotly
from app.views.attention import add_attention_callbacks
from app.views.bundle import bundle_not_found, bundle_page, redraw
from app.views.common import error_card, head_href, head_of_point, notice
from app.views.compare import compare_href, compare_page
from app.views.heads import (GRID_PICKERS, grid_figure, grid_page, head_not_found, head_page, head_view, models_page,
                             scatter_figure)
from app.views.runs import runs_page
from app.views.tables import bundle_table, fold_ids, slot_ids, status_ids, table_ids, table_page

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; }
header { background: #1f2a44; color: white; padding: 10px 24px; display: flex; gap: 24px; align-items: baseline; }
header a { color: #cfe0ff; } header h1 { font-size: 20px; margin: 0; }
main { padding: 8px 24px 40px; max-width: 1300px; }
table.data { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
table.data th { background: #f3f5f9; }
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
button.export { border: none; background: none; color: #1a5fb4; cursor: pointer; padding: 0 2px; font-size: 13px; }
"""

# The "save as PNG / SVG" buttons under every figure (`app.views.common.graph`): plotly.js
# saves the figure as drawn, named after its title; PNG at twice the screen's resolution.
EXPORT_SCRIPT = """
document.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-export]");
    if (!button) return;
    const plot = button.closest(".graph-box").querySelector(".js-plotly-plot");
    const title = (plot.layout && plot.layout.title && plot.layout.title.text) || "figure";
    const format = button.dataset.export;
    Plotly.downloadImage(plot, {format: format, scale: format === "png" ? 2 : 1,
                                filename: title.replace(/<[^>]*>/g, " ").replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 80)});
});
"""


def create_app(runs_dir: str | Path) -> dash.Dash:
    """The Dash app browsing the bundles of `runs_dir` (which must exist)."""
    runs = Runs(runs_dir)
    server = Flask(__name__)
    app = dash.Dash(__name__, server=server, title="headlab dashboard", update_title=None,
                    suppress_callback_exceptions=True)
    app.index_string = (app.index_string.replace("{%css%}", "{%css%}<style>" + _CSS + "</style>")
                        .replace("{%scripts%}", "{%scripts%}<script>" + EXPORT_SCRIPT + "</script>"))
    app.layout = html.Div([
        dcc.Location(id="url", refresh="callback-nav"),
        html.Header([html.H1("headlab"), dcc.Link("runs", href="/"), dcc.Link("heads grids", href="/heads"),
                     html.Span(str(runs.root), className="muted")]),
        html.Main(id="page"),
        dcc.Store(id="url-state"),  # the output of the callbacks that keep a view's state in the URL
    ])
    _refuse_unsafe_paths(server)
    serve_cartesian_plotly(server)
    _answer_missing_pages_with_404(app, runs)
    _add_download_route(server, runs)
    _add_callbacks(app, runs)
    return app


@dataclass(frozen=True)
class Page:
    """What a URL shows: `build()` makes its content; `found` is False when the URL names
    something the runs folder does not hold (the page then says so, with status 404)."""

    found: bool
    build: Callable[[], list]


_INDEX = re.compile(r"0|[1-9][0-9]{0,5}")  # a layer or head number as written in a URL


def locate(runs: Runs, pathname: str | None, search: str | None) -> Page:
    """The page for a URL (`pathname` percent-encoded, as the browser has it). Names and
    numbers from the URL are matched against what the runs folder holds, never used as paths."""
    query = {k: v[-1] for k, v in parse_qs((search or "").lstrip("?")).items()}
    path = unquote(pathname or "/").rstrip("/") or "/"
    if path == "/":
        return Page(True, partial(runs_page, runs, query))
    if path in ("/heads", "/head"):
        model = query.get("model")
        if model is None and path == "/heads":
            return Page(True, partial(models_page, runs, None))
        if model not in runs.models():
            return Page(False, partial(models_page, runs, model or ""))
        if path == "/heads":
            return Page(True, partial(grid_page, runs, model, query))
        return _locate_head(runs, model, query.get("layer"), query.get("head"), search or "")
    if path.startswith("/bundle/"):
        name = path.removeprefix("/bundle/")
        entry = runs.entry(name)
        if entry is None:
            return Page(False, partial(bundle_not_found, name))
        return Page(True, partial(bundle_page, runs, entry, query, search or ""))
    if path == "/compare":
        a, b = runs.entry(query.get("a", "")), runs.entry(query.get("b", ""))
        if a is None or b is None:
            missing = [f"{k}={query.get(k)!r}" for k, e in (("a", a), ("b", b)) if e is None]
            return Page(False, lambda: [html.H2("Bundle not found"), notice(
                f"No bundle is named {' or '.join(missing)} (a comparison is /compare?a=NAME&b=NAME).")])
        return Page(True, partial(compare_page, runs, a, b))
    return Page(False, lambda: [html.H2("Page not found"), notice(f"No page at {pathname!r}.")])


def _locate_head(runs: Runs, model: str, layer: str | None, head: str | None, search: str) -> Page:
    shape = runs.head_shape(model)
    if shape is None:
        return Page(False, partial(head_not_found, model, f"No bundle of {model} has per-head numbers or patterns."))
    n_layers, n_heads = shape
    valid = (layer is not None and head is not None and _INDEX.fullmatch(layer) and _INDEX.fullmatch(head)
             and int(layer) < n_layers and int(head) < n_heads)
    if not valid:
        why = (f"{model} has layers 0-{n_layers - 1} and heads 0-{n_heads - 1}; this URL asks for layer {layer!r}, "
               f"head {head!r} (a head page is /head?model=M&layer=L&head=H).")
        return Page(False, partial(head_not_found, model, why))
    return Page(True, partial(head_page, runs, model, int(layer), int(head), shape, search))


def route(runs: Runs, pathname: str | None, search: str | None) -> list:
    """The content of the page for a URL."""
    return locate(runs, pathname, search).build()


def _add_callbacks(app: dash.Dash, runs: Runs) -> None:
    add_attention_callbacks(app, runs)

    @app.callback(Output("page", "children"), Input("url", "pathname"), Input("url", "search"))
    def render(pathname, search):
        try:
            return route(runs, pathname, search)
        except Exception as error:  # keep the app usable whatever one page hits
            return [error_card(f"page {pathname}", f"{type(error).__name__}: {error}")]

    @app.callback(Output("heads-grid", "figure"), Output("grid-metric-help", "children"), Input("grid-metric", "value"),
                  State("grid-model", "data"), prevent_initial_call=True)
    def recolour(key, model):
        metrics, _ = runs.head_metrics(model)
        chosen = next((m for m in metrics if m.key == key), None)
        if chosen is None:
            return {"layout": {"title": {"text": f"{key} is no longer in the runs folder"}}}, ""
        return grid_figure(chosen), chosen.how_to_read

    @app.callback(Output("url", "href"), Input("heads-grid", "clickData"), State("grid-model", "data"),
                  prevent_initial_call=True)
    def open_head(click, model):
        if not click or not click.get("points"):
            raise PreventUpdate
        point = click["points"][0]  # the grid's axes are numeric: x is the head, y the layer
        return head_href(model, int(point["y"]), int(point["x"]))

    @app.callback(Output("metric-scatter", "figure"), Input("scatter-x", "value"), Input("scatter-y", "value"),
                  State("grid-model", "data"), prevent_initial_call=True)
    def rescatter(x_key, y_key, model):
        metrics = {m.key: m for m in runs.head_metrics(model)[0]}
        if x_key not in metrics or y_key not in metrics:
            return {"layout": {"title": {"text": "a chosen metric is no longer in the runs folder"}}}
        return scatter_figure(metrics[x_key], metrics[y_key])

    @app.callback(Output("url", "href", allow_duplicate=True), Input("metric-scatter", "clickData"),
                  State("grid-model", "data"), prevent_initial_call=True)
    def open_head_from_the_scatter(click, model):
        if not click or not click.get("points"):
            raise PreventUpdate
        layer, head = click["points"][0]["customdata"]
        return head_href(model, int(layer), int(head))

    @app.callback(Output("url", "href", allow_duplicate=True),
                  Input({"type": "head-grid", "model": ALL, "index": ALL}, "clickData"), prevent_initial_call=True)
    def open_head_from_a_bundle(clicks):
        """A click on a per-head grid of a bundle page opens that head's page."""
        point = _clicked_point()
        return head_href(ctx.triggered_id["model"], int(point["y"]), int(point["x"]))

    @app.callback(Output("url", "href", allow_duplicate=True),
                  Input({"type": "head-scatter", "model": ALL, "index": ALL}, "clickData"), prevent_initial_call=True)
    def open_head_from_a_scatter(clicks):
        """A click on a point of a per-head scatter (customdata [layer, head]) opens that head's page."""
        layer, head = _clicked_point()["customdata"]
        return head_href(ctx.triggered_id["model"], int(layer), int(head))

    @app.callback(Output("url", "href", allow_duplicate=True),
                  Input({"type": "figure", "bundle": ALL, "figure": ALL}, "clickData"), prevent_initial_call=True)
    def open_head_from_a_figure(clicks):
        """A click on a point of a bundle's figure that stands for a head (`head_of_point`) opens its page."""
        head, entry = head_of_point(_clicked_point()), runs.entry(ctx.triggered_id["bundle"])
        if head is None or entry is None or not entry.ok:
            raise PreventUpdate
        return head_href(entry.bundle.meta["model"], *head)

    @app.callback(Output("url", "href", allow_duplicate=True), Input("compare-with", "value"),
                  State("compare-a", "data"), prevent_initial_call=True)
    def open_comparison(b, a):
        if not b:
            raise PreventUpdate
        return compare_href(a, b)

    @app.callback(Output(table_ids(MATCH, MATCH), "data"), Output(table_ids(MATCH, MATCH), "page_current"),
                  Output(table_ids(MATCH, MATCH), "page_count"), Output(status_ids(MATCH, MATCH), "children"),
                  Input(table_ids(MATCH, MATCH), "page_current"), Input(table_ids(MATCH, MATCH), "page_size"),
                  Input(table_ids(MATCH, MATCH), "sort_by"), Input(table_ids(MATCH, MATCH), "filter_query"),
                  prevent_initial_call=True)
    def page_table(page, size, sort_by, query):
        """Another page, order or filter of a bundle table, computed over all its rows."""
        which = ctx.outputs_list[0]["id"]
        entry = runs.entry(which["bundle"])
        if entry is None or not entry.ok or which["table"] not in entry.bundle.table_names:
            return [], 0, 1, f"table {which['table']!r} of bundle {which['bundle']!r} is gone or unreadable"
        if ctx.triggered_id and "filter_query" in str(ctx.triggered_prop_ids):
            page = 0  # a new filter starts at its first page
        shown = table_page(runs.table(entry, which["table"]), page, size, sort_by, query)
        return shown.records, shown.page, shown.page_count, shown.status

    @app.callback(Output(slot_ids(MATCH, MATCH), "children"), Input(fold_ids(MATCH, MATCH), "n_clicks"),
                  State(slot_ids(MATCH, MATCH), "children"), prevent_initial_call=True)
    def draw_folded_table(clicks, drawn):
        """A bundle's table, drawn the first time it is unfolded (a click on its summary)."""
        if not clicks or drawn:
            raise PreventUpdate
        which = ctx.triggered_id
        entry = runs.entry(which["bundle"])
        if entry is None or not entry.ok or which["table"] not in entry.bundle.table_names:
            return [error_card(f"bundle {which['bundle']}", f"table {which['table']!r} is gone or unreadable")]
        try:
            frame = runs.table(entry, which["table"])
        except Exception as error:  # a part damaged since the page was built
            return [error_card(f"bundle {which['bundle']}", f"{type(error).__name__}: {error}")]
        return bundle_table(which["bundle"], which["table"], frame)

    fold = {"bundle": MATCH, "view": MATCH, "layer": MATCH, "head": MATCH}

    @app.callback(Output({"type": "head-view", **fold}, "children"), Input({"type": "head-view-fold", **fold}, "n_clicks"),
                  State({"type": "head-view", **fold}, "children"), prevent_initial_call=True)
    def draw_folded_head_view(clicks, drawn):
        """An older bundle's head view, drawn the first time it is unfolded (a click on its summary)."""
        if not clicks or drawn:
            raise PreventUpdate
        which = ctx.triggered_id
        shown = head_view(runs, which["bundle"], which["view"], which["layer"], which["head"])
        return shown or [notice("This bundle has nothing on this head.")]

    app.clientside_callback(KEEP_CONTROLS_IN_URL, Output("url-state", "data"),
                            Input({"type": "figure-control", "bundle": ALL, "figure": ALL, "name": ALL}, "value"))
    app.clientside_callback(KEEP_PICKERS_IN_URL, Output("url-state", "data", allow_duplicate=True),
                            *[Input(picker, "value") for picker in GRID_PICKERS], prevent_initial_call=True)

    @app.callback(Output({"type": "figure", "bundle": MATCH, "figure": MATCH}, "figure"),
                  Input({"type": "figure-control", "bundle": MATCH, "figure": MATCH, "name": ALL}, "value"),
                  prevent_initial_call=True)
    def redraw_figure(values):
        graph_id = ctx.outputs_list["id"]
        names = [control["id"]["name"] for control in ctx.inputs_list[0]]
        return redraw(runs, graph_id["bundle"], int(graph_id["figure"]), dict(zip(names, values)))


# A view's state goes into the URL with history.replaceState, which Dash's Location does not
# hear: the page is not drawn again, and the address bar is a link to this view. A figure
# control's parameter is its name, or "FIGURE.NAME" when two figures share the name
# (`app.views.bundle.url_params` reads them back).
_SET_PARAMS = """
    const params = new URLSearchParams(window.location.search);
    for (const [key, value] of pairs) {
        if (value === null || value === undefined) params.delete(key); else params.set(key, value);
    }
    const search = params.toString();
    window.history.replaceState(window.history.state, "", window.location.pathname + (search ? "?" + search : ""));
    return window.dash_clientside.no_update;
"""
KEEP_CONTROLS_IN_URL = """function(values) {
    const inputs = window.dash_clientside.callback_context.inputs_list[0];
    const counts = {};
    inputs.forEach(i => { counts[i.id.name] = (counts[i.id.name] || 0) + 1; });
    const pairs = inputs.map(i => [counts[i.id.name] > 1 ? i.id.figure + "." + i.id.name : i.id.name, i.value]);
""" + _SET_PARAMS + "}"
KEEP_PICKERS_IN_URL = ("function(" + ", ".join(f"v{i}" for i in range(len(GRID_PICKERS))) + ") {\n"
                       f"    const pairs = {json.dumps(list(GRID_PICKERS.values()))}"
                       ".map((key, i) => [key, arguments[i]]);\n" + _SET_PARAMS + "}")


def _clicked_point() -> dict:
    """The first clicked point of the pattern-matching graph that triggered the callback;
    PreventUpdate when there is none."""
    click = ctx.triggered[0]["value"] if ctx.triggered else None
    if not click or not click.get("points") or not isinstance(ctx.triggered_id, dict):
        raise PreventUpdate
    return click["points"][0]


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


def _answer_missing_pages_with_404(app: dash.Dash, runs: Runs) -> None:
    """Send the page shell with status 404 for a URL that `locate` does not find."""
    pages = ("/", "/<path:path>")  # Dash's routes of the shell

    @app.server.before_request
    def not_found():
        rule = request.url_rule
        if request.method not in ("GET", "HEAD") or rule is None or rule.rule not in pages:
            return None
        raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or ""
        pathname = raw.split("?", 1)[0] if raw.startswith("/") else quote(request.path)
        try:
            found = locate(runs, pathname, request.query_string.decode("latin-1")).found
        except Exception:  # noqa: BLE001 - the page itself will show the error card
            return None
        if found:
            return None
        shell = app.index().replace("<title>headlab dashboard</title>", "<title>Not found — headlab dashboard</title>", 1)
        return Response(shell, status=404, mimetype="text/html")


def _add_download_route(server: Flask, runs: Runs) -> None:
    @server.route("/download/<bundle>/<table>.csv")
    def download(bundle: str, table: str):
        entry = runs.entry(bundle)
        if entry is None or not entry.ok or table not in entry.bundle.table_names:
            return Response(f"not found: no readable bundle {bundle!r} with a table {table!r}\n", status=404,
                            mimetype="text/plain")
        try:
            csv = runs.table(entry, table).to_csv(index=False)
        except Exception as error:  # a damaged part: say which bundle
            return Response(f"bundle {bundle}: {error}\n", status=500, mimetype="text/plain")
        return Response(csv, mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{bundle}-{table}.csv"'})

    @server.route("/download/<bundle>.zip")
    def download_bundle(bundle: str):
        """The whole bundle as a zip: meta.json and the files its manifest lists (paths built
        from the bundle's checked part names only), under a folder named as the bundle."""
        entry = runs.entry(bundle)
        if entry is None or not entry.ok:
            return Response(f"not found: no readable bundle {bundle!r}\n", status=404, mimetype="text/plain")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for relative in ["meta.json", *entry.bundle.files]:
                archive.write(entry.path / relative, f"{bundle}/{relative}")
        return Response(buffer.getvalue(), mimetype="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{bundle}.zip"'})


def guard_host(wsgi_app, host: str, port: int):
    """`wsgi_app`, answering 403 to any request whose Host header is not this machine at
    `port` while the server is bound to a loopback `host`: a web page from elsewhere whose
    name its owner re-points at 127.0.0.1 (DNS rebinding) then cannot read the results.
    Bound to any other `host` (e.g. --host 0.0.0.0, on purpose), `wsgi_app` is returned as is."""
    names = {"localhost", "127.0.0.1", "[::1]", f"[{host}]" if ":" in host else host}
    if host != "localhost" and not _is_loopback(host):
        return wsgi_app
    allowed = {f"{name}:{port}" for name in names} | (names if port == 80 else set())

    def guarded(environ, start_response):
        if environ.get("HTTP_HOST", "").lower() not in allowed:
            start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"forbidden: the dashboard answers only requests for {sorted(allowed)}\n".encode()]
        return wsgi_app(environ, start_response)

    return guarded


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def serve(runs_dir: str | Path, host: str = "127.0.0.1", port: int = 8050) -> None:
    """Serve the dashboard until interrupted; `port` 0 picks a free one. Prints the URL."""
    app = create_app(runs_dir)
    httpd = make_server(host, port, app.server, threaded=True)
    httpd.app = guard_host(app.server, host, httpd.server_port)  # the port is known once bound
    shown = f"[{host}]" if ":" in host else host
    print(f"headlab dashboard: {Path(runs_dir).resolve()} at http://{shown}:{httpd.server_port}/  (Ctrl+C stops)",
          flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
