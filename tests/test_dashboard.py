"""The dashboard over HTTP, without a browser: the real server (`headlab dashboard`, a
subprocess on a free loopback port) over a runs folder made by the real analyses.

Pages are loaded as the browser loads them: the HTML shell, then Dash's POST to
/_dash-update-component for the page content of a URL.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import numpy as np
import pandas as pd
import pytest
from werkzeug.test import Client

from app.data import Runs, analysis_of
from app.demo import run_steps
from app.server import create_app, guard_host
from app.views.common import bundle_href, download_href, head_href
from app.views.heads import tie_aware_rank
from interp.results.figures import heatmap
from app.cli import main
from interp.results import list_bundles, read_bundle

pytest_plugins = ["tests.dashboard_fixtures"]


def raw_get(url: str, path: str, host: str | None = None) -> tuple[int, str]:
    """GET `path` exactly as written (no client-side normalisation of '..' or '%2e'), with
    `host` as the Host header if given."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", path, headers={"Host": host} if host else {})
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def page_content(url: str, pathname: str, search: str = "") -> str:
    """The JSON Dash returns for the page at `pathname` + `search` (what the browser renders)."""
    body = {"output": "page.children", "outputs": {"id": "page", "property": "children"},
            "inputs": [{"id": "url", "property": "pathname", "value": pathname},
                       {"id": "url", "property": "search", "value": search}],
            "changedPropIds": ["url.pathname"], "state": []}
    request = urllib.request.Request(f"{url}/_dash-update-component", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return response.read().decode()


def components(content: str) -> list[dict]:
    """Every Dash component (dict with "type" and "props") in a page-content response."""
    found: list[dict] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            if "type" in value and "props" in value:
                found.append(value)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(json.loads(content)["response"])
    return found


def error_cards(content: str) -> list[str]:
    """The titles of the red error cards in a page-content response."""
    titles = []
    for component in components(content):
        if component["props"].get("className") == "card error-card":
            strong = component["props"]["children"][0]
            titles.append(strong["props"]["children"])
    return titles


def graphs(content: str) -> list[dict]:
    return [c for c in components(content) if c["type"] == "Graph"]


def test_dashboard_refuses_a_missing_runs_folder(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_server_binds_loopback_and_lists_every_bundle(dashboard_url, dashboard_runs):
    assert urlsplit(dashboard_url).hostname == "127.0.0.1"
    status, shell = raw_get(dashboard_url, "/")
    assert status == 200 and "headlab dashboard" in shell
    content = page_content(dashboard_url, "/")
    names = [entry.path.name for entry in list_bundles(dashboard_runs)]
    assert len(names) == 17  # 13 analyses + a legacy bundle + 3 damaged copies
    folded = page_content(dashboard_url, "/", "?same=broken-table")  # a copy of a heads run: folded under it
    for name in names:
        assert name in content or (name == "broken-table" and '"children":"broken-table"' in folded), name


@pytest.mark.parametrize("path", [
    "/bundle/../../secret.txt",
    "/bundle/%2e%2e/%2e%2e/secret.txt",
    "/bundle/%2E%2E%2F..%2Fsecret.txt",
    "/download/..%2F..%2Fsecret.txt/x.csv",
    "/download/%2e%2e/secret.csv",
    "/download/../../secret.txt",
    "/download//etc/passwd/x.csv",
    "/download/%2Fetc%2Fpasswd/x.csv",
    "/_dash-component-suites/../../../../etc/passwd",
    "/bundle/.hidden",
    "/bundle/a%5Cb",
    "/bundle/a\\b",
    "/bundle/a%00b",
    "/heads/%2e%2e/",
])
def test_path_traversal_is_refused(dashboard_url, path):
    status, body = raw_get(dashboard_url, path)
    assert status == 404, (path, status)
    assert "SECRET" not in body and "root:" not in body


def test_an_absolute_path_serves_no_file(dashboard_url):
    # werkzeug reads '//etc/passwd' as '/etc/passwd': an unknown page, answered by the app's shell.
    status, body = raw_get(dashboard_url, "//etc/passwd")
    assert status in (200, 404) and "root:" not in body
    assert "Page not found" in page_content(dashboard_url, "/etc/passwd")


@pytest.mark.parametrize("pathname", ["/bundle/../secret.txt", "/bundle/%2e%2e%2fsecret.txt", "/bundle//etc/passwd",
                                      "/bundle/..", "/bundle/%2Fetc%2Fpasswd"])
def test_bundle_pages_resolve_names_only_among_the_listed_bundles(dashboard_url, pathname):
    content = page_content(dashboard_url, pathname)
    assert "Bundle not found" in content
    assert "SECRET" not in content and "root:" not in content


def test_csv_download_returns_the_bundle_table(dashboard_url, dashboard_runs):
    entry = next(e for e in list_bundles(dashboard_runs) if e.ok and e.bundle.meta["analysis"] == "pruning")
    status, body = raw_get(dashboard_url, f"/download/{entry.path.name}/importance.csv")
    assert status == 200
    served = pd.read_csv(io.StringIO(body))
    pd.testing.assert_frame_equal(served, read_bundle(entry.path).table("importance"), check_dtype=False)
    assert raw_get(dashboard_url, f"/download/{entry.path.name}/no-such-table.csv")[0] == 404
    assert raw_get(dashboard_url, "/download/broken-meta/scores.csv")[0] == 404
    status, body = raw_get(dashboard_url, "/download/broken-table/scores.csv")
    assert status == 500 and "broken-table" in body


@pytest.mark.parametrize("url", [
    "/bundle/no-such-bundle",
    "/bundle/no%20such%20bundle",
    "/heads?model=no%2Fsuch-model",
    "/head?model=no%2Fsuch-model&layer=0&head=0",
    "/head?model=zoo%2Fioi-small&layer=99&head=0",
    "/head?model=zoo%2Fioi-small&layer=0&head=99",
    "/head?model=zoo%2Fioi-small&layer=-1&head=0",
    "/head?model=zoo%2Fioi-small&layer=4&head=0",  # 4 layers x 8 heads
    "/head?model=zoo%2Fioi-small&layer=0&head=8",
    "/head?model=zoo%2Fioi-small&layer=0&head=1.0",
    "/head?model=zoo%2Fioi-small&layer=0",
    "/nowhere",
])
def test_a_page_for_something_missing_answers_404_and_says_so(dashboard_url, url):
    status, shell = raw_get(dashboard_url, url)
    assert status == 404 and "<title>Not found" in shell, (url, status)
    pathname, _, search = url.partition("?")
    heading = components(page_content(dashboard_url, pathname, "?" + search if search else ""))[0]
    assert heading["type"] == "H2" and heading["props"]["children"].endswith("not found"), heading


def test_the_last_head_and_other_pages_that_exist_answer_200(dashboard_url, dashboard_runs):
    for url in ["/head?model=zoo%2Fioi-small&layer=3&head=7", "/head?model=zoo%2Fioi-small&layer=0&head=0",
                "/heads", "/", "/bundle/broken-meta"]:  # a listed but unreadable bundle: its error card
        assert raw_get(dashboard_url, url)[0] == 200, url


def test_a_csv_of_a_missing_table_or_bundle_answers_404(dashboard_url, dashboard_runs):
    pruning = next(e.path.name for e in list_bundles(dashboard_runs) if e.ok and e.bundle.meta["analysis"] == "pruning")
    for url in [f"/download/{pruning}/no-such-table.csv", "/download/no-such-bundle/curve.csv",
                "/download/broken-meta/scores.csv"]:
        status, body = raw_get(dashboard_url, url)
        assert status == 404 and body.startswith("not found"), (url, status, body)


# Characters a URL may carry as they are (RFC 3986 unreserved and reserved), and '%' escapes.
URL_SAFE = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-F]{2})*")


def test_every_link_on_every_page_is_url_encoded_and_opens(dashboard_url, dashboard_runs):
    """Every href on every page is percent-encoded (names as one path segment each) and
    leads to a page that exists (200, no "not found"), or to a CSV download."""
    hrefs = set()
    for pathname, search in every_page(dashboard_runs):
        hrefs |= {c["props"]["href"] for c in components(page_content(dashboard_url, pathname, search))
                  if "href" in c["props"]}
    assert len(hrefs) > 50
    for href in sorted(hrefs):
        assert URL_SAFE.fullmatch(href), href
        path, _, search = href.partition("?")
        if path.startswith(("/bundle/", "/download/")):
            for segment in path.split("/")[2:]:
                assert quote(unquote(segment), safe="") == segment, href
        if path.endswith(".zip"):
            with urllib.request.urlopen(dashboard_url + href) as response:
                assert response.status == 200 and response.read(2) == b"PK", href
            continue
        status, body = raw_get(dashboard_url, href)
        assert status == 200, (href, status)
        if path.startswith("/download/"):
            bundle, table = (unquote(segment) for segment in path.removeprefix("/download/").split("/"))
            stored = read_bundle(dashboard_runs / bundle).table(table.removesuffix(".csv"))
            assert body.splitlines()[0].split(",") == list(map(str, stored.columns)), href
            continue
        heading = components(page_content(dashboard_url, path, "?" + search if search else ""))[0]
        assert not heading["props"]["children"].endswith("not found"), href


def test_every_graph_is_configured_without_a_way_to_send_it_anywhere(dashboard_url, dashboard_runs):
    drawn = 0
    for pathname, search in every_page(dashboard_runs):
        for graph in graphs(page_content(dashboard_url, pathname, search)):
            config = graph["props"].get("config", {})
            assert config.get("showSendToCloud") is False and config.get("plotlyServerURL") == "", pathname
            assert config.get("displaylogo") is False, pathname
            assert config.get("toImageButtonOptions") == {"format": "svg"}, pathname
            drawn += 1
    assert drawn > 20


def test_a_folder_named_outside_the_naming_rule_is_an_error_card_that_states_it(tmp_path, dashboard_runs):
    """Such a folder is listed as unreadable, with the rule, and never linked to; its page
    (reached by typing its encoded name) shows the same card."""
    source = next(e.path for e in list_bundles(dashboard_runs) if e.ok and e.bundle.meta["analysis"] == "heads")
    odd = ["run #1 (copy)", "résumé", "a?b&c=d"]
    for name in [*odd, "good-name"]:
        shutil.copytree(source, tmp_path / name)
    client = create_app(tmp_path).server.test_client()

    def content(pathname: str) -> str:
        body = {"output": "page.children", "outputs": {"id": "page", "property": "children"},
                "inputs": [{"id": "url", "property": "pathname", "value": pathname},
                           {"id": "url", "property": "search", "value": ""}],
                "changedPropIds": ["url.pathname"], "state": []}
        response = client.post("/_dash-update-component", json=body)
        assert response.status_code == 200
        return response.get_data(as_text=True)

    run_list = content("/")
    cards = {c["props"]["children"][0]["props"]["children"]: c["props"]["children"][1]["props"]["children"]
             for c in components(run_list) if c["props"].get("className") == "card error-card"}
    assert set(cards) == {f"bundle {name}" for name in odd}
    for text in cards.values():
        assert "letters, digits, '_', '-' or '.'" in text and "Rename the folder" in text, text
    hrefs = [c["props"]["href"] for c in components(run_list) if "href" in c["props"]]
    assert "/bundle/good-name" in hrefs and not [h for h in hrefs if "copy" in h or "sum" in h or "%3F" in h]
    for name in odd:
        pathname = "/bundle/" + quote(name, safe="")
        assert client.get(pathname).status_code == 200
        assert error_cards(content(pathname)) == [f"bundle {name}"]
    assert client.get("/bundle/good-name").status_code == 200 and error_cards(content("/bundle/good-name")) == []


def test_link_builders_encode_names_as_single_segments():
    assert bundle_href("a b#c?d/e%") == "/bundle/a%20b%23c%3Fd%2Fe%25"
    assert download_href("a/b", "t&u") == "/download/a%2Fb/t%26u.csv"
    assert head_href("org/m&n", 1, 2) == "/head?model=org%2Fm%26n&layer=1&head=2"


def test_a_share_heatmap_refuses_values_outside_0_1_and_unknown_scales():
    ok = heatmap([[0.0, np.nan], [1.0, 0.5]], [0, 1], [0, 1], quantity="induction score", scale="share")
    assert (ok.data[0].zmin, ok.data[0].zmax, ok.data[0].colorbar.title.text) == (0, 1, "induction score")
    with pytest.raises(ValueError, match=r"induction score must lie in \[0, 1\]; 1 values do not, e.g. 1.5"):
        heatmap([[0.2, 1.5]], [0, 1], [0], quantity="induction score", scale="share")
    with pytest.raises(ValueError, match=r"-0.25"):
        heatmap([[-0.25]], [0], [0], quantity="sink rate", scale="share")
    with pytest.raises(ValueError, match="scale must be one of"):
        heatmap([[0.5]], [0], [0], quantity="x", scale="auto")
    signed = heatmap([[-0.5, 2.0]], [0, 1], [0], quantity="effect", scale="signed").data[0]
    assert (signed.zmin, signed.zmid, signed.zmax) == (-2.0, 0.0, 2.0)


@pytest.mark.parametrize("host, status", [
    ("127.0.0.1:{port}", 200), ("localhost:{port}", 200), ("LOCALHOST:{port}", 200), ("[::1]:{port}", 200),
    ("evil.example:{port}", 403), ("evil.example", 403), ("127.0.0.1:{other}", 403), ("127.0.0.1", 403),
    ("localhost.evil.example:{port}", 403), ("", 403),
])
def test_a_loopback_server_refuses_other_host_headers(dashboard_url, host, status):
    """DNS rebinding: a page from evil.example that re-points its name at 127.0.0.1 sends
    'Host: evil.example'; the server bound to loopback must not answer it."""
    port = urlsplit(dashboard_url).port
    header = host.format(port=port, other=port + 1)
    for path in ["/", "/bundle/broken-meta", "/_dash-layout"]:
        got, body = raw_get(dashboard_url, path, host=header or " ")
        assert got == status, (header, path, got)
        if status == 403:
            assert "forbidden" in body and "headlab" not in body


def test_a_server_bound_to_all_addresses_accepts_any_host_header(dashboard_runs):
    app = create_app(dashboard_runs).server
    assert guard_host(app, "0.0.0.0", 8050) is app
    for bound, allowed, refused in (("127.0.0.1", "127.0.0.1:8050", "evil.example:8050"),
                                    ("::1", "[::1]:8050", "evil.example:8050"),
                                    ("localhost", "localhost:8050", "127.0.0.2:8050")):
        client = Client(guard_host(app, bound, 8050))
        assert client.get("/_dash-layout", headers={"Host": allowed}).status_code == 200, bound
        assert client.get("/_dash-layout", headers={"Host": refused}).status_code == 403, bound


def every_page(runs: Path) -> list[tuple[str, str]]:
    """(pathname, search) of one page of every kind: run list, both heads grids, a head page
    of each model, and the page of every readable bundle (each analysis, stored figures too)."""
    pages = [("/", ""), ("/heads", "?model=zoo%2Fioi-small"), ("/heads", "?model=zoo%2Finduction-2l"),
             ("/head", "?model=zoo%2Fioi-small&layer=0&head=2"), ("/head", "?model=zoo%2Finduction-2l&layer=1&head=2")]
    pages += [(f"/bundle/{e.path.name}", "") for e in list_bundles(runs) if e.ok and e.path.name != "broken-table"]
    return pages


# Analyses whose bundle pages draw registered figures, and one bundle whose page shows a
# figure stored by an older version.
FIGURED = ("sinks", "maps", "head-patterns", "rollout", "pruning", "patch", "circuit", "sae-features")
LEGACY = "legacy-scan"
# The damaged copies: their own error cards are expected on the pages that list them.
DAMAGED_NAMES = ("broken-meta", "broken-missing", "broken-table")
DAMAGED = {f"bundle {name}" for name in DAMAGED_NAMES}


def one_page_per_kind(runs: Path) -> list[tuple[str, str]]:
    """(pathname, search) of the run list, the heads grid and a head page of the model with
    the most analyses, and the page of one bundle per analysis (and per patching layout)."""
    pages = [("/", ""), ("/heads", "?model=zoo%2Fioi-small"), ("/head", "?model=zoo%2Fioi-small&layer=0&head=2")]
    kinds = {}
    for entry in list_bundles(runs):
        if entry.ok and entry.path.name != "broken-table":
            meta = entry.bundle.meta
            kinds.setdefault((meta["analysis"], tuple(meta["parameters"].get("axes", ()))), entry.path.name)
    assert len(kinds) == 13  # heads, sinks, rollout, flow, maps, pruning, patterns, patching x 3, circuit, sae, legacy
    return pages + [(f"/bundle/{name}", "") for name in kinds.values()]


def test_a_hundred_concurrent_loads_of_every_page_kind(dashboard_url, dashboard_runs):
    """A page of each kind (and a CSV download) loaded by 100 threads at once (shell +
    content): all answer 200 with the figures the page has when loaded alone, and no error
    card but those of the damaged copies. The bundles with stored figures are among them."""
    pages = one_page_per_kind(dashboard_runs)
    analyses = {read_bundle(dashboard_runs / p.removeprefix("/bundle/")).meta["analysis"]
                for p, _ in pages if p.startswith("/bundle/")}
    assert set(FIGURED) | {LEGACY} <= analyses
    pruning = next(e.path.name for e in list_bundles(dashboard_runs) if e.ok and e.bundle.meta["analysis"] == "pruning")
    csv_path = f"/download/{pruning}/importance.csv"
    alone = {}
    for pathname, search in pages:
        content = page_content(dashboard_url, pathname, search)
        assert set(error_cards(content)) <= DAMAGED, (pathname, error_cards(content))
        alone[pathname + search] = len(graphs(content))
    assert sum(alone.values()) >= 15
    csv_alone = raw_get(dashboard_url, csv_path)[1]

    def load(pathname: str, search: str) -> str:
        """'' when the page loads as it does alone, else what went wrong."""
        status, shell = raw_get(dashboard_url, pathname + search)
        if pathname == csv_path:
            return "" if status == 200 and shell == csv_alone else f"{pathname}: {status}"
        content = page_content(dashboard_url, pathname, search)
        cards = set(error_cards(content)) - DAMAGED
        drawn = len(graphs(content))
        if status != 200 or "headlab dashboard" not in shell or cards or drawn != alone[pathname + search]:
            return f"{pathname}{search}: {status}, error cards {cards}, {drawn} graphs"
        return ""

    problems: list[str] = []
    began = time.perf_counter()
    for pathname, search in [*pages, (csv_path, "")]:
        problems += [p for p in at_once(100, lambda: load(pathname, search)) if p]
    elapsed = time.perf_counter() - began
    assert not problems, f"{len(problems)} of {100 * (len(pages) + 1)} loads failed: {problems[:3]}"
    print(f"{len(pages) + 1} pages, each loaded by 100 threads at once: {elapsed:.1f} s")


def at_once(n: int, call) -> list:
    """`call()` in `n` threads started together; their results (or the exceptions' repr)."""
    results: list = []
    lock = threading.Lock()
    start = threading.Barrier(n)

    def run() -> None:
        try:
            start.wait(timeout=60)
            result = call()
        except BaseException as error:  # collected and reported by the caller
            result = repr(error)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(results) == n, f"{n - len(results)} of {n} threads did not finish"
    return results


def test_figures_are_drawn_concurrently_in_one_process(dashboard_runs):
    """100 threads of one process draw every registered figure (and take the legacy bundle's
    stored figure) from the shared caches, twice each: every one equals the figure drawn from
    the bundle read afresh. (Copying one cached plotly Figure from many threads fails most of
    the time: plotly briefly pops each trace's "type" while it copies.)"""
    runs = Runs(dashboard_runs)
    expected, parts = {}, []
    for entry in runs.entries():
        if not entry.ok or entry.path.name in DAMAGED_NAMES:
            continue
        fresh = read_bundle(entry.path)
        analysis = analysis_of(entry)
        if analysis is None:
            for name in entry.bundle.figure_names:
                parts.append((entry, ("stored", name)))
                expected[entry.path.name, ("stored", name)] = fresh.figure(name).to_json()
            continue
        tables = {name: fresh.table(name) for name in fresh.table_names}
        for figure in analysis.figures:
            if all(t in tables for t in figure.needs):
                parts.append((entry, ("drawn", figure.name)))
                expected[entry.path.name, ("drawn", figure.name)] = figure.draw(tables, fresh.meta).to_json()
    assert len(parts) >= 12 and ("stored", "bars") in [key for _, key in parts]

    def draw(entry, key) -> str:
        kind, name = key
        if kind == "stored":
            return runs.figure(entry, name).to_json()
        return analysis_of(entry).figure(name).draw(runs.tables(entry), entry.bundle.meta).to_json()

    def take() -> str:
        for _ in range(2):
            for entry, key in parts:
                if draw(entry, key) != expected[entry.path.name, key]:
                    return f"{entry.path.name}/{key} differs"
        return ""

    failures = [r for r in at_once(100, take) if r]
    assert not failures, f"{len(failures)} of 100 threads failed, e.g. {failures[0][:300]}"


def test_page_loads_do_not_import_torch(dashboard_server, dashboard_runs):
    """Every kind of page, loaded from the server process: torch's library never gets mapped."""
    url, process = dashboard_server
    maps = Path(f"/proc/{process.pid}/maps")
    if not maps.exists():
        pytest.skip("needs Linux /proc to see what the server process loaded")
    page_content(url, "/")
    page_content(url, "/heads", "?model=zoo/ioi-small")
    page_content(url, "/head", "?model=zoo/induction-2l&layer=1&head=0")
    for entry in list_bundles(dashboard_runs):
        page_content(url, f"/bundle/{entry.path.name}")
    assert "libtorch" not in maps.read_text()


def test_demo_reports_a_failing_step_and_goes_on(tmp_path, capsys):
    report = run_steps(tmp_path, [("no such command", ["no-such-command"]),
                                  ("heads", ["heads", "zoo/induction-2l", "--n-sequences", "4"])])
    (first, status_1, _), (second, status_2, _) = report
    assert status_1.startswith("exit status 2") and "invalid choice" in status_1
    assert status_2 == "ok"
    assert [e.bundle.meta["analysis"] for e in list_bundles(tmp_path)] == ["heads"]


def test_the_demo_runs_every_registered_analysis_and_every_page_draws(tmp_path):
    """The registry's promise: every registered analysis has demo steps, appears in `headlab
    --help`, runs in the demo, and its bundle page draws its figures without an error card."""
    from app.cli import build_parser
    from app.registry import analyses
    from app.server import route

    registered = analyses()
    assert all(a.demo for a in registered), [a.name for a in registered if not a.demo]
    commands = build_parser()._subparsers._group_actions[0].choices
    for analysis in registered:
        parser = commands[analysis.command[0]]
        if analysis.group:
            assert analysis.command[1] in parser._subparsers._group_actions[0].choices, analysis.name
    report = run_steps(tmp_path)
    assert [(what, status) for what, status, _ in report if status != "ok"] == []
    runs = Runs(tmp_path)
    written = {e.bundle.meta["analysis"] for e in runs.entries() if e.ok}
    assert written == {a.name for a in registered}
    for entry in runs.entries():
        content = json.dumps(route(runs, f"/bundle/{entry.path.name}", ""), default=_plotly_json)
        assert "error-card" not in content, entry.path.name
        drawable = [f for f in analysis_of(entry).figures if all(t in entry.bundle.table_names for t in f.needs)]
        assert content.count('"figure-') >= len(drawable) > 0 or not analysis_of(entry).figures, entry.path.name


def _plotly_json(value):
    return value.to_plotly_json() if hasattr(value, "to_plotly_json") else str(value)


def test_tables_are_cached_by_path_and_mtime(dashboard_runs):
    runs = Runs(dashboard_runs)
    entry = next(e for e in runs.entries() if e.ok and e.bundle.meta["analysis"] == "pruning")
    first = runs.table(entry, "curve")
    assert runs.table(entry, "curve") is first
    part = entry.path / "tables" / "curve.parquet"
    stat = part.stat()
    os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = runs.table(entry, "curve")
    assert again is not first
    pd.testing.assert_frame_equal(again, first)


def test_ranks_say_when_heads_tie():
    sizes = pd.Series([0.9, 0.5, 0.5, 0.5, 0.1])
    assert tie_aware_rank(sizes, 0.9) == "1 of 5"
    assert tie_aware_rank(sizes, 0.5) == "2–4 of 5 (3 tied)"
    assert tie_aware_rank(sizes, 0.1) == "5 of 5"


def test_previous_and_next_head_cross_layer_ends(dashboard_url, dashboard_runs):
    """zoo/ioi-small has 4 layers x 8 heads: after L0H7 comes L1H0, before it L0H6; the first
    head has no previous one and the last no next one."""
    def neighbours(layer, head):
        content = page_content(dashboard_url, "/head", f"?model=zoo%2Fioi-small&layer={layer}&head={head}")
        return sorted(c["props"]["children"] for c in components(content)
                      if str(c["props"].get("children", "")).startswith(("previous head", "next head")))

    assert neighbours(0, 7) == ["next head (L1H0)", "previous head (L0H6)"]
    assert neighbours(0, 0) == ["next head (L0H1)"]
    assert neighbours(3, 7) == ["previous head (L3H6)"]


def test_a_whole_bundle_downloads_as_a_zip_of_its_files(dashboard_url, dashboard_runs):
    import zipfile

    entry = next(e for e in list_bundles(dashboard_runs) if e.ok and e.bundle.meta["analysis"] == "sae-features")
    with urllib.request.urlopen(f"{dashboard_url}/download/{quote(entry.path.name, safe='')}.zip") as response:
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    names = sorted(archive.namelist())
    assert names == sorted(f"{entry.path.name}/{f}" for f in ["meta.json", *entry.bundle.files])
    for name in names:  # byte for byte the files on disk
        assert archive.read(name) == (entry.path.parent / name).read_bytes(), name
    unpacked = dashboard_runs.parent / "unpacked"
    archive.extractall(unpacked)
    assert read_bundle(unpacked / entry.path.name).table("features").equals(entry.bundle.table("features"))
    assert raw_get(dashboard_url, "/download/no-such-bundle.zip")[0] == 404


def _flatten(component) -> list[dict]:
    """Every component of a page (Dash components as their JSON dicts), depth first."""
    found = []

    def walk(node):
        if hasattr(node, "to_plotly_json"):
            node = node.to_plotly_json()
        if isinstance(node, dict) and "props" in node:
            found.append(node)
            walk(node["props"].get("children"))
        elif isinstance(node, (list, tuple)):
            for child in node:
                walk(child)

    walk(component)
    return found


def test_run_list_searches_filters_sorts_pages_and_folds_repeats(tmp_path):
    """63 bundles: 3 identical runs of heads on zoo/a (folded under the newest) and 60 distinct
    sinks runs on zoo/b; the view follows the URL's query."""
    from app.server import route
    from interp.results import write_bundle

    frame = pd.DataFrame({"layer": [0], "head": [0], "kind": ["induction"], "score": [0.5]})
    for i in range(3):
        write_bundle(tmp_path, {"analysis": "heads", "model": "zoo/a", "parameters": {"span": 4}, "seed": 0},
                     tables={"scores": frame}, name=f"same-run-{i}")
    for i in range(60):
        write_bundle(tmp_path, {"analysis": "sinks", "model": "zoo/b", "parameters": {"n_prompts": i}, "seed": 0,
                                "task": "ioi" if i < 5 else None}, tables={"rates": frame}, name=f"sinks-{i:02d}")
    for i in range(10):  # ten runs of January 2025, one a day
        meta_file = tmp_path / f"sinks-{i:02d}" / "meta.json"
        meta_file.write_text(meta_file.read_text().replace('"created": "', f'"created": "2025-01-{i + 1:02d}T12:00:00+00:00", "_was": "', 1))
    runs = Runs(tmp_path)

    def view(search: str) -> tuple[str, list[str], list[dict]]:
        parts = _flatten(route(runs, "/", search))
        count = next(p["props"]["children"] for p in parts if p["props"].get("id") == "run-count")
        rows = [p for p in parts if p["props"].get("className") == "run"]
        names = [next(c["props"]["children"] for c in _flatten(r) if c["props"].get("href", "").startswith("/bundle/"))
                 for r in rows]
        return count, names, parts

    count, names, parts = view("")
    assert count == "63 of 63 readable bundles match, 61 distinct runs; page 1 of 2" and len(names) == 50
    count, names, parts = view("?sort=analysis")
    assert names[0] == "same-run-2"  # "heads" sorts before "sinks"; the newest of the identical runs shows
    folded = [p for p in parts if p["props"].get("className") == "older-runs"]
    assert [(p["props"]["children"], p["props"]["href"]) for p in folded] == [("+ 2 older identical runs",
                                                                               "/?same=same-run-2")]
    count, names, parts = view("?same=same-run-2")  # the link lists the identical runs, unfolded
    assert names == ["same-run-2", "same-run-1", "same-run-0"] and count.startswith("3 of 3")
    assert not [p for p in parts if p["props"].get("className") == "older-runs"]
    assert view("?same=sinks-07")[1] == ["sinks-07"]
    count, names, parts = view("?same=nothing-of-that-name")
    assert count.startswith("63 of 63") and any("No readable bundle is named 'nothing-of-that-name'"
                                               in str(p["props"].get("children")) for p in parts)
    assert view("?q=same-run")[0] == "3 of 63 readable bundles match, 1 distinct runs; page 1 of 1"
    assert view("?analysis=sinks&model=zoo%2Fb")[0].startswith("60 of 63")
    assert view("?analysis=sinks&model=zoo%2Fa")[0].startswith("0 of 63")
    assert view("?q=%22n_prompts%22%3A%207")[1] == ["sinks-07"]  # the parameters are searched as JSON
    assert view("?task=ioi")[1] == ["sinks-04", "sinks-03", "sinks-02", "sinks-01", "sinks-00"]
    assert view("?since=2025-01-03&until=2025-01-05")[1] == ["sinks-04", "sinks-03", "sinks-02"]
    assert view("?until=2025-12-31")[0].startswith("10 of 63")
    count, names, parts = view("?since=January")
    assert count.startswith("63 of 63") and any("'January' is not a date" in str(p["props"].get("children"))
                                               for p in parts)
    count, names, parts = view("?page=2")
    assert count.endswith("page 2 of 2") and len(names) == 11
    pager = [p["props"]["href"] for p in parts if p["props"].get("children") == "← previous page"]
    assert pager == ["/?page=1"]
    assert view("?page=99")[0].endswith("page 2 of 2") and view("?page=x")[0].endswith("page 1 of 2")
    state = [p["props"]["href"] for p in _flatten(route(runs, "/", "?analysis=sinks&sort=model"))
             if p["props"].get("children") == "next page →"]
    assert state == ["/?analysis=sinks&sort=model&page=2"]  # the next page keeps the view's filters


def test_runs_sees_bundles_added_removed_replaced_and_rewritten(tmp_path, dashboard_runs):
    """The listing and the per-head metrics are kept between requests; each must still follow
    the runs folder: a bundle added, removed, its meta.json replaced, a table rewritten."""
    source = next(e.path for e in list_bundles(dashboard_runs) if e.ok and e.bundle.meta["analysis"] == "heads"
                  and e.bundle.meta["model"] == "zoo/induction-2l")
    shutil.copytree(source, tmp_path / "first")
    runs = Runs(tmp_path)

    def previous_token_scores() -> list[float]:
        metric = next(m for m in runs.head_metrics("zoo/induction-2l")[0] if "previous" in m.label)
        return metric.values.sort_values(["layer", "head"])["value"].tolist()

    assert [e.path.name for e in runs.entries()] == ["first"]
    scores_file = tmp_path / "first" / "tables" / "scores.parquet"
    scores = pd.read_parquet(scores_file)
    expected = scores[scores["kind"] == "previous_token"].sort_values(["layer", "head"])["score"].tolist()
    assert previous_token_scores() == pytest.approx(expected)

    shutil.copytree(source, tmp_path / "second")
    assert sorted(e.path.name for e in runs.entries()) == ["first", "second"]
    shutil.rmtree(tmp_path / "second")
    assert [e.path.name for e in runs.entries()] == ["first"]

    halved = scores.assign(score=scores["score"] / 2)
    halved.to_parquet(scores_file.with_name(".scores.tmp"))
    os.replace(scores_file.with_name(".scores.tmp"), scores_file)  # as a bundle writer replaces a file
    assert previous_token_scores() == pytest.approx([v / 2 for v in expected])

    meta_file = tmp_path / "first" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["model"] = "zoo/another"
    meta_file.with_name(".meta.tmp").write_text(json.dumps(meta))
    os.replace(meta_file.with_name(".meta.tmp"), meta_file)
    assert runs.entries()[0].bundle.meta["model"] == "zoo/another" and runs.head_metrics("zoo/induction-2l")[0] == []


def test_head_page_folds_identical_runs_into_their_newest(tmp_path, dashboard_runs):
    """Three copies of one sinks run (identical runs, equal numbers) and one run with other
    parameters: the numbers table shows the newest copy's row once, with a link to the older
    copies, and the other run's row; the head view lists the copies once, the other run folded."""
    from app.server import route

    source = next(e for e in list_bundles(dashboard_runs) if e.ok and e.bundle.meta["analysis"] == "sinks"
                  and e.bundle.meta["model"] == "zoo/ioi-small")
    for i, name in enumerate(["copy-old", "copy-mid", "copy-new", "other-run"]):
        shutil.copytree(source.path, tmp_path / name)
        meta = dict(source.bundle.meta, created=f"2026-01-0{i + 1}T00:00:00+00:00")
        if name == "other-run":
            meta["parameters"] = {**meta["parameters"], "threshold": 0.123}
        (tmp_path / name / "meta.json").write_text(json.dumps(meta))
    layer, head = 1, 2
    parts = _flatten(route(Runs(tmp_path), "/head", f"?model=zoo%2Fioi-small&layer={layer}&head={head}"))
    table = next(p for p in parts if p["props"].get("id") == "head-numbers")
    rows = [p for p in _flatten(table) if p["type"] == "Tr"][1:]
    labels = {m.label for m in Runs(tmp_path).head_metrics("zoo/ioi-small")[0]}
    assert len(rows) == 2 * len(labels)  # each metric: the other run's row and the copies' row
    links = [(p["props"]["children"], p["props"]["href"]) for p in _flatten(table) if "href" in p["props"]]
    assert links.count(("copy-new", "/bundle/copy-new")) == len(labels)
    assert links.count(("2 identical older runs", "/?same=copy-new")) == len(labels)
    assert links.count(("other-run", "/bundle/other-run")) == len(labels)
    assert not [name for name, _ in links if name in ("copy-mid", "copy-old")]
    view = next(p for p in parts if p["type"] == "Section" and "sinks" in str(p["props"]["children"][0]))
    drawn = [q["props"]["children"] for p in _flatten(view) if p["type"] == "H4" for q in _flatten(p["props"]["children"])]
    folded = [p["props"]["children"] for p in _flatten(view) if p["type"] == "Summary"]
    assert drawn == ["other-run"] and folded == ["copy-new (click to draw)"]  # the newest drawn, the copies once

    def grid_options(search: str) -> list[str]:
        parts = _flatten(route(Runs(tmp_path), "/heads", search))
        picker = next(p for p in parts if p["props"].get("id") == "grid-metric")
        return [option["value"] for option in picker["props"]["options"]]

    offered = grid_options("?model=zoo%2Fioi-small")  # the heads grid offers each distinct run once
    assert sorted({key.split(":")[0] for key in offered}) == ["copy-new", "other-run"]
    assert len(offered) == 2 * len(labels)
    older = next(m.key for m in Runs(tmp_path).head_metrics("zoo/ioi-small")[0] if m.bundle == "copy-old")
    assert grid_options(f"?model=zoo%2Fioi-small&metric={quote(older)}") == offered + [older]  # a link to it still works

    heads = next(e for e in list_bundles(dashboard_runs) if e.ok and e.bundle.meta["analysis"] == "heads"
                 and e.bundle.meta["model"] == "zoo/ioi-small")
    for i, name in enumerate(["heads-old", "heads-new"]):  # sinks names heads as related: one link for both
        shutil.copytree(heads.path, tmp_path / name)
        (tmp_path / name / "meta.json").write_text(json.dumps(dict(heads.bundle.meta, created=f"2026-02-0{i + 1}T00:00:00+00:00")))
    related = next(p for p in _flatten(route(Runs(tmp_path), "/bundle/other-run", "")) if p["props"].get("id") == "related")
    linked = [p["props"]["children"] for p in _flatten(related) if "href" in p["props"]]
    assert "heads-new" in linked and "heads-old" not in linked
