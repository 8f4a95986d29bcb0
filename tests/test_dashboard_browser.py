"""The dashboard in a real browser (Debian's chromium driven by Playwright) against the real
server over a runs folder made by the real analyses. What a figure shows is read from the
page's plotly data and compared with the bundle's tables read through interp.results.

Screenshots of each page go to test-artifacts/dashboard/.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import numpy as np

from interp.results import list_bundles, read_bundle

pytest_plugins = ["tests.dashboard_fixtures"]

# The plotted numbers of the first trace of the graph `graph_id`; `field` "z" comes back as
# rows (plotly.js keeps the decoded typed array in `_inputArray`).
PLOTTED = """([graphId, field, trace]) => {
    const gd = document.querySelector('#' + graphId + ' .js-plotly-plot');
    if (!gd || !gd.data || !gd.data[trace]) return null;
    let v = gd.data[trace][field];
    if (v && !Array.isArray(v) && v._inputArray) v = v._inputArray;
    if (!v) return null;
    return Array.from(v, row => (row && typeof row === 'object' && row.length !== undefined) ? Array.from(row) : row);
}"""


def plotted(page, graph_id: str, field: str = "z", trace: int = 0):
    return page.evaluate(PLOTTED, [graph_id, field, trace])


def bundle(runs, analysis: str, model: str | None = None, **parameters):
    """The readable bundle of `analysis` (and `model`, and these parameters)."""
    for entry in list_bundles(runs):
        meta = entry.bundle.meta if entry.ok else None
        if meta and meta["analysis"] == analysis and model in (None, meta["model"]) and all(
                meta["parameters"].get(k) == v for k, v in parameters.items()):
            return entry.bundle
    raise LookupError(f"no {analysis} bundle of {model} with {parameters}")


def grid_values(frame, column: str = "score") -> np.ndarray:
    """A long (layer, head, value) table as the [layer, head] grid the heatmap shows."""
    return frame.pivot(index="layer", columns="head", values=column).to_numpy()


def open_page(page, url: str, ready: str):
    page.goto(url)
    page.wait_for_selector(ready)
    page.wait_for_load_state("networkidle")


def test_run_list_shows_every_bundle(page, dashboard_url, dashboard_runs, screenshots):
    open_page(page, dashboard_url + "/", "#run-list")
    entries = list_bundles(dashboard_runs)
    listed = page.locator("#run-list tbody tr td:first-child a:not(.older-runs)").all_text_contents()
    # "broken-table" is a copy of a heads run (same analysis, model, parameters): folded under it
    assert "broken-table" not in listed
    assert sorted(listed + ["broken-table"]) == sorted(e.path.name for e in entries if e.ok)
    page.screenshot(path=screenshots / "runs.png", full_page=True)
    page.locator("#run-list a.older-runs").click()
    page.wait_for_selector("#run-list tbody tr:nth-child(2)")
    identical = page.locator("#run-list tbody tr td:first-child a").all_text_contents()
    assert len(identical) == 2 and "broken-table" in identical and "same=" in page.url
    page.go_back()
    page.wait_for_selector("#run-list a.older-runs")
    cards = page.locator(".error-card").all_inner_texts()
    for entry in entries:
        if not entry.ok:
            assert any(f"bundle {entry.path.name}" in card for card in cards), entry.path.name
    assert len(cards) == 2  # garbled meta.json, deleted file; the zeroed table only fails when read


# How the first trace of graph `graphId` is coloured, as plotly.js has it.
COLOURING = """graphId => {
    const trace = document.querySelector('#' + graphId + ' .js-plotly-plot').data[0];
    return {zmin: trace.zmin, zmax: trace.zmax, zmid: trace.zmid, title: trace.colorbar.title.text};
}"""


def colouring(page, graph_id: str) -> dict:
    return page.evaluate(COLOURING, graph_id)


def test_grid_dropdown_changes_the_plotted_metric(page, dashboard_url, dashboard_runs, screenshots):
    """The grid follows the dropdown; bounded scores are coloured on a fixed 0-1 range (the
    IOI model's detector scores all lie below 0.1, which an auto-scaled range would paint up
    to its top colour), signed effects diverging around 0; every colour bar says what it is."""
    open_page(page, f"{dashboard_url}/heads?model={quote('zoo/ioi-small')}", "#heads-grid .js-plotly-plot")
    heads = read_bundle(bundle(dashboard_runs, "heads", "zoo/ioi-small").path).table("scores")
    first = np.array(plotted(page, "heads-grid"), dtype=float)
    np.testing.assert_allclose(first, grid_values(heads[heads["kind"] == "previous_token"]), rtol=1e-6)
    assert first.max() < 0.1
    assert colouring(page, "heads-grid") == {"zmin": 0, "zmax": 1, "zmid": None,
                                             "title": "previous-token score<br>(share of attention)"}

    page.click("#grid-metric")
    page.get_by_role("option", name=re.compile("^induction score")).click()
    page.wait_for_function("document.querySelector('#heads-grid .js-plotly-plot').layout.title.text"
                           ".startsWith('induction')")
    np.testing.assert_allclose(np.array(plotted(page, "heads-grid"), dtype=float),
                               grid_values(heads[heads["kind"] == "induction"]), rtol=1e-6)
    assert colouring(page, "heads-grid") == {"zmin": 0, "zmax": 1, "zmid": None,
                                             "title": "induction score<br>(share of attention)"}
    from app.registry import find
    assert page.locator("#grid-metric-help").inner_text() == find("heads").head_metrics[0].how_to_read

    page.click("#grid-metric")
    page.get_by_role("option", name=re.compile("^pruning importance")).click()
    page.wait_for_function("document.querySelector('#heads-grid .js-plotly-plot').layout.title.text"
                           ".startsWith('pruning')")
    importance = read_bundle(bundle(dashboard_runs, "pruning", "zoo/ioi-small").path).table("importance")
    np.testing.assert_allclose(np.array(plotted(page, "heads-grid"), dtype=float),
                               grid_values(importance, "importance"), rtol=1e-6)
    assert colouring(page, "heads-grid")["title"].startswith("pruning importance")

    page.click("#grid-metric")
    page.get_by_role("option", name=re.compile("^patching effect of z")).click()
    page.wait_for_function("document.querySelector('#heads-grid .js-plotly-plot').layout.title.text"
                           ".startsWith('patching')")
    sweep = bundle(dashboard_runs, "patch", "zoo/ioi-small", axes=["layer", "head"])
    assert sweep.meta["parameters"]["direction"] == "denoise" and sweep.meta["parameters"]["normalized"]
    effects = grid_values(read_bundle(sweep.path).table("values"), "value")  # unpatched run: 0 when normalised
    np.testing.assert_allclose(np.array(plotted(page, "heads-grid"), dtype=float), effects, rtol=1e-6)
    limit = np.abs(effects).max()
    shown = colouring(page, "heads-grid")
    assert shown["zmid"] == 0 and np.isclose(shown["zmax"], limit) and np.isclose(shown["zmin"], -limit)
    assert shown["title"] == "patching effect of z (denoise, ioi-test-when-went)<br>(normalised: 1 = clean−corrupted gap)"
    # The damaged copy is named on the page; the grid above still works.
    assert "bundle broken-table" in page.locator(".error-card").first.inner_text()
    page.screenshot(path=screenshots / "heads-grid.png", full_page=True)


def test_the_mode_bar_offers_no_way_to_send_a_chart_anywhere(page, dashboard_url, screenshots):
    open_page(page, f"{dashboard_url}/heads?model={quote('zoo/induction-2l')}", "#heads-grid .js-plotly-plot")
    page.hover("#heads-grid .js-plotly-plot .nsewdrag")
    page.wait_for_selector("#heads-grid .modebar-btn", state="visible")
    buttons = page.locator("#heads-grid .modebar-btn").evaluate_all("bs => bs.map(b => b.getAttribute('data-title'))")
    assert "Download plot" in buttons  # the mode bar is there (its camera saves an SVG) ...
    for title in buttons:  # ... without plotly.js's "Share chart..." (to the cloud) or the logo link
        assert not re.search("share|cloud|chart studio|plotly", title or "", re.IGNORECASE), buttons
    assert page.locator("#heads-grid .modebar a[href]").count() == 0
    context = page.evaluate("(() => { const c = document.querySelector('#heads-grid .js-plotly-plot')._context;"
                            " return [c.showSendToCloud, c.displaylogo, c.plotlyServerURL, c.toImageButtonOptions.format];"
                            " })()")
    assert context == [False, False, "", "svg"]
    page.screenshot(path=screenshots / "heads-grid-modebar.png")


def test_graphs_run_on_plotly_js_cartesian_bundle(page, dashboard_url):
    from app.plotly_js import TRACE_TYPES, VERSION

    open_page(page, f"{dashboard_url}/heads?model={quote('zoo/induction-2l')}", "#heads-grid .js-plotly-plot")
    version, traces = page.evaluate("[Plotly.version, Object.keys(Plotly.PlotSchema.get().traces)]")
    assert version == VERSION and set(traces) == TRACE_TYPES  # the full bundle also has scatter3d, sankey, ...


def test_every_figure_saves_as_png_and_svg(page, dashboard_url, tmp_path):
    open_page(page, f"{dashboard_url}/heads?model={quote('zoo/induction-2l')}", "#heads-grid .js-plotly-plot")
    title = page.evaluate("document.querySelector('#heads-grid .js-plotly-plot').layout.title.text")
    box = page.locator(".graph-box", has=page.locator("#heads-grid"))
    for format, magic in (("png", b"\x89PNG\r\n\x1a\n"), ("svg", b"<svg")):
        with page.expect_download() as download:
            box.locator(f"button[data-export={format}]").click()
        saved = tmp_path / f"figure.{format}"
        download.value.save_as(saved)
        assert download.value.suggested_filename.endswith(f".{format}")
        assert download.value.suggested_filename.startswith(title.split()[0])
        assert saved.read_bytes().startswith(magic), format
    assert "induction" in (tmp_path / "figure.svg").read_text()  # the figure's own text is in the vector file


def test_a_missing_bundle_answers_404_with_a_readable_page(page, dashboard_url, screenshots):
    response = page.goto(f"{dashboard_url}/bundle/no-such-bundle")
    assert response.status == 404
    page.wait_for_selector("h2")
    assert page.locator("h2").first.inner_text() == "Bundle not found"
    assert "no bundle named 'no-such-bundle'" in page.locator(".notice").first.inner_text()
    page.screenshot(path=screenshots / "not-found.png", full_page=True)


def test_clicking_a_grid_cell_opens_that_heads_page(page, dashboard_url, dashboard_runs, screenshots):
    open_page(page, f"{dashboard_url}/heads?model={quote('zoo/induction-2l')}", "#heads-grid .js-plotly-plot")
    layer, head = 1, 2
    x, y = page.evaluate("""([layer, head]) => {
        const gd = document.querySelector('#heads-grid .js-plotly-plot');
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
        return [box.left + xa._offset + xa.l2p(head), box.top + ya._offset + ya.l2p(layer)];
    }""", [layer, head])
    page.mouse.click(x, y)
    page.wait_for_url(re.compile(r"/head\?model=zoo%2Finduction-2l&layer=1&head=2$"))
    page.wait_for_selector("#head-numbers")
    assert page.locator("h2").first.inner_text() == "Head L1H2 of zoo/induction-2l"
    scores = read_bundle(bundle(dashboard_runs, "heads", "zoo/induction-2l").path).table("scores")
    induction = scores[(scores["kind"] == "induction") & (scores["layer"] == 1) & (scores["head"] == 2)]
    row = page.locator("#head-numbers tr", has_text="induction score").inner_text()
    assert f"{induction['score'].iloc[0]:.4g}" in row
    # Stored patterns of this head, from the patterns bundle, and its QK/OV norms.
    assert page.locator("text=Attention patterns on stored prompts").count() == 1
    qk_ov = page.locator("section:has(h3:text-is('QK / OV summaries'))")
    assert qk_ov.locator("a", has_text="patterns-zoo_induction-2l").count() == 1
    stored = read_bundle(bundle(dashboard_runs, "head-patterns", "zoo/induction-2l").path).table("qk_ov")
    here = stored[(stored["layer"] == 1) & (stored["head"] == 2)]
    assert f"{here['ov_copying'].iloc[0]:.4g}" in qk_ov.locator("table.data").inner_text()
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2")
    page.screenshot(path=screenshots / "head-induction-L1H2.png", full_page=True)


def test_scatter_of_two_metrics_follows_the_pickers_and_opens_a_head(page, dashboard_url, dashboard_runs):
    open_page(page, f"{dashboard_url}/heads?model={quote('zoo/ioi-small')}", "#metric-scatter .js-plotly-plot")
    page.click("#scatter-x")
    page.get_by_role("option", name=re.compile("^previous-token score")).click()
    page.click("#scatter-y")
    page.get_by_role("option", name=re.compile("^pruning importance")).click()
    page.wait_for_function("document.querySelector('#metric-scatter .js-plotly-plot').layout.yaxis.title.text"
                           ".startsWith('pruning importance')")
    scores = read_bundle(bundle(dashboard_runs, "heads", "zoo/ioi-small").path).table("scores")
    previous = scores[scores["kind"] == "previous_token"].set_index(["layer", "head"])["score"]
    importance = read_bundle(bundle(dashboard_runs, "pruning", "zoo/ioi-small").path).table("importance")
    importance = importance.set_index(["layer", "head"])["importance"]
    labels = plotted(page, "metric-scatter", "text")
    heads = [tuple(int(v) for v in re.fullmatch(r"L(\d+)H(\d+)", t).groups()) for t in labels]
    assert len(heads) == len(previous) == 32
    np.testing.assert_allclose(plotted(page, "metric-scatter", "x"), [previous[h] for h in heads], rtol=1e-6)
    np.testing.assert_allclose(plotted(page, "metric-scatter", "y"), [importance[h] for h in heads], rtol=1e-6)
    # a click on the first point opens its head
    x, y = page.evaluate("""() => {
        const gd = document.querySelector('#metric-scatter .js-plotly-plot');
        gd.scrollIntoView();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
        const point = gd.calcdata[0][0];  // the first point, as plotly placed it
        return [box.left + xa._offset + xa.c2p(point.x), box.top + ya._offset + ya.c2p(point.y)];
    }""")
    page.mouse.click(x, y)
    page.wait_for_url(re.compile(rf"/head\?model=zoo%2Fioi-small&layer={heads[0][0]}&head={heads[0][1]}$"))


def test_clicking_a_cell_of_a_bundle_pages_grid_opens_that_heads_page(page, dashboard_url, dashboard_runs):
    heads = bundle(dashboard_runs, "heads", "zoo/induction-2l")
    open_page(page, f"{dashboard_url}/bundle/{heads.path.name}", "section:has(h3:text-is('Per head')) .js-plotly-plot")
    layer, head = 1, 3
    x, y = page.evaluate("""([title, layer, head]) => {
        const section = [...document.querySelectorAll('section')].find(s => s.querySelector('h3').textContent === title);
        const gd = section.querySelector('.js-plotly-plot');
        gd.scrollIntoView();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
        return [box.left + xa._offset + xa.l2p(head), box.top + ya._offset + ya.l2p(layer)];
    }""", ["Per head", layer, head])
    page.mouse.click(x, y)
    page.wait_for_url(re.compile(r"/head\?model=zoo%2Finduction-2l&layer=1&head=3$"))
    page.wait_for_selector("#head-numbers")
    assert page.locator("h2").first.inner_text() == "Head L1H3 of zoo/induction-2l"


def test_head_page_shows_maps_sinks_and_patching(page, dashboard_url, dashboard_runs, screenshots):
    open_page(page, f"{dashboard_url}/head?model={quote('zoo/ioi-small')}&layer=0&head=2", "#head-numbers")
    numbers = page.locator("#head-numbers").inner_text()
    for label in ("previous-token score", "sink rate at key 0", "pruning importance", "MAPS top relation score",
                  "patching effect of z"):
        assert label in numbers, label
    page.click("#head-numbers-help summary")
    meanings = page.locator("#head-numbers-help li").all_inner_texts()
    from app.registry import find
    assert any(m.startswith("pruning importance") and m.endswith(find("pruning").head_metrics[0].how_to_read)
               for m in meanings), meanings
    salient = read_bundle(bundle(dashboard_runs, "maps", "zoo/ioi-small").path).table("salient_L0H2")
    shown = page.locator("section:has(h3:text-is('MAPS: relations and salient operations')) table.data").nth(1)
    assert shown.locator("tbody tr").count() == len(salient)
    assert salient["token"].iloc[0] in shown.locator("tbody tr").first.inner_text()
    for title in ("Attention received per key position (sinks)", "Patching effect per position"):
        assert page.locator(f"h3:text-is('{title}')").count() == 1
    page.screenshot(path=screenshots / "head-ioi-L0H2.png", full_page=True)


def test_rollout_page_follows_prompt_and_layer(page, dashboard_url, dashboard_runs, screenshots):
    rollout = bundle(dashboard_runs, "rollout", "zoo/induction-2l")
    maps = read_bundle(rollout.path).table("maps")
    open_page(page, f"{dashboard_url}/bundle/{rollout.path.name}", "#figure-map .js-plotly-plot")

    def expected(prompt, layer):
        rows = maps[(maps["prompt"] == prompt) & (maps["layer"] == layer)]
        return rows.pivot(index="query", columns="key", values="value").to_numpy()

    np.testing.assert_allclose(plotted(page, "figure-map"), expected(0, 1), rtol=1e-6)
    page.click("#control-prompt")
    page.get_by_role("option", name=re.compile("^1: ")).click()
    page.wait_for_function("document.querySelector('#figure-map .js-plotly-plot').layout.title.text"
                           ".endsWith('prompt 1')")
    np.testing.assert_allclose(plotted(page, "figure-map"), expected(1, 1), rtol=1e-6)
    thumb = page.locator("#control-layer [role=slider]")
    thumb.press("Home")  # the slider's thumb, to its first layer
    page.wait_for_function("document.querySelector('#figure-map .js-plotly-plot').layout.title.text"
                           ".includes('after layer 0')")
    np.testing.assert_allclose(plotted(page, "figure-map"), expected(1, 0), rtol=1e-6)
    thumb.press("ArrowRight")  # one whole layer on
    page.wait_for_function("document.querySelector('#figure-map .js-plotly-plot').layout.title.text"
                           ".includes('after layer 1')")
    assert thumb.get_attribute("aria-valuenow") == "1"
    np.testing.assert_allclose(plotted(page, "figure-map"), expected(1, 1), rtol=1e-6)
    assert colouring(page, "figure-map") == {"zmin": 0, "zmax": 1, "zmid": None,
                                               "title": "attribution<br>(share of the output)"}
    thumb.press("Home")
    page.wait_for_function("document.querySelector('#figure-map .js-plotly-plot').layout.title.text"
                           ".includes('after layer 0')")
    assert plotted(page, "figure-map", "x")[0] == "0:<bos>"
    page.screenshot(path=screenshots / "rollout.png", full_page=True)


def test_pruning_page_plots_the_curves(page, dashboard_url, dashboard_runs, screenshots):
    pruning = bundle(dashboard_runs, "pruning", "zoo/ioi-small")
    curve = read_bundle(pruning.path).table("curve")
    open_page(page, f"{dashboard_url}/bundle/{pruning.path.name}", "#figure-curve .js-plotly-plot")
    names = page.evaluate("[...document.querySelector('#figure-curve .js-plotly-plot').data].map(t => t.name)")
    assert names == list(dict.fromkeys(curve["order"]))
    for trace, order in enumerate(names):
        rows = curve[curve["order"] == order].sort_values("fraction")
        np.testing.assert_allclose(plotted(page, "figure-curve", "y", trace), rows["metric"], rtol=1e-6)
        np.testing.assert_allclose(plotted(page, "figure-curve", "x", trace), rows["fraction"], rtol=1e-6)
    assert "logit_diff" in page.locator("#figure-curve").inner_text()
    page.screenshot(path=screenshots / "pruning.png", full_page=True)


def test_patching_pages_draw_layer_by_head_and_layer_by_position(page, dashboard_url, dashboard_runs, screenshots):
    for axes, shot in ((["layer", "head"], "patching-heads.png"), (["layer", "pos"], "patching-positions.png")):
        sweep = bundle(dashboard_runs, "patch", "zoo/ioi-small", axes=axes)
        assert sweep.meta["parameters"]["direction"] == "denoise" and sweep.meta["parameters"]["normalized"]
        values = read_bundle(sweep.path).table("values")  # normalised denoising: the effect is the value
        open_page(page, f"{dashboard_url}/bundle/{sweep.path.name}", "#figure-heatmap .js-plotly-plot")
        effects = values.pivot(index="layer", columns=axes[1], values="value").to_numpy()
        np.testing.assert_allclose(np.array(plotted(page, "figure-heatmap"), dtype=float), effects, rtol=1e-6)
        shown = colouring(page, "figure-heatmap")
        assert shown["zmid"] == 0 and np.isclose(shown["zmax"], np.abs(effects).max()) and shown["zmin"] == -shown["zmax"]
        assert shown["title"] == "patching effect<br>(normalised: 1 = clean−corrupted gap)"
        labels = plotted(page, "figure-heatmap", "x")
        assert labels[0] == ("H0" if axes[1] == "head" else "0:<bos>")
        page.screenshot(path=screenshots / shot, full_page=True)


def test_maps_page_draws_heads_by_relations_on_a_fixed_scale(page, dashboard_url, dashboard_runs, screenshots):
    maps = bundle(dashboard_runs, "maps", "zoo/ioi-small")
    scores = read_bundle(maps.path).table("scores")
    open_page(page, f"{dashboard_url}/bundle/{maps.path.name}", "#figure-scores .js-plotly-plot")
    grid = scores.pivot(index=["layer", "head"], columns="relation", values="score")
    np.testing.assert_allclose(np.array(plotted(page, "figure-scores"), dtype=float), grid.to_numpy(), rtol=1e-6)
    assert plotted(page, "figure-scores", "y")[:2] == [f"L{l}H{h}" for l, h in grid.index[:2]]
    # On the fixed 0-1 scale: the best score (0.21 here) is not painted as a full 1.
    assert 0 < scores["score"].max() < 0.9
    assert colouring(page, "figure-scores") == {"zmin": 0, "zmax": 1, "zmid": None,
                                                "title": "relation score<br>(share of pairs)"}
    # The largest scores link to their heads.
    best = scores.loc[scores["score"].idxmax()]
    assert page.locator("a", has_text=f"L{best['layer']}H{best['head']} ").count() >= 1
    page.screenshot(path=screenshots / "maps.png", full_page=True)


def test_sae_feature_page_follows_the_feature_picker(page, dashboard_url, dashboard_runs, screenshots):
    sae = bundle(dashboard_runs, "sae-features", "zoo/ioi-small")
    tables = read_bundle(sae.path)
    features, contexts = tables.table("features"), tables.table("top_contexts")
    open_page(page, f"{dashboard_url}/bundle/{sae.path.name}", "#figure-feature .js-plotly-plot")

    def expected(feature):
        rows = contexts[contexts["feature"] == feature].sort_values("rank")
        width = max(len(c) for c in rows["context_tokens"])
        z = np.full((len(rows), width), np.nan)
        for i, values in enumerate(rows["context_activations"]):
            z[i, :len(values)] = values
        return z

    alive = features[features["density"] > 0].sort_values("density", ascending=False, kind="stable")
    first, second = int(alive.iloc[0]["feature"]), int(alive.iloc[1]["feature"])
    np.testing.assert_allclose(np.array(plotted(page, "figure-feature"), dtype=float), expected(first), rtol=1e-6)
    page.click("#control-feature")
    page.get_by_role("option", name=re.compile(f"^{second}: ")).click()
    page.wait_for_function("document.querySelector('#figure-feature .js-plotly-plot').layout.title.text"
                           f".startsWith('feature {second} ')")
    np.testing.assert_allclose(np.array(plotted(page, "figure-feature"), dtype=float), expected(second), rtol=1e-6)
    # An attention SAE: each head's summed decoder share is a per-head metric with links to the heads.
    assert page.locator("text=SAE features written").count() >= 1
    page.screenshot(path=screenshots / "sae-feature.png", full_page=True)


def test_circuit_page_draws_its_faithfulness_curve(page, dashboard_url, dashboard_runs, screenshots):
    circuit = bundle(dashboard_runs, "circuit", "zoo/ioi-small")
    curve = read_bundle(circuit.path).table("faithfulness")
    open_page(page, f"{dashboard_url}/bundle/{circuit.path.name}", "#figure-faithfulness .js-plotly-plot")
    names = page.evaluate("[...document.querySelector('#figure-faithfulness .js-plotly-plot').data].map(t => t.name)")
    for ranking, rows in curve.groupby("ranking"):
        trace = names.index(f"{ranking} ranking")
        np.testing.assert_allclose(np.array(plotted(page, "figure-faithfulness", "y", trace), dtype=float),
                                   rows["faithfulness"], rtol=1e-6)
    page.wait_for_selector("#figure-circuit .js-plotly-plot")
    page.screenshot(path=screenshots / "circuit.png", full_page=True)


def shown_column(page, table: str, column: str) -> list[str]:
    return page.locator(f"#table-{table} td[data-dash-column='{column}']").all_inner_texts()


def test_bundle_tables_page_filter_and_sort_over_every_row(page, dashboard_url, dashboard_runs):
    """A bundle table shows one page; its filter row and sort arrows act on the whole table
    (checked against the same selection in pandas), and the line under it says which rows."""
    patterns = bundle(dashboard_runs, "head-patterns")
    rows = read_bundle(patterns.path).table("patterns")
    open_page(page, f"{dashboard_url}/bundle/{patterns.path.name}", "#table-patterns-fold summary")
    summary = page.locator("#table-patterns-fold summary")
    assert summary.inner_text().startswith(f"{len(rows):,} rows × {rows.shape[1]} columns")
    assert page.locator(".dash-table-container").count() == 0  # folded tables are not drawn until opened
    summary.click()
    page.wait_for_selector("#table-patterns td")
    status = page.locator("#table-patterns p.muted")
    assert status.inner_text() == f"rows 1–15 of {len(rows):,}"
    assert shown_column(page, "patterns", "key_token") == rows["key_token"].head(15).tolist()

    page.locator("#table-patterns th.dash-filter[data-dash-column='value'] input[type=text]").fill("> 0.5")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#table-patterns p.muted').innerText.includes('matching')")
    strong = rows[rows["value"] > 0.5]
    assert status.inner_text() == f"rows 1–15 of {len(strong):,} matching the filter ({len(rows):,} in all)"
    np.testing.assert_allclose([float(v) for v in shown_column(page, "patterns", "value")],
                               strong["value"].head(15), rtol=1e-3)

    page.locator("#table-patterns .column-header--sort").nth(list(rows.columns).index("value")).click()
    page.locator("#table-patterns .column-header--sort").nth(list(rows.columns).index("value")).click()
    page.wait_for_function("document.querySelector('#table-patterns td[data-dash-column=value]').innerText"
                           f" === '{strong['value'].max():.4g}'")
    page.locator("#table-patterns button.next-page").click()
    page.wait_for_function("document.querySelector('#table-patterns p.muted').innerText.startsWith('rows 16–')")
    second = strong.sort_values("value", ascending=False, kind="stable").iloc[15:30]
    np.testing.assert_allclose([float(v) for v in shown_column(page, "patterns", "value")], second["value"], rtol=1e-3)

    # A word typed in a text column's filter keeps the rows whose text contains it (and starts at page 1).
    page.locator("#table-patterns th.dash-filter[data-dash-column='key_token'] input[type=text]").fill("t5")
    page.keyboard.press("Enter")
    both = strong[strong["key_token"].str.contains("t5", regex=False)]
    page.wait_for_function("document.querySelector('#table-patterns p.muted').innerText.startsWith("
                           f"'rows 1–{min(15, len(both))} of {len(both)} matching')")
    assert 0 < len(both) < len(strong)
    assert all("t5" in t for t in shown_column(page, "patterns", "key_token"))


def click_cell(page, graph: str, column, row) -> None:
    """Click the heatmap cell at category labels (`column`, `row`) of the plot in `graph`."""
    x, y = page.evaluate("""([graph, column, row]) => {
        const gd = document.querySelector(graph + ' .js-plotly-plot');
        gd.scrollIntoView();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
        return [box.left + xa._offset + xa.l2p(xa.d2l(column)), box.top + ya._offset + ya.l2p(ya.d2l(row))];
    }""", [graph, column, row])
    page.mouse.click(x, y)


def test_cells_that_stand_for_heads_open_them_and_others_do_not(page, dashboard_url, dashboard_runs):
    heads = bundle(dashboard_runs, "patch", "zoo/ioi-small", axes=["layer", "head"])
    open_page(page, f"{dashboard_url}/bundle/{heads.path.name}", "#figure-heatmap .js-plotly-plot")
    row = plotted(page, "figure-heatmap", "y")[2]
    click_cell(page, "#figure-heatmap", "H5", row)
    page.wait_for_url(re.compile(r"/head\?model=zoo%2Fioi-small&layer=2&head=5$"))
    positions = bundle(dashboard_runs, "patch", "zoo/ioi-small", axes=["layer", "pos"])
    open_page(page, f"{dashboard_url}/bundle/{positions.path.name}", "#figure-heatmap .js-plotly-plot")
    before = page.url
    click_cell(page, "#figure-heatmap", plotted(page, "figure-heatmap", "x")[1], plotted(page, "figure-heatmap", "y")[1])
    page.wait_for_timeout(1500)  # a layer x position cell is no head: the page stays
    assert page.url == before


def test_a_bundle_pages_controls_live_in_its_url(page, dashboard_url, dashboard_runs):
    """A link with control values opens that view; changing a control rewrites the URL (the
    page is not drawn again); a value the bundle lacks is said, not silently replaced."""
    patterns = bundle(dashboard_runs, "head-patterns")
    rows = read_bundle(patterns.path).table("patterns")

    def expected(prompt, layer, head):
        chosen = rows[(rows["prompt"] == prompt) & (rows["layer"] == layer) & (rows["head"] == head)]
        return chosen.pivot(index="query", columns="key", values="value").to_numpy()

    url = f"{dashboard_url}/bundle/{patterns.path.name}"
    open_page(page, f"{url}?prompt=1&layer=1&head=2", "#figure-pattern .js-plotly-plot")
    np.testing.assert_allclose(plotted(page, "figure-pattern"), expected(1, 1, 2), rtol=1e-6)
    page.evaluate("window.marker = 'same page'")
    page.click("#control-head")
    page.get_by_role("option", name="3", exact=True).click()
    page.wait_for_function("new URLSearchParams(window.location.search).get('head') === '3'")
    page.wait_for_function("document.querySelector('#figure-pattern .js-plotly-plot').layout.title.text"
                           ".endsWith('L1H3, prompt 1')")
    assert page.evaluate("window.marker") == "same page"
    np.testing.assert_allclose(plotted(page, "figure-pattern"), expected(1, 1, 3), rtol=1e-6)
    shared = page.url
    page.goto(shared)  # the address bar, opened again: the same view
    page.wait_for_selector("#figure-pattern .js-plotly-plot")
    np.testing.assert_allclose(plotted(page, "figure-pattern"), expected(1, 1, 3), rtol=1e-6)

    open_page(page, f"{url}?prompt=7&head=x", "#figure-pattern .js-plotly-plot")
    said = page.locator("#figure-pattern .notice").inner_text()
    assert "prompt '7'" in said and "head 'x'" in said and "shown at the defaults" in said
    np.testing.assert_allclose(plotted(page, "figure-pattern"), expected(0, 0, 0), rtol=1e-6)


def test_the_heads_grids_pickers_live_in_its_url(page, dashboard_url, dashboard_runs):
    heads = read_bundle(bundle(dashboard_runs, "heads", "zoo/ioi-small").path).table("scores")
    base = f"{dashboard_url}/heads?model={quote('zoo/ioi-small')}"
    open_page(page, base, "#heads-grid .js-plotly-plot")
    page.click("#grid-metric")
    page.get_by_role("option", name=re.compile("^induction score")).click()
    page.wait_for_function("(new URLSearchParams(window.location.search).get('metric') || '').endsWith('induction score')")
    shared = page.url
    open_page(page, shared, "#heads-grid .js-plotly-plot")
    assert page.evaluate("document.querySelector('#heads-grid .js-plotly-plot').layout.title.text").startswith("induction")
    np.testing.assert_allclose(np.array(plotted(page, "heads-grid"), dtype=float),
                               grid_values(heads[heads["kind"] == "induction"]), rtol=1e-6)
    open_page(page, f"{base}&metric=nope", "#heads-grid .js-plotly-plot")
    assert "metric='nope'" in page.locator(".notice").first.inner_text()


def test_broken_bundles_show_an_error_card_and_the_rest_works(page, dashboard_url, screenshots):
    for name, problem in (("broken-meta", "meta.json"), ("broken-missing", "is missing"),
                          ("broken-table", "cannot be read")):
        open_page(page, f"{dashboard_url}/bundle/{name}", ".error-card")
        card = page.locator(".error-card").first.inner_text()
        assert f"bundle {name}" in card and problem in card, card
        if name == "broken-meta":
            page.screenshot(path=screenshots / "broken-bundle.png", full_page=True)
    # The same tab goes on to a working page.
    page.click("header >> text=runs")
    page.wait_for_selector("#run-list")
    assert page.locator("#run-list tbody tr").count() >= 10


def test_every_bundle_page_renders(page, dashboard_url, dashboard_runs, screenshots):
    """Each readable bundle's page draws its figures without an error card (the zeroed copy
    excepted); the kinds not checked above are saved as screenshots too."""
    shot = {"sinks", "flow", "heads", "head-patterns", "sae-features", "circuit", "legacy-scan"}
    for entry in list_bundles(dashboard_runs):
        if not entry.ok:
            continue
        open_page(page, f"{dashboard_url}/bundle/{entry.path.name}", "#bundle-meta")
        assert page.locator("#bundle-meta").inner_text().startswith("bundle\t" + entry.path.name)
        cards = page.locator(".error-card").count()
        assert cards == (1 if entry.path.name == "broken-table" else 0), entry.path.name
        analysis = entry.bundle.meta["analysis"]
        if analysis in shot and entry.path.name != "broken-table":
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length > 0 || "
                                   "document.querySelectorAll('details.table-fold').length > 0")
            page.screenshot(path=screenshots / f"bundle-{analysis}.png", full_page=True)
            shot.discard(analysis)
    assert not shot, f"no bundle page of {shot}"
