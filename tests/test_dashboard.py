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
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest

from app.data import Runs
from app.demo import run_steps
from interp.cli import main
from interp.results import list_bundles, read_bundle

pytest_plugins = ["tests.dashboard_fixtures"]


def raw_get(url: str, path: str) -> tuple[int, str]:
    """GET `path` exactly as written (no client-side normalisation of '..' or '%2e')."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", path)
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


def test_dashboard_refuses_a_missing_runs_folder(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_server_binds_loopback_and_lists_every_bundle(dashboard_url, dashboard_runs):
    assert urlsplit(dashboard_url).hostname == "127.0.0.1"
    status, shell = raw_get(dashboard_url, "/")
    assert status == 200 and "headlab dashboard" in shell
    content = page_content(dashboard_url, "/")
    names = [entry.path.name for entry in list_bundles(dashboard_runs)]
    assert len(names) == 14  # 11 analyses + 3 damaged copies
    for name in names:
        assert name in content, name


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


def test_fifty_concurrent_page_loads_all_succeed(dashboard_url, dashboard_runs):
    """50 threads each load the run list and a heads grid (shell + content) at once."""
    name = next(e.path.name for e in list_bundles(dashboard_runs) if e.ok)
    results: list[tuple[int, bool]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(50)

    def load(i: int) -> None:
        try:
            start.wait(timeout=30)
            status, shell = raw_get(dashboard_url, "/" if i % 2 else "/heads?model=zoo/ioi-small")
            content = page_content(dashboard_url, "/") if i % 2 else page_content(
                dashboard_url, "/heads", "?model=zoo/ioi-small")
            ok = "headlab dashboard" in shell and (name in content if i % 2 else "heads-grid" in content)
            with lock:
                results.append((status, ok))
        except BaseException as error:  # collected and reported below
            with lock:
                errors.append(error)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(50)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.perf_counter() - began
    assert not errors, errors[:3]
    assert len(results) == 50 and all(status == 200 and ok for status, ok in results)
    assert elapsed < 60, f"50 concurrent page loads took {elapsed:.1f} s"
    print(f"50 concurrent page loads: {elapsed:.2f} s")


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
