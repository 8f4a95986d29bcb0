"""The worked-example notebooks run from top to bottom on CPU, on this checkout's code, and are
committed executed (`make notebooks`), so that a reader browsing the repository sees their
results and figures."""

import nbformat
import pytest

from notebooks.execute import NOTEBOOKS, execute, over_budget

IDS = [p.name for p in NOTEBOOKS]
STATIC = ("image/png", "image/svg+xml")
PLOTLY = "application/vnd.plotly.v1+json"


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def errors(notebook):
    return [o for cell in code_cells(notebook) for o in cell.outputs if o.output_type == "error"]


def count(cell, mimetypes):
    """How many of `cell`'s outputs carry one of `mimetypes`."""
    return sum(any(m in o.get("data", {}) for m in mimetypes) for o in cell.outputs)


def interactive(output):
    """Whether `output` is a plotly figure as JSON or HTML, which GitHub does not show."""
    data = output.get("data", {})
    return PLOTLY in data or "Plotly.newPlot" in data.get("text/html", "")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, tmp_path):
    """A fresh execution (on a copy, in a scratch folder) raises nothing and draws a figure in
    exactly the cells whose committed outputs hold a static image."""
    committed = nbformat.read(path, as_version=4)
    notebook = nbformat.read(path, as_version=4)
    execute(notebook, tmp_path)
    assert not errors(notebook)
    drawn = [count(cell, [PLOTLY]) for cell in code_cells(notebook)]
    assert drawn == [count(cell, STATIC) for cell in code_cells(committed)], "refresh them: make notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_executed(path):
    """The committed notebook was executed top to bottom, without error, with its figures as
    static images GitHub shows (not plotly's interactive output) and no execution timestamps."""
    notebook = nbformat.read(path, as_version=4)
    cells = code_cells(notebook)
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), "run: make notebooks"
    assert not errors(notebook)
    assert not any(interactive(output) for cell in cells for output in cell.outputs)
    assert not any("execution" in cell.metadata for cell in cells)
    if any(".figure(" in cell.source or "px." in cell.source for cell in cells):
        assert sum(count(cell, STATIC) for cell in cells) >= 1


def test_size_budget():
    """Each notebook, and all of them together, stay within the size budget of notebooks/execute.py."""
    assert not over_budget(NOTEBOOKS)
