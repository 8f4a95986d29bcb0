"""The dashboard over many bundles of one model, in a real browser: a head page draws each
head view for the newest bundle and folds the older ones, drawing one when it is unfolded.
The drawn numbers are compared with the folded bundle's own table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from interp.results import read_bundle
pytest_plugins = ["tests.dashboard_fixtures"]

OLD = "patterns-induction-old"


@pytest.fixture(scope="module")
def many_runs(dashboard_runs, tmp_path_factory) -> Path:
    """The fixture's induction patterns bundle copied with an older time, and a newer
    head-patterns bundle of the same model on other prompts."""
    from analyses.head_patterns import head_patterns
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
