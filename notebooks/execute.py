"""Execute the worked-example notebooks in place, so that the repository shows their results.

    python notebooks/execute.py [NOTEBOOK ...]        (`make notebooks`: all of them)

Each notebook runs top to bottom in a fresh kernel on this checkout's code, in a scratch folder
(files a notebook writes do not land in the repository). Plotly draws its figures as static PNGs,
which GitHub shows (its interactive HTML output GitHub does not): kaleido renders them in a local
Chromium, found on PATH or named by BROWSER_PATH, and never downloads one. No execution
timestamps are recorded, so a refresh that computes the same numbers rewrites the files unchanged.

The size budget keeps the repository small, as every refresh that changes a figure adds its PNGs
to the history: a figure of FIGURE_WIDTH x 500 px is 20-100 kB, so a notebook with a few
figures fits in MAX_NOTEBOOK_BYTES and the five fit in MAX_TOTAL_BYTES.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_NOTEBOOK_BYTES = 500_000
MAX_TOTAL_BYTES = 1_500_000
FIGURE_WIDTH = 900  # px, about the width GitHub gives a notebook's output


def execute(notebook: nbformat.NotebookNode, workdir: str | Path, static_figures: bool = False) -> None:
    """Run `notebook` (changed in place) from top to bottom in a fresh kernel working in `workdir`.

    The kernel works offline (unless HF_HUB_OFFLINE says otherwise), imports this checkout's
    code first, whichever one is installed, hashes strings with a fixed seed and shows no
    progress bars (they would differ on every run).
    `static_figures` renders plotly figures as PNG, FIGURE_WIDTH px wide unless a figure sets
    its width (needs kaleido and a Chromium); otherwise they keep plotly's interactive output.
    """
    env = {"HF_HUB_OFFLINE": "1", **os.environ, "PYTHONHASHSEED": "0",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "PYTHONWARNINGS": "ignore:IProgress not found",  # tqdm's notice that ipywidgets is missing
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    setup = []
    if static_figures:
        env.update(PLOTLY_RENDERER="png", BROWSER_PATH=_browser())
        setup = [f"--IPKernelApp.exec_lines=import plotly.io; plotly.io.defaults.default_width = {FIGURE_WIDTH}"]
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", record_timing=False,
                            extra_arguments=setup, resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env)
    notebook.metadata.get("language_info", {}).pop("version", None)  # the Python patch release


def _browser() -> str:
    """The Chromium kaleido drives: BROWSER_PATH, else the first Chromium or Chrome on PATH."""
    found = os.environ.get("BROWSER_PATH") or next(
        filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)
    if not found:
        sys.exit("Static figures need Chromium (`make chromium` installs Debian's), or BROWSER_PATH naming one.")
    return found


def over_budget(paths: list[Path]) -> list[str]:
    """What breaks the size budget among the notebooks at `paths` (empty when it holds)."""
    sizes = {path.name: path.stat().st_size for path in paths}
    problems = [f"{name} is {size:,} bytes (budget {MAX_NOTEBOOK_BYTES:,})"
                for name, size in sizes.items() if size > MAX_NOTEBOOK_BYTES]
    if sum(sizes.values()) > MAX_TOTAL_BYTES:
        problems.append(f"the notebooks total {sum(sizes.values()):,} bytes (budget {MAX_TOTAL_BYTES:,})")
    return problems


def main(argv: list[str]) -> int:
    """Execute the notebooks named in `argv` (default: all), save them and check the budget."""
    paths = [Path(arg).resolve() for arg in argv] or NOTEBOOKS
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        with tempfile.TemporaryDirectory() as workdir:
            execute(notebook, workdir, static_figures=True)
        nbformat.write(notebook, path)
        print(f"{path.name}: {path.stat().st_size:,} bytes", flush=True)
    problems = over_budget(NOTEBOOKS)
    for problem in problems:
        print("over budget:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
