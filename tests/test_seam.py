"""The model seam holds: outside `interp.models`, code reads and changes models only through
sites and interventions (DESIGN.md, "The model layer"). Checked on the syntax tree of every
module and notebook cell, so prose that names a hook is fine and a hook in code is not."""

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["analyses", "app", "circuits", "interp", "notebooks"]
EXEMPT = ROOT / "interp" / "models"  # the one place that knows the backend
BACKEND_PACKAGES = ("transformer_lens", "nnsight")
BACKEND_ATTRIBUTES = {"run_with_hooks", "bridge", "_backend", "hf_model", "add_hook", "reset_hooks"}
HOOK_KEYWORDS = {"fwd_hooks", "bwd_hooks", "names_filter"}
HOOK_NAME = re.compile(r"^(blocks\.\d+\.|hook_\w+$)")
# SAELens's file format spells some keys and values like hooks (cfg.json's `hook_name`,
# `reshape_activations: "hook_z"`); the modules that read and write that format may name them.
SAELENS_KEYS = {"hook_name", "hook_head_index"}
FILE_FORMAT_WORDS = {"analyses/sae/config.py": {"hook_z"}, "analyses/sae/train.py": {"hook_z"},
                     "analyses/sae/saelens_io.py": SAELENS_KEYS, "analyses/sae/sites.py": SAELENS_KEYS,
                     "analyses/sae/evals.py": SAELENS_KEYS}


def _sources():
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if EXEMPT not in path.parents:
                yield path.relative_to(ROOT), path.read_text(encoding="utf-8")
        for path in sorted((ROOT / folder).rglob("*.ipynb")):
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
            for i, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
                yield f"{path.relative_to(ROOT)} cell {i}", "".join(cell["source"])


def violations(source: str, allowed: frozenset[str] = frozenset()) -> list[str]:
    """What in `source` reaches past the seam: backend imports, backend attributes, hook
    arguments, and TransformerLens hook names as string constants (other than `allowed`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in BACKEND_PACKAGES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BACKEND_PACKAGES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr in BACKEND_ATTRIBUTES:
            found.append(f".{node.attr} (line {node.lineno})")
        elif isinstance(node, ast.keyword) and node.arg in HOOK_KEYWORDS:
            found.append(f"{node.arg}= (line {node.value.lineno})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and HOOK_NAME.match(node.value) \
                and node.value not in allowed:
            found.append(f"hook name {node.value!r} (line {node.lineno})")
    return found


def test_the_checker_catches_each_kind_of_violation():
    code = ("import transformer_lens\nfrom nnsight import LanguageModel\nm.bridge.run_with_hooks(t, fwd_hooks=[])\n"
            "m.run_with_cache(t, names_filter='blocks.0.attn.hook_z')\nx = 'hook_embed'\n"
            "doc = 'each head (hook_z, before W_O)'\nm.run(t, interventions=[Zero(sites.z(0, 1))])\n")
    assert sorted(violations(code)) == sorted(["import transformer_lens", "from nnsight import ...", ".run_with_hooks (line 3)",
                                ".bridge (line 3)", "fwd_hooks= (line 3)", "names_filter= (line 4)",
                                "hook name 'blocks.0.attn.hook_z' (line 4)", "hook name 'hook_embed' (line 5)"])


@pytest.mark.parametrize("where,source", list(_sources()), ids=lambda x: str(x) if isinstance(x, Path) else None)
def test_no_hooks_or_backend_outside_the_model_layer(where, source):
    allowed = frozenset(FILE_FORMAT_WORDS.get(str(where), ()))
    assert not violations(source, allowed), f"{where} reaches past interp.models"
