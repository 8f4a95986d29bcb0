"""The attention explorer: one stored prompt of a head-patterns bundle drawn as its tokens;
hover a token (click it to keep it) and every token is coloured by the attention between
the two, for one head or the mean over the selected heads; below, the selection's
query x key heatmap with the tokens on both axes. It is on the page of every head-patterns
bundle and, for the head-patterns bundles of a model (one drawn, the others behind a
picker), on each of its head pages.

The view is in the URL's query, so it can be shared as a link and is read back on load:

    /bundle/NAME?attn-prompt=1&attn-heads=0.1,1.3&attn-token=5&attn-direction=from
    /head?model=M&layer=L&head=H&attn-bundle=NAME&attn-prompt=1&attn-heads=1.2

`attn-heads` are layer.head pairs, `attn-token` the kept token's position, `attn-direction`
"from" (the token is the query: where it looks) or "to" (it is the key: who looks at it).
The keys are the explorer's own: a bundle page's figure controls write theirs (`prompt`,
`layer`, `head` for head-patterns) into the same query, and each keeps its own. A link's value
that the bundle does not have (an unknown head, a prompt out of range, a word where a number
belongs) is named on the page, and nothing is drawn until a choice is made.

Choosing a prompt or heads asks the server once for the selection's mean pattern
[query, key]; hovering a token recolours the tokens in the browser from that small array
(a clientside callback), with no request. The URL is rewritten in place (history.replaceState)
once the view is changed, so the page is not rebuilt and no history entry is added per click.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import parse_qs

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, ctx, dcc, html, no_update

from app.data import Runs, analysis_of
from app.views.common import error_card, graph, notice
from analyses.figures import prompt_options
from analyses.specs import HEAD_PATTERNS
from interp.results.figures import token_labels

LINE_UNITS = 80  # width of one line of the token strip, in characters
BOX_PADDING = 1.5  # characters of room around a token's text
MIN_BOX = 3.0  # narrowest box (one-character tokens), in characters
LINE_HEIGHT = 40  # pixels per line of tokens
MAX_NAMED_HEADS = 6  # heads named in a title before "…"
# White (no attention) to dark blue (all of it), fixed on 0..1, so that tokens stay legible.
COLOURSCALE = "Blues"
DARK_TEXT, LIGHT_TEXT, LIGHT_FROM = "#222222", "#ffffff", 0.55  # a token's text turns white on dark blue
QUANTITY = "attention<br>(share)"
DIRECTIONS = {"from": "attention from the token (it is the query: where it looks)",
              "to": "attention to the token (it is the key: which queries look at it)"}
URL_KEYS = {f"attn-{key}": key for key in ("bundle", "prompt", "heads", "token", "direction")}  # URL -> view
_INDEX = re.compile(r"0|[1-9][0-9]{0,5}")
_HEAD = re.compile(r"(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})")

Head = tuple[int, int]


# ---------------------------------------------------------------------- reading the table


def prompt_length(rows: pd.DataFrame) -> int:
    """The number of real tokens of one prompt's rows (columns query, value): one past the
    last query whose attention sums to more than 0 (rows past the real tokens, where a
    bundle has any, are all zero; a real query's row sums to 1 in every head)."""
    sums = rows.groupby("query")["value"].sum()
    real = sums.index[sums.to_numpy() > 0]
    return int(real.max()) + 1 if len(real) else 0


def prompt_tokens(rows: pd.DataFrame, n: int) -> list[str]:
    """The first `n` tokens of one prompt's rows (columns query, query_token), by position;
    "" for a position without a stored token."""
    tokens = dict(zip(rows["query"].astype(int), rows["query_token"].astype(str)))
    return [tokens.get(p, "") for p in range(n)]


def mean_pattern(patterns: pd.DataFrame, prompt: int, heads: list[Head]) -> np.ndarray:
    """The attention of `heads` on `prompt`, averaged over the heads: [query, key] over the
    prompt's real tokens (missing (query, key) rows count as 0; a head listed twice counts
    once). KeyError naming any head the table lacks for that prompt."""
    rows = patterns[patterns["prompt"] == prompt]
    n = prompt_length(rows)
    pairs = pd.MultiIndex.from_arrays([rows["layer"].astype(int), rows["head"].astype(int)])
    wanted = pd.MultiIndex.from_tuples(heads, names=pairs.names).unique()
    missing = [f"L{l}H{h}" for l, h in wanted.difference(pairs.unique())]
    if missing:
        raise KeyError(f"prompt {prompt} has no attention of {', '.join(missing)} in this bundle")
    chosen = rows[pairs.isin(wanted) & (rows["query"] < n) & (rows["key"] < n)]
    grid = np.zeros((n, n))
    np.add.at(grid, (chosen["query"].to_numpy(int), chosen["key"].to_numpy(int)), chosen["value"].to_numpy(float))
    return grid / len(wanted)


def heads_name(heads: list[Head]) -> str:
    """"L1H2" for one head, "mean of 3 heads (L0H1, L1H2, L1H3)" for several."""
    names = [f"L{l}H{h}" for l, h in heads]
    if len(names) == 1:
        return names[0]
    shown = names if len(names) <= MAX_NAMED_HEADS else names[:MAX_NAMED_HEADS - 1] + ["…", names[-1]]
    return f"mean of {len(names)} heads ({', '.join(shown)})"


# ---------------------------------------------------------------------- the view's state


@dataclass(frozen=True)
class View:
    """What the explorer shows: a prompt, the heads averaged, the kept token (None: none)
    and the direction ("from" or "to")."""

    prompt: int | None
    heads: tuple[Head, ...]
    token: int | None = None
    direction: str = "from"


def read_view(query: dict[str, str], lengths: dict[int, int], heads: list[Head], default: View
              ) -> tuple[View, list[str]]:
    """The view a URL's `query` asks for, on a bundle whose prompts have `lengths`
    (prompt -> number of tokens) and whose heads are `heads`; keys absent from `query` keep
    `default`'s values. Also one sentence per value the bundle does not have; such a value
    is left unset (prompt None, heads (), token None), so nothing wrong is drawn."""
    view, problems = default, []
    if "prompt" in query:
        text = query["prompt"]
        prompt = int(text) if _INDEX.fullmatch(text) else None
        if prompt not in lengths:
            problems.append(f"prompt {text!r} is not a prompt of this bundle (it has prompts {_span(lengths)}).")
        view = replace(view, prompt=prompt if prompt in lengths else None, token=None)
    if "heads" in query:
        items = [item.strip() for item in query["heads"].split(",")]
        parsed = [_HEAD.fullmatch(item) for item in items]
        known = set(heads)
        bad = [item for item, match in zip(items, parsed)
               if match is None or (int(match[1]), int(match[2])) not in known]
        if bad:
            layers, numbers = sorted({l for l, _ in heads}), sorted({h for _, h in heads})
            problems.append(f"heads {', '.join(map(repr, bad))} are not heads of this bundle (layers "
                            f"{_span(layers)}, heads {_span(numbers)}; write each as layer.head, e.g. attn-heads=0.1,1.3).")
        chosen = [] if bad else sorted({(int(m[1]), int(m[2])) for m in parsed})
        view = replace(view, heads=tuple(chosen))
    if "token" in query and view.prompt is not None:
        text, n = query["token"], lengths[view.prompt]
        token = int(text) if _INDEX.fullmatch(text) else None
        if token is None or token >= n:
            problems.append(f"token {text!r} is not a position of prompt {view.prompt} (positions 0–{n - 1}).")
        view = replace(view, token=token if token is not None and token < n else None)
    if "direction" in query:
        if query["direction"] not in DIRECTIONS:
            problems.append(f"direction {query['direction']!r} is neither 'from' nor 'to'.")
        else:
            view = replace(view, direction=query["direction"])
    return view, problems


def _span(values) -> str:
    values = sorted(values)
    return f"{values[0]}–{values[-1]}" if values else "none"


def url_query(search: str | None) -> dict[str, str]:
    """The explorer's part of a URL's query string, by `read_view`'s names (bundle, prompt,
    heads, token, direction; the last value of each; a blank value is kept, so that
    "attn-heads=" is a choice of no heads rather than no choice)."""
    query = parse_qs((search or "").lstrip("?"), keep_blank_values=True)
    return {URL_KEYS[key]: values[-1] for key, values in query.items() if key in URL_KEYS}


# ---------------------------------------------------------------------- figures


def token_boxes(tokens: list[str], width: float = LINE_UNITS) -> tuple[list[float], list[float], list[int]]:
    """Where each token's box goes in a strip wrapped at `width` characters: (starts, widths,
    lines), one entry per token, boxes as wide as their text plus padding."""
    starts, widths, lines = [], [], []
    x, line = 0.0, 0
    for token in tokens:
        box = min(max(len(token) + BOX_PADDING, MIN_BOX), width)
        if x > 0 and x + box > width:
            x, line = 0.0, line + 1
        starts.append(x)
        widths.append(box)
        lines.append(line)
        x += box
    return starts, widths, lines


def shown_text(token: str) -> str:
    """A token as its box shows it: whitespace made visible."""
    text = token.replace("\n", "↵").replace("\t", "⇥")
    return text if text.strip() else "␣" * max(len(text), 1)


def token_strip(tokens: list[str]) -> go.Figure:
    """The prompt as a wrapped row of token boxes (one horizontal bar per token, point i =
    position i), uncoloured: the browser colours them (marker.color, one value per token)."""
    starts, widths, lines = token_boxes([shown_text(t) for t in tokens])
    n_lines = max(lines, default=0) + 1
    bars = go.Bar(orientation="h", base=starts, x=widths, y=lines, text=[shown_text(t) for t in tokens],
                  textposition="inside", insidetextanchor="middle", textangle=0, textfont={"color": DARK_TEXT},
                  hovertext=token_labels(range(len(tokens)), tokens), hovertemplate="%{hovertext}<extra></extra>",
                  marker={"color": [0.0] * len(tokens), "colorscale": COLOURSCALE, "cmin": 0.0, "cmax": 1.0,
                          "showscale": True, "colorbar": {"title": {"text": "attention (share)", "side": "right"},
                                                          "orientation": "h", "thickness": 10, "len": 0.3,
                                                          "x": 1, "xanchor": "right", "y": 1.0, "yanchor": "bottom"},
                          "line": {"color": "#999999", "width": 1}})
    fig = go.Figure(bars)
    fig.update_layout(height=100 + LINE_HEIGHT * n_lines, margin={"l": 10, "r": 10, "t": 60, "b": 10},
                      bargap=0.15, dragmode=False, plot_bgcolor="white", showlegend=False)
    fig.update_xaxes(visible=False, range=[0, LINE_UNITS], fixedrange=True)
    fig.update_yaxes(visible=False, range=[n_lines - 0.5, -0.5], fixedrange=True)
    return fig


def pattern_heatmap(grid: np.ndarray, labels: list[str], title: str) -> go.Figure:
    """The mean pattern [query, key] with "position:token" labels on both axes (the browser
    outlines the kept token's row or column)."""
    fig = go.Figure(go.Heatmap(z=grid.tolist(), x=labels, y=labels, colorscale=COLOURSCALE, zmin=0.0, zmax=1.0,
                               colorbar={"title": {"text": QUANTITY}},
                               hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, height=min(900, max(380, 18 * len(labels) + 200)),
                      margin={"l": 90, "r": 20, "t": 50, "b": 90})
    fig.update_xaxes(title="key token", tickangle=-45)
    fig.update_yaxes(title="query token", autorange="reversed")
    return fig


def blank() -> dict:
    """An empty figure (the browser draws the explorer's figures once a selection is made)."""
    return {"data": [], "layout": {"height": 160, "xaxis": {"visible": False}, "yaxis": {"visible": False}}}


def selection(patterns: pd.DataFrame, prompt: int, heads: list[Head]) -> dict:
    """What the browser draws a selection from: the token strip and the heatmap (figures),
    the mean pattern `grid` [query][key], the tokens' labels [query], what is averaged, and
    the text colours of the boxes."""
    grid = mean_pattern(patterns, prompt, heads)
    rows = patterns[patterns["prompt"] == prompt]
    tokens = prompt_tokens(rows, len(grid))
    labels = token_labels(range(len(tokens)), tokens)
    what = f"{heads_name(heads)}, prompt {prompt}"
    return {"strip": token_strip(tokens).to_plotly_json(),
            "heatmap": pattern_heatmap(grid, labels, f"{what}: query × key").to_plotly_json(),
            "grid": grid.tolist(), "labels": labels, "what": what,
            "dark_text": DARK_TEXT, "light_text": LIGHT_TEXT, "light_from": LIGHT_FROM}


# ---------------------------------------------------------------------- layout


def explorable(entry) -> bool:
    """Whether a bundle holds head-patterns' table of attention weights."""
    if not entry.ok or "patterns" not in entry.bundle.table_names:
        return False
    analysis = analysis_of(entry)
    return analysis is not None and analysis.name == HEAD_PATTERNS.name


def bundle_explorer(runs: Runs, entry, search: str = "") -> list:
    """The explorer section of a head-patterns bundle's page ([] for any other bundle), drawn
    as the page's raw query string `search` asks (`url_query`)."""
    return [_section(runs, [entry.path.name], "bundle", [], search)] if explorable(entry) else []


def head_explorer(runs: Runs, model: str, layer: int, head: int, search: str = "") -> list:
    """The explorer section of a head's page: the head preselected, the model's newest
    head-patterns bundle drawn (or the one `search` names), the others behind a picker ([]
    when it has none)."""
    names = [e.path.name for e in runs.entries() if explorable(e) and e.bundle.meta["model"] == model]
    return [_section(runs, names, "head", [[layer, head]], search)] if names else []


def _section(runs: Runs, bundles: list[str], page: str, heads: list[list[int]], search: str) -> html.Section:
    """The bundle picker (hidden when there is one bundle) and the explorer of the bundle the
    URL names, else the first, drawn with the page (a later pick is drawn by `draw_explorer`)."""
    source = {"page": page, "bundles": bundles, "heads": heads}
    name, children = first_view(runs, bundles[0], source, url_query(search))
    picker = html.Div([html.Label("head-patterns bundle", htmlFor="attn-bundle"),
                       dcc.Dropdown(id="attn-bundle", options=bundles, value=name, clearable=False)],
                      style=None if len(bundles) > 1 else {"display": "none"})
    how = ("Hover a token to colour every token by the attention between the two; click it to keep it "
           "(click again to release). Pick several heads to see their mean. The view is the page's URL.")
    return html.Section([html.H3("Attention explorer"), html.P(how, className="muted"), picker,
                         dcc.Store(id="attn-source", data=source),
                         html.Div(children, id="attn-explorer")], id="attention-explorer")


def first_view(runs: Runs, name: str, source: dict, query: dict[str, str]) -> tuple[str, list]:
    """(bundle, explorer) as first drawn: bundle `name`, or on a head page the head-patterns
    bundle the URL's `query` names, set to the view `query` asks for (`explorer`)."""
    problems = []
    if source["page"] == "head" and "bundle" in query:
        if query["bundle"] in source["bundles"]:
            name = query["bundle"]
        else:
            problems.append(f"bundle {query['bundle']!r} is not a head-patterns bundle of this model "
                            f"(it has {', '.join(source['bundles'])}).")
    if source["page"] == "bundle":
        query = {k: v for k, v in query.items() if k != "bundle"}
    entry = runs.entry(name)
    if entry is None or not explorable(entry):
        return name, [notice(f"Bundle {name!r} is gone or holds no attention patterns.")]
    return name, explorer(runs, entry, [tuple(h) for h in source["heads"]], query, problems)


def explorer(runs: Runs, entry, default_heads: list[Head], query: dict[str, str], problems: list[str]) -> list:
    """The pickers and figures of one bundle, set to the view `query` asks for (defaults:
    the first prompt, `default_heads` where the bundle has them, else its first head);
    `problems` (and those of `query`) are named above them."""
    tables, meta = runs.tables(entry), entry.bundle.meta
    patterns = tables["patterns"]
    prompts = prompt_options("patterns")(tables, meta)
    lengths = {int(p): prompt_length(rows) for p, rows in patterns.groupby("prompt")}
    heads = sorted({(int(l), int(h)) for l, h in zip(patterns["layer"], patterns["head"])})
    default = View(prompts[0][0], tuple(h for h in default_heads if h in heads) or heads[:1])
    view, more = read_view(query, lengths, heads, default)
    problems = problems + more
    problem = notice("This link asks for what the bundle does not have: " + " ".join(problems)
                     + " Nothing is drawn until you choose below.") if problems else None
    tokens = graph(blank(), "attn-tokens")
    next(c for c in tokens.children if isinstance(c, dcc.Graph)).clear_on_unhover = True  # leaving ends a preview
    return [
        html.Div(problem, id="attn-problem"),
        html.Div([html.Div([html.Label("prompt", htmlFor="attn-prompt"),
                            dcc.Dropdown(id="attn-prompt", options=[{"label": t, "value": p} for p, t in prompts],
                                         value=view.prompt, clearable=False)]),
                  html.Div([html.Label("heads (their mean is drawn)", htmlFor="attn-heads"),
                            dcc.Dropdown(id="attn-heads", multi=True, value=[f"{l}.{h}" for l, h in view.heads],
                                         options=[{"label": f"L{l}H{h}", "value": f"{l}.{h}"} for l, h in heads])])],
                 className="grid-2"),
        dcc.RadioItems(id="attn-direction", options=[{"label": t, "value": v} for v, t in DIRECTIONS.items()],
                       value=view.direction, inline=True),
        # The kept token is wrapped in a dict: a Store mounted with data None sets it again
        # (undefined), which would count as a change of the token.
        dcc.Store(id="attn-token", data={"token": view.token}),
        dcc.Store(id="attn-data"),
        # Drawn with the pickers so that their first values (from the URL or the defaults) are
        # not written back: Dash skips a prevent_initial_call callback whose output is inserted
        # together with its inputs.
        dcc.Store(id="attn-written"),
        html.Div(id="attn-status"), tokens, graph(blank(), "attn-heatmap"),
    ]


# ---------------------------------------------------------------------- callbacks

# The token strip coloured from the selection's pattern by the kept token, else the hovered
# one; the heatmap with the kept token's row (from) or column (to) outlined. A hover leaves
# the heatmap as it is: redrawing it too would make a hover about half as fast again.
_PAINT = """function(data, hover, store, direction) {
    const skip = dash_clientside.no_update;
    const cb = dash_clientside.callback_context;
    const hovered = cb.triggered.length === 1 && cb.triggered[0].prop_id === "attn-tokens.hoverData";
    const none = {data: [], layout: {height: 160, title: {text: "Pick a prompt and at least one head."},
                                     xaxis: {visible: false}, yaxis: {visible: false}}};
    if (!data) return [none, none];
    const n = data.labels.length;
    const kept = store && store.token !== null && store.token < n ? store.token : null;
    if (hovered && kept !== null) return [skip, skip];
    const points = hover && hover.points && hover.points.length ? hover.points : null;
    const at = kept !== null ? kept : (points ? points[0].pointNumber : null);
    const trace = Object.assign({}, data.strip.data[0]);
    const marker = Object.assign({}, trace.marker);
    let title = data.what + ": hover a token to see its attention, click it to keep it";
    if (at !== null) {
        const values = direction === "to" ? data.grid.map(row => row[at]) : data.grid[at];
        marker.color = values;
        marker.line = {color: data.labels.map((_, i) => i === at ? "#d62728" : "#999999"),
                       width: data.labels.map((_, i) => i === at ? 3 : 1)};
        trace.textfont = {color: values.map(v => v > data.light_from ? data.light_text : data.dark_text)};
        trace.hovertext = data.labels.map((label, i) => "attention from "
            + (direction === "to" ? label + " to " + data.labels[at] : data.labels[at] + " to " + label)
            + ": " + values[i].toFixed(4));
        title = "attention " + direction + " " + data.labels[at] + " — " + data.what
              + (kept !== null ? " (kept: click it again to release)" : "");
    }
    trace.marker = marker;
    const strip = {data: [trace], layout: Object.assign({}, data.strip.layout, {title: {text: title}})};
    if (hovered) return [strip, skip];
    const outline = kept === null ? [] : [{type: "rect", xref: "x", yref: "y", line: {color: "#d62728", width: 2},
        x0: direction === "to" ? kept - 0.5 : -0.5, x1: direction === "to" ? kept + 0.5 : n - 0.5,
        y0: direction === "to" ? -0.5 : kept - 0.5, y1: direction === "to" ? n - 0.5 : kept + 0.5}];
    return [strip, {data: data.heatmap.data, layout: Object.assign({}, data.heatmap.layout, {shapes: outline})}];
}"""

# The kept token: a click keeps a token (or releases the kept one); a new prompt shorter than
# the kept position releases it.
_KEEP = """function(click, data, store) {
    const cb = dash_clientside.callback_context;
    const kept = store ? store.token : null;
    const ids = cb.triggered.map(t => t.prop_id);
    if (ids.includes("attn-tokens.clickData") && click && click.points && click.points.length) {
        const at = click.points[0].pointNumber;
        return {token: at === kept ? null : at};
    }
    if (ids.includes("attn-data.data") && data && kept !== null && kept >= data.labels.length) {
        return {token: null};
    }
    return dash_clientside.no_update;
}"""

# The view into the URL's query, in place (the page is not rebuilt), once it is changed.
_WRITE = """function(prompt, heads, direction, store, source, bundle) {
    const kept = store ? store.token : null;
    if (prompt === null || prompt === undefined || !heads || !heads.length) return dash_clientside.no_update;
    const params = new URLSearchParams(window.location.search);
    if (source.page === "head") params.set("attn-bundle", bundle);
    params.set("attn-prompt", prompt);
    params.set("attn-heads", heads.join(","));
    if (kept === null) params.delete("attn-token"); else params.set("attn-token", kept);
    params.set("attn-direction", direction);
    const search = "?" + params.toString().replace(/%2C/g, ",");
    window.history.replaceState(window.history.state, "", window.location.pathname + search + window.location.hash);
    return search;
}"""

# Another bundle picked on a head page: the URL names it and drops the old bundle's view.
_WRITE_BUNDLE = """function(bundle) {
    const params = new URLSearchParams(window.location.search);
    if (params.get("attn-bundle") === bundle) return dash_clientside.no_update;
    ["attn-prompt", "attn-heads", "attn-token", "attn-direction"].forEach(key => params.delete(key));
    params.set("attn-bundle", bundle);
    const search = "?" + params.toString();
    window.history.replaceState(window.history.state, "", window.location.pathname + search + window.location.hash);
    return search;
}"""


def add_attention_callbacks(app, runs: Runs) -> None:
    """The explorer's callbacks: draw a newly picked bundle's explorer, compute a selection,
    colour the tokens, keep a token, write the URL."""

    @app.callback(Output("attn-explorer", "children"), Input("attn-bundle", "value"), State("attn-source", "data"),
                  prevent_initial_call=True)
    def draw_explorer(name, source):
        """The explorer of a bundle picked on a head page, with its defaults (the page drew the
        first one, as its URL asked)."""
        return first_view(runs, name, source, {})[1]

    @app.callback(Output("attn-data", "data"), Output("attn-problem", "children"), Output("attn-status", "children"),
                  Input("attn-prompt", "value"), Input("attn-heads", "value"), State("attn-bundle", "value"),
                  State("attn-problem", "children"))
    def select(prompt, heads, name, problem):
        if ctx.triggered_id is None and problem:  # a link with bad values: draw nothing until a choice
            return None, no_update, ""
        if prompt is None or not heads:
            return None, None, ""
        entry = runs.entry(name)
        try:
            if entry is None or not explorable(entry):
                raise ValueError("the bundle is gone or holds no attention patterns")
            chosen = sorted(tuple(int(part) for part in h.split(".")) for h in heads)
            data = selection(runs.table(entry, "patterns"), int(prompt), chosen)
        except Exception as error:  # say why on the page; the pickers stay usable
            return None, None, error_card(f"bundle {name}", f"{type(error).__name__}: {error}")
        return data, None, ""

    app.clientside_callback(_PAINT, Output("attn-tokens", "figure"), Output("attn-heatmap", "figure"),
                            Input("attn-data", "data"),
                            Input("attn-tokens", "hoverData"), Input("attn-token", "data"),
                            Input("attn-direction", "value"))
    app.clientside_callback(_KEEP, Output("attn-token", "data"), Input("attn-tokens", "clickData"),
                            Input("attn-data", "data"), State("attn-token", "data"))
    app.clientside_callback(_WRITE, Output("attn-written", "data"), Input("attn-prompt", "value"),
                            Input("attn-heads", "value"), Input("attn-direction", "value"), Input("attn-token", "data"),
                            State("attn-source", "data"), State("attn-bundle", "value"), prevent_initial_call=True)
    app.clientside_callback(_WRITE_BUNDLE, Output("attn-written", "data", allow_duplicate=True),
                            Input("attn-bundle", "value"), prevent_initial_call=True)
