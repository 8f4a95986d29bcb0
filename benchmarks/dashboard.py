"""Dashboard page-ready times in a real browser, over a runs folder of 300 bundles.

    python benchmarks/dashboard.py                       # demo once (cached), 300 bundles, 5 loads a page
    python benchmarks/dashboard.py --runs-from runs      # copy the bundles of an existing runs folder
    python benchmarks/dashboard.py --repeats 3 --concurrent 20 --tabs 4    # a quicker look

The runs folder: the bundles of `headlab demo` (run once into --demo-dir and reused), copied
under new names, each copy `created` some days before its original, until there are
--bundles of them. Copies are identical runs made at other times, so the run list folds
them under their newest.

Page types (PAGES): the run list, the heads grid and a head page of MiniLM, the largest MAPS
bundle's page, the attention explorer (on MiniLM's head-patterns bundle page), the
circuit page and the SAE feature page. A page is *ready* when every selector of its entry
matches, and each plotly graph among the matches has finished drawing (its
`_fullLayout._replotting` is false); the time is read in the page, from navigation start.

For each page type, in headless chromium (the dashboard tests' flags):
- --repeats loads, each in a fresh tab of one browser context: the first is cold (empty
  browser cache, bundle not yet read by the server), the others warm. Each load is split into
  boot (shell, scripts and Dash's layout, until the page callback is sent), callback (its
  request to its response's last byte), lazy scripts (plotly.js and other chunks fetched for
  the content), plotly.js eval (until window.Plotly exists: evaluating plotly.js and whatever
  else the tab's main thread does meanwhile) and draw (to ready).
- the server's own time for the page callback: POST /_dash-update-component, --repeats times.
- --concurrent simultaneous POSTs of the page callback (threads), each checked for status 200
  and no error card; wall time, p50 and p95.
- --tabs browser tabs opened at once, each checked to get ready without an error card.
The loads and server times of every page type are measured first, then the crowds of every
page type (which leave the machine busy for a while after them).
A browser load also fails on any script error (a failed callback is one: "Failed to load
resource ... 500").

Target: every page ready in <= 2 s. Missing it is reported, not failed; the exit status is 1
when any page shows an error card, a script error, or fails to load.

A default run takes about 4-6 min on two cores with nothing else running, mostly in the 100
concurrent requests, which the server answers in effect one at a time (threads of one Python
process under one GIL; the head page's take about 30 s), and the tabs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.views.common import bundle_href, grid_href, head_href  # noqa: E402
from benchmarks.common import markdown_table  # noqa: E402
from interp.results import BundleEntry, list_bundles  # noqa: E402
from interp.results.layout import check_name  # noqa: E402
from tests.dashboard_fixtures import CHROMIUM, CHROMIUM_ARGS, serving  # noqa: E402

TARGET_S = 2.0
MODEL = "minilm"  # the demo's largest model (6 layers x 12 heads): its grid and head page
HEAD = (5, 7)  # a head MAPS marks salient, so its page has every head view
CACHE = Path("/tmp/headlab-dashboard-bench")
LOAD_TIMEOUT_S = 120  # from opening; tabs opened together share it (ten heavy tabs on two busy cores: ~1 min)
ERROR_CARD = "card error-card"
MADE_HERE = "made-by-benchmarks-dashboard.txt"  # marks a runs folder this benchmark may empty


def newest(analysis: str, model: str | None = None) -> Callable[[list[BundleEntry]], str]:
    """The page of the newest readable bundle of `analysis` (and `model`)."""
    def address(entries: list[BundleEntry]) -> str:
        found = [e for e in entries if e.ok and e.bundle.meta["analysis"] == analysis
                 and model in (None, e.bundle.meta["model"])]
        if not found:
            raise LookupError(f"the runs folder has no {analysis} bundle" + (f" of {model}" if model else ""))
        return bundle_href(found[0].path.name)
    return address


def largest(analysis: str) -> Callable[[list[BundleEntry]], str]:
    """The page of the readable bundle of `analysis` with the most bytes on disk (newest on ties)."""
    def address(entries: list[BundleEntry]) -> str:
        found = [e for e in entries if e.ok and e.bundle.meta["analysis"] == analysis]
        if not found:
            raise LookupError(f"the runs folder has no {analysis} bundle")
        return bundle_href(max(found, key=lambda e: sum(e.bundle.meta["contents"]["files"].values())).path.name)
    return address


@dataclass(frozen=True)
class PageType:
    """A kind of page: where it is in a runs folder, and the selectors that all match once it
    is drawn."""

    name: str
    address: Callable[[list[BundleEntry]], str]
    ready: tuple[str, ...]

    @property
    def slug(self) -> str:
        """Its name in file names, e.g. maps-page-largest."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


# The attention explorer drawn: its token strip has its tokens and its heatmap its cells.
EXPLORER_DRAWN = ("#attn-tokens .barlayer .point", "#attn-heatmap .hm image")

PAGES = [
    PageType("run list", lambda entries: "/", ("#run-list tbody tr",)),
    PageType("heads grid", lambda entries: grid_href(MODEL), ("#heads-grid .js-plotly-plot",)),
    PageType("head page", lambda entries: head_href(MODEL, *HEAD),
             ("#head-numbers", "main .js-plotly-plot", *EXPLORER_DRAWN)),
    PageType("MAPS page (largest)", largest("maps"), ("#figure-scores .js-plotly-plot",)),
    PageType("attention explorer", newest("head-patterns", MODEL), ("#figure-pattern .js-plotly-plot", *EXPLORER_DRAWN)),
    PageType("circuit page", newest("circuit"), ("#figure-faithfulness .js-plotly-plot",)),
    PageType("SAE feature page", newest("sae-features"), ("#figure-feature .js-plotly-plot",)),
]

# Installed in every tab before the page's own scripts: records in window.__ready the time
# (ms from navigation start) at which every selector matches and each matched plotly graph has
# finished drawing, and in window.__plotly the time plotly.js was first seen evaluated. Checked
# on DOM changes, on every animation frame and every 50 ms (window.__check); window.__why() says
# how far a page that is not ready got.
READY_SCRIPT = """(() => {
  const selectors = %s;
  const drawn = el => !el.classList.contains('js-plotly-plot')
                      || (el._fullLayout !== undefined && el._fullLayout._replotting === false);
  window.__why = () => selectors.map(s => { const el = document.querySelector(s);
    return `${s}: ${el === null ? 'missing' : drawn(el) ? 'drawn' : 'not drawn'}`; }).join(', ')
    + `; plotly.js ${window.Plotly === undefined ? 'not ' : ''}loaded`;
  const check = () => {
    if (window.__plotly === undefined && window.Plotly !== undefined) window.__plotly = performance.now();
    if (window.__ready !== undefined) return;
    if (selectors.every(s => { const el = document.querySelector(s); return el !== null && drawn(el); }))
      window.__ready = performance.now();
  };
  new MutationObserver(check).observe(document, {childList: true, subtree: true, attributes: true});
  const frame = () => { check(); if (window.__ready === undefined) requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
  setInterval(check, 50);
  window.__check = check;
})();"""

# What a ready tab reports: its marks (ms from navigation start, in order, null when a page
# has no such step): the page callback's request sent and its response received (the first
# POST to /_dash-update-component), the end of the last script fetched after that (plotly.js
# and other lazy chunks the content needs), plotly.js evaluated, ready; and its error cards.
MEASURE_SCRIPT = """() => {
  const entries = performance.getEntriesByType('resource');
  const call = entries.find(e => e.name.includes('/_dash-update-component'));
  const lazy = call ? entries.filter(e => e.initiatorType === 'script' && e.startTime >= call.responseEnd) : [];
  return {marks: [call ? call.requestStart : null, call ? call.responseEnd : null,
                  lazy.length ? Math.max(...lazy.map(e => e.responseEnd)) : null, window.__plotly ?? null,
                  window.__ready],
          errors: document.querySelectorAll('.error-card').length};
}"""


# ---------------------------------------------------------------------------- the runs folder


def demo_bundles(demo_dir: Path) -> Path:
    """`demo_dir`, filled by `headlab demo --no-serve` unless an earlier run finished there."""
    done = demo_dir / "demo-finished.txt"  # a plain file: list_bundles skips it
    if done.exists():
        print(f"demo bundles: {demo_dir} (cached)", flush=True)
        return demo_dir
    if demo_dir.exists():
        shutil.rmtree(demo_dir)  # an interrupted demo: start again
    print(f"running `headlab demo --out {demo_dir} --no-serve` (a few minutes, once)", flush=True)
    start = time.perf_counter()
    failed = subprocess.run([sys.executable, "-m", "app.cli", "demo", "--out", str(demo_dir), "--no-serve"],
                            cwd=ROOT).returncode
    if failed:
        print(f"warning: {failed} demo step(s) failed; their pages may be missing", flush=True)
    done.write_text(f"headlab demo finished in {time.perf_counter() - start:.0f} s, {failed} failed steps\n")
    return demo_dir


def safe_part(text: str) -> str:
    """`text` with every character a bundle name may not hold replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".")


def copy_name(meta: dict, taken: set[str]) -> str:
    """A bundle name as the library writes it, `{analysis}-{model}-{UTC time}` from `meta`
    (with -2, -3, ... when taken), checked against the naming rule."""
    stamp = re.sub(r"[-:]", "", meta["created"][:19]) + "Z"
    base = name = f"{safe_part(meta['analysis'])}-{safe_part(meta['model'])}-{stamp}"
    number = 1
    while name in taken:
        number += 1
        name = f"{base}-{number}"
    check_name(name, "a copied bundle's name")
    return name


def fill_runs(source: Path, target: Path, n_bundles: int, seed: int = 0) -> list[BundleEntry]:
    """`target` (emptied first) holding the readable bundles of `source` and copies of them
    until there are `n_bundles`: copy k of a bundle is `created` k days and a random number
    of minutes before it, under a name made from that time. Returns the listed bundles.
    Refuses to empty a `target` that this benchmark did not make."""
    originals = [e for e in list_bundles(source) if e.ok]
    if not originals:
        raise SystemExit(f"no readable bundles in {source}")
    mark = target / MADE_HERE
    if target.exists():
        if not mark.exists():
            raise SystemExit(f"{target} exists and was not made by this benchmark (no {MADE_HERE}); "
                             "choose another --runs")
        shutil.rmtree(target)
    target.mkdir(parents=True)
    mark.write_text("a runs folder made by benchmarks/dashboard.py, emptied on its next run\n")
    rng = random.Random(seed)
    taken: set[str] = set()
    for index in range(n_bundles):
        original = originals[index % len(originals)]
        generation = index // len(originals)
        meta = dict(original.bundle.meta)
        minutes = rng.randrange(0, 24 * 60) if generation else 0
        created = original.bundle.created - timedelta(days=generation, minutes=minutes)
        meta["created"] = created.isoformat()
        name = original.path.name if generation == 0 else copy_name(meta, taken)
        taken.add(name)
        shutil.copytree(original.path, target / name)
        (target / name / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    entries = list_bundles(target)
    broken = [e.path.name for e in entries if not e.ok]
    if len(entries) != n_bundles or broken:
        raise SystemExit(f"{target}: {len(entries)} bundles listed, unreadable: {broken}")
    return entries


# ---------------------------------------------------------------------------- server requests


def page_request(url: str, address: str) -> urllib.request.Request:
    """Dash's POST for the page content of `address` (path and query), as the browser sends it."""
    pathname, _, search = address.partition("?")
    body = {"output": "page.children", "outputs": {"id": "page", "property": "children"},
            "inputs": [{"id": "url", "property": "pathname", "value": pathname},
                       {"id": "url", "property": "search", "value": f"?{search}" if search else ""}],
            "changedPropIds": ["url.pathname"], "state": []}
    return urllib.request.Request(f"{url}/_dash-update-component", data=json.dumps(body).encode(),
                                  headers={"Content-Type": "application/json"}, method="POST")


def error_cards(value) -> int:
    """How many error cards a page-content response (parsed JSON) holds."""
    if isinstance(value, dict):
        here = int(value.get("props", {}).get("className") == ERROR_CARD) if "props" in value else 0
        return here + sum(error_cards(v) for v in value.values())
    if isinstance(value, list):
        return sum(error_cards(v) for v in value)
    return 0


@dataclass
class Fetch:
    """One page-content request: seconds, bytes, and what was wrong ("" when nothing)."""

    seconds: float
    size: int
    problem: str


def fetch(url: str, address: str) -> Fetch:
    """The page content of `address`, timed and checked for error cards."""
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(page_request(url, address), timeout=600) as response:
            body = response.read()
        seconds = time.perf_counter() - start
        cards = error_cards(json.loads(body))
        return Fetch(seconds, len(body), f"{cards} error card(s)" if cards else "")
    except (urllib.error.URLError, OSError, ValueError) as error:
        return Fetch(time.perf_counter() - start, 0, f"{type(error).__name__}: {error}")


def concurrent_fetches(url: str, address: str, n: int) -> tuple[list[Fetch], float]:
    """`n` page-content requests sent at once from `n` threads; (their results, wall seconds)."""
    barrier = threading.Barrier(n)

    def one(_):
        barrier.wait()
        return fetch(url, address)

    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    return results, time.perf_counter() - start


# ---------------------------------------------------------------------------- browser loads


# The steps of a page load, each ending at one of MEASURE_SCRIPT's marks.
PHASES = ("boot", "page callback", "lazy scripts", "plotly.js eval", "draw")


def phases(marks: list[float | None]) -> dict[str, float | None]:
    """Seconds of each step of PHASES from the marks (ms): a step lasts from the latest earlier
    mark to its own; a missing mark (no lazy script, no plotly.js) makes its step None."""
    split, previous = {}, 0.0
    for name, mark in zip(PHASES, marks):
        if mark is None:
            split[name] = None
            continue
        split[name] = max(0.0, mark - previous) / 1000
        previous = max(previous, mark)
    return split


@dataclass
class Load:
    """One page load in a tab: seconds from navigation start to ready, what went wrong ("" when
    nothing), and seconds spent in each step of PHASES (None for a step the page lacks)."""

    ready: float | None
    problem: str = ""
    phases: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Tab:
    """A browser tab, when it was opened (time.monotonic()), and the distinct script errors of
    its page (uncaught ones and those logged to the console)."""

    page: Any
    opened: float
    errors: list[str]

    def error(self, text: str) -> None:
        if text[:200] not in self.errors:
            self.errors.append(text[:200])


def open_tab(context, url: str, ready: tuple[str, ...]) -> Tab:
    """A new tab of `context` navigating to `url` (not waited for), timing the `ready` selectors."""
    tab = Tab(context.new_page(), time.monotonic(), [])
    tab.page.on("pageerror", lambda error: tab.error(str(error)))
    tab.page.on("console", lambda message: tab.error(message.text) if message.type == "error" else None)
    tab.page.add_init_script(READY_SCRIPT % json.dumps(list(ready)))
    tab.page.goto(url, wait_until="commit")
    return tab


def measure(tab: Tab) -> Load:
    """Wait for the tab's page to be ready, LOAD_TIMEOUT_S at most from its opening, then read
    its times (seconds); for a page not ready, say how far it got and which errors it met."""
    left = tab.opened + LOAD_TIMEOUT_S - time.monotonic()
    try:
        tab.page.wait_for_function("window.__check?.(), window.__ready !== undefined",
                                   timeout=max(1.0, left) * 1000, polling=100)
    except Exception as error:  # noqa: BLE001 - playwright's timeout: report it as a failed load
        how_far = tab.page.evaluate("window.__why?.() ?? 'the ready script did not run'")
        return Load(None, problem=f"not ready in {LOAD_TIMEOUT_S} s ({type(error).__name__}): {how_far}; "
                                  f"script errors: {tab.errors or 'none'}")
    got = tab.page.evaluate(MEASURE_SCRIPT)
    problems = ([f"{got['errors']} error card(s)"] if got["errors"] else []) + [f"script error: {e}" for e in tab.errors]
    return Load(got["marks"][-1] / 1000, "; ".join(problems), phases(got["marks"]))


def browser_loads(browser, url: str, page: PageType, address: str, repeats: int, shots: Path) -> list[Load]:
    """`repeats` loads of the page, each in a fresh tab of one new context (so the first meets
    an empty browser cache); screenshots of the last when ready: the window (SLUG.png) and the
    whole page (SLUG-full.png)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    loads = []
    try:
        for number in range(repeats):
            tab = open_tab(context, url + address, page.ready)
            loads.append(measure(tab))
            if number == repeats - 1:
                tab.page.screenshot(path=shots / f"{page.slug}.png")
                tab.page.screenshot(path=shots / f"{page.slug}-full.png", full_page=True)
            tab.page.close()
    finally:
        context.close()
    return loads


def concurrent_tabs(browser, url: str, page: PageType, address: str, n: int) -> list[Load]:
    """`n` tabs of one context opened at once on the page, each measured."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        tabs = [open_tab(context, url + address, page.ready) for _ in range(n)]
        return [measure(tab) for tab in tabs]
    finally:
        context.close()


# ---------------------------------------------------------------------------- one page type


@dataclass
class Result:
    """Everything measured on one page type, and the problems seen (error cards, failed loads)."""

    page: PageType
    address: str
    loads: list[Load]
    server: list[Fetch]
    crowd: list[Fetch]
    crowd_wall: float
    tabs: list[Load]
    problems: list[str] = field(default_factory=list)


def quantile(values: list[float], q: float) -> float:
    """The `q` quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_pages(browser, url: str, pages: list[PageType], entries: list[BundleEntry], args) -> list[Result]:
    """Every page type's browser loads (the first cold for the server too) and the server's
    own time first, then every page type's concurrent requests and tabs: the crowds leave the
    machine busy for a while (closing tabs), which would slow the next page's loads."""
    timed = []
    for page in pages:
        address = page.address(entries)
        print(f"--> {page.name}: {address}  (load average {load_average()})", flush=True)
        loads = browser_loads(browser, url, page, address, args.repeats, args.screenshots)
        timed.append((page, address, loads, [fetch(url, address) for _ in range(args.repeats)]))
        print(f"    ready s: {', '.join(seconds(load.ready) for load in loads)}", flush=True)
    results = []
    for page, address, loads, server in timed:
        began = time.perf_counter()
        crowd, wall = concurrent_fetches(url, address, args.concurrent)
        tabs = concurrent_tabs(browser, url, page, address, args.tabs)
        result = Result(page, address, loads, server, crowd, wall, tabs)
        for what, items in (("load", loads), ("server request", server), ("concurrent request", crowd),
                            ("tab", tabs)):
            wrong = sorted({item.problem for item in items if item.problem})
            result.problems += [f"{page.name}: {what}: {problem}" for problem in wrong]
        results.append(result)
        print(f"{row(result)}  ({time.perf_counter() - began:.0f} s)", flush=True)
    return results


def target_met(loads: list[Load]) -> str:
    """"yes" when every load was ready within the target, "warm only" when all but the cold one were."""
    times = [load.ready if load.ready is not None else float("inf") for load in loads]
    if max(times) <= TARGET_S:
        return "yes"
    return "warm only" if max(times[1:], default=0) <= TARGET_S else "**no**"


def seconds(value: float | None, digits: int = 2) -> str:
    """A time for the tables ("—" for none)."""
    return "—" if value is None else f"{value:.{digits}f}"


def row(result: Result) -> dict:
    warm = [load.ready for load in result.loads[1:] if load.ready is not None]
    crowd_ok = [f.seconds for f in result.crowd if not f.problem]
    return {"page": result.page.name,
            "server ms (median)": round(1000 * statistics.median(f.seconds for f in result.server)),
            "payload KB": round(statistics.median(f.size for f in result.server) / 1024),
            "ready s cold": seconds(result.loads[0].ready),
            "ready s warm median": seconds(statistics.median(warm) if warm else None),
            "ready s warm max": seconds(max(warm) if warm else None),
            "≤ 2 s": target_met(result.loads),
            f"{len(result.crowd)} concurrent: errors": sum(bool(f.problem) for f in result.crowd),
            "p50 s": seconds(quantile(crowd_ok, 0.5) if crowd_ok else None, 1),
            "p95 s": seconds(quantile(crowd_ok, 0.95) if crowd_ok else None, 1),
            "wall s": round(result.crowd_wall, 1),
            f"{len(result.tabs)} tabs: errors": sum(bool(t.problem) for t in result.tabs),
            "tabs max ready s": seconds(max((t.ready for t in result.tabs if t.ready is not None), default=None), 1)}


def split_row(result: Result) -> dict:
    """Where a warm load's time goes (medians over the warm loads)."""
    warm = [load for load in result.loads[1:] if load.ready is not None] or result.loads[:1]

    def median(phase: str) -> str:
        values = [load.phases[phase] for load in warm if load.phases.get(phase) is not None]
        return seconds(statistics.median(values) if values else None)

    cold = result.loads[0].phases
    return {"page": result.page.name, "address": f"`{result.address}`",
            **{f"{phase} s": median(phase) for phase in PHASES},
            "cold: " + " / ".join(PHASES): " / ".join(seconds(cold.get(phase)) for phase in PHASES)}


# ---------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", type=int, default=300, help="bundles in the runs folder (default 300)")
    parser.add_argument("--runs-from", type=Path, default=None,
                        help="copy the bundles of this runs folder instead of running the demo")
    parser.add_argument("--demo-dir", type=Path, default=CACHE / "demo",
                        help=f"where the demo's bundles are made once and reused (default {CACHE / 'demo'})")
    parser.add_argument("--runs", type=Path, default=CACHE / "runs",
                        help=f"the runs folder to fill and serve; emptied first (default {CACHE / 'runs'})")
    parser.add_argument("--repeats", type=int, default=5, help="browser loads and server requests per page")
    parser.add_argument("--concurrent", type=int, default=100, help="simultaneous page-content requests per page")
    parser.add_argument("--tabs", type=int, default=10, help="browser tabs opened at once per page")
    parser.add_argument("--pages", nargs="+", default=None, metavar="NAME",
                        help="only these page types (default: all): " + ", ".join(p.name for p in PAGES))
    parser.add_argument("--screenshots", type=Path, default=ROOT / "test-artifacts" / "dashboard-bench",
                        help="folder of the screenshots of each page type, its window and its whole page")
    return parser.parse_args()


def chosen_pages(args) -> list[PageType]:
    """PAGES, cut to --pages."""
    pages = PAGES
    if args.pages:
        unknown = set(args.pages) - {p.name for p in pages}
        if unknown:
            raise SystemExit(f"unknown page types {sorted(unknown)}; known: {[p.name for p in pages]}")
        pages = [p for p in pages if p.name in args.pages]
    return pages


def machine() -> str:
    """CPU model, cores and Python (no torch: the dashboard never loads it)."""
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    return f"{cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    args = parse_args()
    from playwright.sync_api import sync_playwright

    pages = chosen_pages(args)
    args.screenshots.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; load average {load_average()}", flush=True)
    source = args.runs_from or demo_bundles(args.demo_dir)
    start = time.perf_counter()
    entries = fill_runs(source, args.runs, args.bundles)
    print(f"runs folder: {args.runs}, {len(entries)} bundles copied from {source} "
          f"in {time.perf_counter() - start:.1f} s", flush=True)
    with serving(args.runs) as (url, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        results = bench_pages(browser, url, pages, entries, args)
        browser.close()
    print(f"\nload average at the end: {load_average()}; screenshots in {args.screenshots}\n")
    print(markdown_table([row(r) for r in results]))
    print()
    print(markdown_table([split_row(r) for r in results]))
    missed = [r.page.name for r in results if target_met(r.loads) != "yes"]
    print(f"\npages missing the {TARGET_S:g} s target: {', '.join(missed) if missed else 'none'}")
    problems = [p for r in results for p in r.problems]
    for problem in problems:
        print(f"ERROR {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
