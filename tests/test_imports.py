"""The import contract (DESIGN.md, "Layout"): imports run one way, app → analyses, circuits →
interp. `interp` imports none of the others; `analyses` and `circuits` meet only through
`interp`; nothing but `app` imports `app`; the library never imports the build-time recipes.
Checked on the syntax tree of every module, imports inside functions included (a deferred
import is still a dependency). The registrations and the command line's help load without
torch (page loads are checked in test_dashboard)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("interp", "analyses", "circuits", "app", "recipes")
# What each package may import, of the project's own packages.
ALLOWED = {"interp": {"interp"}, "analyses": {"analyses", "interp"}, "circuits": {"circuits", "interp"},
           "app": {"app", "analyses", "circuits", "interp"}, "recipes": set(PACKAGES)}


def project_imports(source: str) -> list[tuple[str, int]]:
    """(top-level project package, line) of every import in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in PACKAGES]
    return found


def _modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path.relative_to(ROOT)


def test_the_checker_sees_every_kind_of_import():
    code = ("import analyses.heads\nfrom circuits.graph import Graph\nimport torch, app\n"
            "def f():\n    from recipes import ioi\nfrom . import sibling\n")
    assert project_imports(code) == [("analyses", 1), ("circuits", 2), ("app", 3), ("recipes", 5)]


@pytest.mark.parametrize("package,path", list(_modules()), ids=lambda x: str(x))
def test_imports_run_one_way(package, path):
    wrong = [f"{target} (line {line})" for target, line in project_imports((ROOT / path).read_text(encoding="utf-8"))
             if target not in ALLOWED[package]]
    assert not wrong, f"{path} ({package}) imports {', '.join(wrong)}, against app → analyses, circuits → interp"


def test_registry_and_help_load_without_torch():
    code = ("import sys, contextlib, io\nimport app.registry\nfrom app.cli import build_parser\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        build_parser().parse_args(['--help'])\n    except SystemExit:\n        pass\n"
            "heavy = sorted(m for m in ('torch', 'transformer_lens', 'transformers', 'nnsight') if m in sys.modules)\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"loading the registry and the CLI's help imported {out.stdout.strip()}"
