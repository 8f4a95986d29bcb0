"""The dashboard over several bundles of one analysis, in a real browser: a head page draws
each head view for the newest bundle and folds the older ones; two bundles of one analysis
are compared (difference heatmaps, overlaid curves, per-head difference grids); bundle pages
link to their related bundles. What is drawn is compared with the bundles' own tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
import re
from urllib.parse import quote

import numpy as np
import pytest

from interp.results import read_bundle
pytest_plugins = ["tests.dashboard_fixtures"]

OLD = "patterns-induction-old"
HEADS = ("heads-a", "heads-b")
PRUNING = ("pruning-a", "pruning-b")


@pytest.fixture(scope="module")
def many_runs(dashboard_runs, tmp_path_factory) -> Path:
    """The fixture's induction patterns bundle copied with an older time, and a newer
    head-patterns bundle of the same model on other prompts."""
    from analyses.head_patterns import head_patterns
    from analyses.heads import detect_heads
    from analyses.pruning import pruning_curve
    from circuits.tasks import ioi_task
    from interp import load_model
    from tests.test_dashboard_browser import bundle

    runs = tmp_path_factory.mktemp("many") / "runs"
    runs.mkdir()
    shutil.copytree(bundle(dashboard_runs, "head-patterns", "zoo/induction-2l").path, runs / OLD)
    meta_file = runs / OLD / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["created"] = "2020-01-01T00:00:00+00:00"
    meta_file.write_text(json.dumps(meta))
    model = load_model("zoo/induction-2l", device="cpu")
    head_patterns(model, ["t7 t8 t9 t7 t8 t9"]).save(runs, name="patterns-induction-new")
    for name, seed in zip(HEADS, (1, 2)):
        detect_heads(model, n_sequences=4, seed=seed, progress=False).save(runs, name=name)
    ioi = load_model("zoo/ioi-small", device="cpu")
    task = ioi_task(ioi, n=8, template="when-went")
    for name, seed in zip(PRUNING, (1, 2)):
        pruning_curve(ioi, task, step=0.5, orders=("once", "random"), n_random=2, seed=seed).save(runs, name=name)
    return runs


@pytest.fixture(scope="module")
def many_url(many_runs):
    from tests.dashboard_fixtures import serving

    with serving(many_runs) as (url, _):
        yield url


def test_head_page_folds_older_bundles_and_draws_one_when_unfolded(page, many_url, many_runs):
    from tests.test_dashboard_browser import open_page

    layer, head = 1, 2
    open_page(page, f"{many_url}/head?model={quote('zoo/induction-2l')}&layer={layer}&head={head}", "#head-numbers")
    patterns = page.locator("section:has(h3:text-is('Attention patterns on stored prompts'))")
    assert patterns.locator("h4").first.inner_text() == "patterns-induction-new"
    fold = patterns.locator("details")
    assert fold.count() == 1 and fold.locator("summary").inner_text().startswith(OLD)
    assert fold.locator(".js-plotly-plot").count() == 0  # not drawn until asked for

    fold.locator("summary").click()
    fold.locator(".js-plotly-plot").first.wait_for()
    z = page.evaluate("""() => {
        const gd = document.querySelector('details .js-plotly-plot');
        let v = gd.data[0].z; if (v && !Array.isArray(v) && v._inputArray) v = v._inputArray;
        return Array.from(v, row => Array.from(row));
    }""")
    rows = read_bundle(many_runs / OLD).table("patterns")
    rows = rows[(rows["prompt"] == 0) & (rows["layer"] == layer) & (rows["head"] == head)]
    expected = rows.pivot(index="query", columns="key", values="value").to_numpy()
    np.testing.assert_allclose(np.array(z, dtype=float), expected, rtol=1e-6)
    assert fold.locator("h4").inner_text() == OLD


def figure_data(page, selector: str) -> list[dict]:
    """The traces of the plotly graph at `selector`: name, type and z/x/y as plain lists."""
    return page.evaluate("""(selector) => {
        const plain = v => (v && !Array.isArray(v) && v._inputArray) ? plain(v._inputArray)
                         : (v && typeof v === 'object' && v.length !== undefined) ? Array.from(v, plain) : v;
        const gd = document.querySelector(selector);
        return gd.data.map(t => ({name: t.name, type: t.type, z: plain(t.z), x: plain(t.x), y: plain(t.y),
                                   dash: t.line ? t.line.dash : null}));
    }""", selector)


def test_two_detector_runs_compare_as_differences_per_kind_and_per_head(page, many_url, many_runs):
    from tests.test_dashboard_browser import open_page

    open_page(page, f"{many_url}/compare?a={HEADS[0]}&b={HEADS[1]}", "#compare-scores .js-plotly-plot")
    a, b = (read_bundle(many_runs / name).table("scores") for name in HEADS)
    traces = figure_data(page, "#compare-scores .js-plotly-plot")
    assert [t["name"] for t in traces] == list(dict.fromkeys(a["kind"]))
    for trace in traces:
        grid = {}
        for frame, sign in ((b, 1), (a, -1)):
            rows = frame[frame["kind"] == trace["name"]]
            for layer, head, score in zip(rows["layer"], rows["head"], rows["score"]):
                grid[layer, head] = grid.get((layer, head), 0.0) + sign * score
        expected = [[grid[layer, head] for head in range(len(trace["x"]))] for layer in range(len(trace["y"]))]
        np.testing.assert_allclose(np.array(trace["z"], dtype=float), expected, rtol=1e-6, atol=1e-9)
    assert np.abs(np.array(traces[0]["z"], dtype=float)).max() > 0  # two seeds: the runs differ

    # The per-head grid of induction scores: B − A, and a click on a cell opens that head.
    difference = figure_data(page, "#per-head-induction-score .js-plotly-plot")[0]
    ia, ib = (f[f["kind"] == "induction"].set_index(["layer", "head"])["score"] for f in (a, b))
    np.testing.assert_allclose(np.array(difference["z"], dtype=float)[1, 2], ib[1, 2] - ia[1, 2], rtol=1e-6)
    x, y = page.evaluate("""() => {
        const gd = document.querySelector('#per-head-induction-score .js-plotly-plot');
        gd.scrollIntoView();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
        return [box.left + xa._offset + xa.l2p(2), box.top + ya._offset + ya.l2p(1)];
    }""")
    page.mouse.click(x, y)
    page.wait_for_url(re.compile(r"/head\?model=zoo%2Finduction-2l&layer=1&head=2$"))


def test_two_pruning_runs_overlay_their_curves(page, many_url, many_runs):
    from tests.test_dashboard_browser import open_page

    open_page(page, f"{many_url}/compare?a={PRUNING[0]}&b={PRUNING[1]}", "#compare-curve .js-plotly-plot")
    traces = figure_data(page, "#compare-curve .js-plotly-plot")
    for label, name, dash in (("A", PRUNING[0], "solid"), ("B", PRUNING[1], "dash")):
        curve = read_bundle(many_runs / name).table("curve")
        for order, rows in curve.groupby("order", sort=False):
            trace = next(t for t in traces if t["name"] == f"{label}: {order}")
            assert trace["dash"] == dash
            np.testing.assert_allclose(trace["y"], rows.sort_values("fraction")["metric"], rtol=1e-6)
    assert len(traces) == 2 * curve["order"].nunique()


def test_comparisons_that_cannot_be_drawn_say_why(page, many_url):
    from tests.test_dashboard_browser import open_page

    open_page(page, f"{many_url}/compare?a={OLD}&b=patterns-induction-new", "#compare-pattern")
    assert "different axes" in page.locator("#compare-pattern .notice").inner_text()
    page.wait_for_function("document.querySelectorAll('#compare-pattern .js-plotly-plot').length === 2")  # side by side
    open_page(page, f"{many_url}/compare?a={OLD}&b={HEADS[0]}", ".notice")
    assert "two bundles of one registered analysis" in page.locator(".notice").inner_text()
    open_page(page, f"{many_url}/compare?a={OLD}&b=nope", ".notice")
    assert "b='nope'" in page.locator(".notice").inner_text()


def test_a_bundle_page_picks_a_comparison_and_links_related_bundles(page, many_url):
    from tests.test_dashboard_browser import open_page

    open_page(page, f"{many_url}/bundle/{HEADS[0]}", "#compare-with")
    page.click("#compare-with")
    page.get_by_role("option", name=re.compile(f"^{HEADS[1]} ")).click()
    page.wait_for_url(re.compile(rf"/compare\?a={HEADS[0]}&b={HEADS[1]}$"))
    page.wait_for_selector("#compare-scores .js-plotly-plot")
    # heads names head-patterns as related: both patterns bundles of the model are linked, newest first.
    open_page(page, f"{many_url}/bundle/{HEADS[0]}", "#related")
    related = page.locator("#related li", has_text="head-patterns:").locator("a").all_inner_texts()
    assert related == ["patterns-induction-new", OLD]
