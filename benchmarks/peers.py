"""Separate virtual environments for peer libraries that the benchmarks compare against.

Peers such as SAELens or auto-circuit pin library versions the project cannot share (they need
TransformerLens < 4), so each lives in its own venv under `.venv-peers/<name>` (git-ignored),
never in the project's environment and never created by `make test`:

    python = peer_python("saelens", [["torch==2.13.0"], ["sae-lens==6.54.12"]])
    subprocess.run([str(python), "script.py"], check=True)

Each inner list is one `pip install` call, run in order (torch first, so that pip does not
pick a multi-GB CUDA build when the peer asks for torch). The pins are written to
`.venv-peers/<name>/pins.json` once the install succeeds; a venv whose pins match is reused,
one whose pins differ (or whose install broke off) is rebuilt.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parents[1] / ".venv-peers"


def peer_python(name: str, pins: list[list[str]], *, root: Path = PEERS_DIR) -> Path:
    """The Python interpreter of the peer venv `root/name`, created with `pins` if missing.

    pins: the `pip install` calls in order, e.g. `[["torch==2.13.0"], ["sae-lens==6.54.12"]]`.
    """
    if not pins or not all(isinstance(step, list) and step for step in pins):
        raise ValueError(f"pins must be a non-empty list of non-empty lists of requirements, got {pins!r}")
    venv = root / name
    python = venv / "bin" / "python"
    marker = venv / "pins.json"
    if marker.exists() and json.loads(marker.read_text()) == pins and python.exists():
        return python
    if venv.exists():
        shutil.rmtree(venv)
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    for step in pins:
        print(f"[peers] {name}: pip install {' '.join(step)}", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *step], check=True)
    marker.write_text(json.dumps(pins))
    return python
