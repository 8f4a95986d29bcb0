"""The run list: the bundles of the runs folder, searchable, filterable by analysis, model,
task and date, sortable and paginated, with repeated runs folded under their newest (a link
lists them); an error card for each folder that is not a readable bundle.

The view's state is the URL's query (`/?q=ioi&analysis=patch&model=zoo/ioi-small&task=ioi&since=2026-11-01&sort=analysis&page=2`),
so any view can be shared as a link; the form submits to the same page.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

from dash import dcc, html

from app.data import Runs, run_key
from app.views.common import bundle_href, compact, error_card, grid_href, notice, section, when

PAGE_SIZE = 50
SORTS = {"time": "newest first", "analysis": "analysis, then newest", "model": "model, then newest"}


def runs_page(runs: Runs, query: dict[str, str] | None = None) -> list:
    """The run list for the URL's `query` (q, analysis, model, task, since, until (dates,
    YYYY-MM-DD, inclusive), sort, page, same (a bundle name: only the runs identical to it,
    unfolded); unknown names match nothing rather than being refused,
    as a link may outlive the bundles it named; a malformed date is said and ignored)."""
    query = query or {}
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
    analyses = sorted({e.bundle.meta["analysis"] for e in readable})
    tasks = sorted({str(e.bundle.meta.get("task")) for e in readable if e.bundle.meta.get("task")})
    page.append(section("Heads grids", html.Ul(
        [html.Li(dcc.Link(model, href=grid_href(model))) for model in models], className="inline")))
    chosen = {name: query.get(name, "").strip() for name in ("q", "analysis", "model", "task", "since", "until")}
    chosen["sort"] = query.get("sort", "time") if query.get("sort") in SORTS else "time"
    for name in ("since", "until"):
        if chosen[name] and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", chosen[name]):
            page.append(notice(f"{name}={chosen[name]!r} is not a date (YYYY-MM-DD): ignored."))
            chosen[name] = ""
    same = query.get("same", "").strip()
    if same:  # the identical runs of one bundle, each on its own row
        named = next((e for e in readable if e.path.name == same), None)
        if named is None:
            page.append(notice(f"No readable bundle is named {same!r}: showing every run."))
            same = ""
        else:
            key = run_key(named)
            readable = [e for e in readable if run_key(e) == key]
            page.append(notice(f"Runs identical to {same} (same analysis, model, task and parameters), newest "
                               "first."))
    chosen["same"] = same  # kept by the pager's links
    groups = fold_repeats(matching(readable, chosen), chosen["sort"])
    if same:
        groups = [[entry] for group in groups for entry in group]
    n_pages = max(1, -(-len(groups) // PAGE_SIZE))
    number = min(max(_int(query.get("page"), 1), 1), n_pages)
    shown = groups[(number - 1) * PAGE_SIZE: number * PAGE_SIZE]
    header = html.Tr([html.Th(c) for c in ("bundle", "analysis", "model", "task", "time (UTC)", "parameters")])
    page += [_form(chosen, analyses, models, tasks),
             html.P(f"{sum(len(g) for g in groups)} of {len(readable)} readable bundles match, {len(groups)} distinct "
                    f"runs; page {number} of {n_pages}", className="muted", id="run-count"),
             html.Table([html.Thead(header), html.Tbody([_row(group) for group in shown])], className="data",
                        id="run-list"),
             _pager(chosen, number, n_pages)]
    return page


def matching(entries: list, chosen: dict[str, str]) -> list:
    """The entries of the chosen analysis, model and task (each when given), created between
    the dates `since` and `until` (inclusive, when given), whose name, analysis, model, task or
    parameters contain the text `q` (case-insensitive)."""
    needle = chosen.get("q", "").lower()
    kept = []
    for entry in entries:
        meta = entry.bundle.meta
        day = str(meta.get("created") or "")[:10]
        if any(chosen.get(name) and str(meta.get(name) or "") != chosen[name] for name in ("analysis", "model", "task")):
            continue
        if (chosen.get("since") and day < chosen["since"]) or (chosen.get("until") and day > chosen["until"]):
            continue
        haystack = " ".join([entry.path.name, meta["analysis"], meta["model"], str(meta.get("task") or ""),
                             json.dumps(meta.get("parameters") or {}, default=str)]).lower()
        if needle in haystack:
            kept.append(entry)
    return kept


def fold_repeats(entries: list, sort: str) -> list[list]:
    """Entries grouped by identical runs (same analysis, model, task and parameters), each group
    newest first, the groups sorted by `sort` (newest group first within equal keys)."""
    groups: dict[str, list] = {}
    for entry in sorted(entries, key=lambda e: e.bundle.created, reverse=True):
        groups.setdefault(run_key(entry), []).append(entry)
    ordered = list(groups.values())  # newest first, as their newest members came
    if sort in ("analysis", "model"):
        ordered.sort(key=lambda group: group[0].bundle.meta[sort])  # stable: newest first within a key
    return ordered


def _int(text: str | None, default: int) -> int:
    return int(text) if text is not None and text.isdigit() else default


def _form(chosen: dict, analyses: list[str], models: list[str], tasks: list[str]) -> html.Form:
    def dropdown(name: str, options: list[tuple[str, str]]):
        return html.Select([html.Option(label, value=value, selected=value == chosen[name]) for value, label in options],
                           name=name, id=f"runs-{name}")

    return html.Form([
        dcc.Input(type="search", name="q", id="runs-q", value=chosen["q"], placeholder="search names, tasks, parameters"),
        dropdown("analysis", [("", "any analysis")] + [(a, a) for a in analyses]),
        dropdown("model", [("", "any model")] + [(m, m) for m in models]),
        dropdown("task", [("", "any task")] + [(t, t) for t in tasks]),
        html.Label(["from ", dcc.Input(type="date", name="since", id="runs-since", value=chosen["since"])]),
        html.Label(["to ", dcc.Input(type="date", name="until", id="runs-until", value=chosen["until"])]),
        dropdown("sort", list(SORTS.items())),
        html.Button("show", type="submit"),
    ], method="get", action="/", className="inline", id="runs-form")


def _pager(chosen: dict, number: int, n_pages: int) -> html.P:
    def link(label: str, target: int):
        state = {k: v for k, v in chosen.items() if v and not (k == "sort" and v == "time")}
        return dcc.Link(label, href="/?" + urlencode({**state, "page": target}))

    parts = []
    if number > 1:
        parts += [link("← previous page", number - 1), " "]
    if number < n_pages:
        parts.append(link("next page →", number + 1))
    return html.P(parts, className="inline", id="run-pager")


def _row(group: list) -> html.Tr:
    entry, older = group[0], group[1:]
    meta = entry.bundle.meta
    parameters = meta.get("parameters") or {}
    name = [dcc.Link(entry.path.name, href=bundle_href(entry.path.name))]
    if older:  # a link, not the older names: hundreds of links made the page slow to draw
        name += [html.Br(), dcc.Link(f"+ {len(older)} older identical run{'s' * (len(older) > 1)}",
                                     href="/?" + urlencode({"same": entry.path.name}), className="older-runs")]
    return html.Tr([
        html.Td(name),
        html.Td(meta["analysis"]),
        html.Td(dcc.Link(meta["model"], href=grid_href(meta["model"]))),
        html.Td(str(meta.get("task") or "")),
        html.Td(when(meta.get("created"))),
        html.Td(html.Span(", ".join(f"{k}={compact(v)}" for k, v in parameters.items()), className="params")),
    ], className="run")
