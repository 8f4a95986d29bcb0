"""Bundle pages without a browser: their tables are paged, sorted and filtered on the server
(`app.views.tables`), each page checked against the same selection written in pandas, and a
filter the table cannot read is refused with a message, never shown as an unfiltered page;
the registry's related-analysis links name registered analyses, and every per-head metric
says how to read it; a click on a figure point opens a head only when it stands for one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.views.tables import rows_of, table_page


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 103
    return pd.DataFrame({"layer": rng.integers(0, 4, n), "head": rng.integers(0, 8, n),
                         "score": rng.normal(size=n), "token": rng.choice([" Mary", " John", " the", "."], n),
                         "top_tokens": [["a", f"t{i}"] for i in range(n)]})


def test_pages_cover_every_row_once_in_order(frame):
    first = table_page(frame, 0, 10, [], "")
    assert first.page_count == 11 and first.status == "rows 1–10 of 103"
    seen = []
    for page in range(first.page_count):
        seen += [r["score"] for r in table_page(frame, page, 10, [], "").records]
    np.testing.assert_array_equal(seen, frame["score"].to_numpy())
    last = table_page(frame, 99, 10, [], "")  # past the end: the last page, said so
    assert last.page == 10 and len(last.records) == 3 and last.status == "rows 101–103 of 103"


def test_sorting_is_over_the_whole_table_with_ties_kept_in_order(frame):
    shown = table_page(frame, 1, 20, [{"column_id": "layer", "direction": "desc"},
                                      {"column_id": "score", "direction": "asc"}], "")
    expected = frame.sort_values(["layer", "score"], ascending=[False, True]).iloc[20:40]
    assert [r["score"] for r in shown.records] == expected["score"].tolist()


@pytest.mark.parametrize("query, expected", [
    ("{score} > 0.5", lambda f: f[f["score"] > 0.5]),
    ("{score} >= 0 && {layer} = 2", lambda f: f[(f["score"] >= 0) & (f["layer"] == 2)]),
    ("{layer} ne 1", lambda f: f[f["layer"] != 1]),
    ("{token} contains Mar", lambda f: f[f["token"].str.contains("Mar")]),
    ('{token} icontains "mary"', lambda f: f[f["token"] == " Mary"]),
    ("{token} = ' the'", lambda f: f[f["token"] == " the"]),
    ("{top_tokens} contains t10", lambda f: f[[("t10" in t[1]) for t in f["top_tokens"]]]),
])
def test_filters_select_what_pandas_selects(frame, query, expected):
    pd.testing.assert_frame_equal(rows_of(frame, query), expected(frame))
    shown = table_page(frame, 0, 500, [], query)
    assert len(shown.records) == len(expected(frame)) and "matching the filter (103 in all)" in shown.status


@pytest.mark.parametrize("query, message", [
    ("{nope} > 1", "no column 'nope'"),
    ("{score} > high", "holds numbers; 'high' is not one"),
    ("{token} > 3", "holds text"),
    ("score > 1", "cannot read"),
    ("{score} datestartswith 1", "holds numbers"),
])
def test_unreadable_filters_are_refused_with_a_message(frame, query, message):
    with pytest.raises(ValueError, match=message):
        rows_of(frame, query)
    shown = table_page(frame, 0, 10, [], query)
    assert shown.records == [] and shown.status.startswith("filter not applied") and message in shown.status


def test_records_are_json_ready(frame):
    frame.loc[0, "score"] = np.nan
    record = table_page(frame, 0, 1, [], "").records[0]
    assert record["score"] is None and record["top_tokens"] == "a, t0" and isinstance(record["layer"], int)


def test_every_related_analysis_is_registered():
    """A misspelt `related` name would silently drop a link from the bundle pages."""
    from app.registry import analyses

    names = {a.name for a in analyses()}
    for analysis in analyses():
        unknown = set(analysis.related) - names
        assert not unknown, f"{analysis.name} names unregistered related analyses {unknown}"
        assert analysis.name not in analysis.related


@pytest.mark.parametrize("point, head", [
    ({"text": "L1H2", "x": "H2", "y": "L1"}, (1, 2)),
    ({"hovertext": "a3.h4 (in the circuit)", "x": 0.2, "y": 0.5}, (3, 4)),
    ({"hovertext": "a1.h2<q>", "x": 0.2, "y": 0.5}, (1, 2)),
    ({"x": "H3", "y": 2}, (2, 3)),
    ({"x": "0:<bos>", "y": "L1H5"}, (1, 5)),
    ({"hovertext": "a0.h1->a1.h2<br>score 1"}, None),  # an edge, not a head
    ({"x": "0:<bos>", "y": "1"}, None),  # a layer and a position
    ({"text": "L12", "x": 0.1, "y": 3}, None),
    ({"x": "H1", "y": "all positions"}, None),
])
def test_a_clicked_point_opens_a_head_only_when_it_stands_for_one(point, head):
    from app.views.common import head_of_point

    assert head_of_point(point) == head


def test_a_per_head_metric_without_a_how_to_read_sentence_is_refused():
    from dataclasses import replace

    from app.registry import find

    heads = find("heads")
    with pytest.raises(ValueError, match="needs a how_to_read sentence"):
        replace(heads, head_metrics=(replace(heads.head_metrics[0], how_to_read=" "),))


def test_plotly_js_is_the_cartesian_bundle_of_the_installed_plotly_version(tmp_path):
    from plotly.offline import get_plotlyjs_version

    from app.plotly_js import BUNDLE, VERSION
    from app.server import create_app

    assert get_plotlyjs_version() == VERSION, (
        f"plotly now ships plotly.js {get_plotlyjs_version()}: replace {BUNDLE.name} with that version's "
        "plotly.js-cartesian-dist-min (npm) and set VERSION, or the dashboard falls back to the full 4.8 MB bundle")
    client = create_app(tmp_path).server.test_client()
    for address in ("/_dash-component-suites/plotly/package_data/plotly.min.js",
                    "/_dash-component-suites/plotly/package_data/plotly.v7_1_0m1764500000.min.js"):
        served = client.get(address)
        assert served.status_code == 200 and served.mimetype == "application/javascript"
        assert served.data.startswith(b"/**\n* plotly.js (cartesian - minified) v" + VERSION.encode())
        again = client.get(address, headers={"If-None-Match": served.headers["ETag"]})
        assert again.status_code == 304  # revalidated, not sent again
    other = client.get("/_dash-component-suites/dash/dcc/dash_core_components.js")
    assert b"plotly.js (cartesian" not in other.data[:200]


def test_a_figure_with_a_trace_the_bundle_lacks_is_refused():
    import plotly.graph_objects as go

    from app.views.common import graph

    assert graph(go.Figure([go.Heatmap(z=[[1]]), go.Scatter(y=[1]), go.Bar(y=[1]), go.Histogram(x=[1])]))
    assert graph({"data": [{"y": [1]}, {"type": "heatmap", "z": [[1]]}], "layout": {}})  # figures as dicts too
    assert graph({"layout": {"title": {"text": "blank"}}})
    with pytest.raises(ValueError, match=r"only cartesian plotly traces.*\['sankey', 'scatter3d'\]"):
        graph(go.Figure([go.Scatter3d(x=[1], y=[1], z=[1]), go.Sankey(), go.Scatter(y=[1])]))
    with pytest.raises(ValueError, match=r"\['scattergl'\]"):
        graph({"data": [{"type": "scattergl", "y": [1]}]})


def test_without_the_bundle_file_dash_serves_its_full_plotly_js(tmp_path, monkeypatch):
    import app.plotly_js
    from app.server import create_app

    monkeypatch.setattr(app.plotly_js, "BUNDLE", tmp_path / "missing.min.js")  # e.g. an install without app/static
    served = create_app(tmp_path).server.test_client().get("/_dash-component-suites/plotly/package_data/plotly.min.js")
    assert served.status_code == 200
    assert served.data.startswith(b"/**\n* plotly.js v") and b"cartesian" not in served.data[:200]
