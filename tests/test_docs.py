"""docs/methods.md stays true to the code: every "docs/methods.md §N" citation in the package
sources names a section the notes have, and every `module:function`, test name and file path
the notes mention exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTES = ROOT / "docs" / "methods.md"
PACKAGES = ("analyses", "circuits", "interp", "app")

# "docs/methods.md §5", "docs/methods.md §5, §7", "docs/methods.md §5 and §7"
CITATION = re.compile(r"docs/methods\.md((?:(?:\s*,\s*|\s+and\s+|\s+)§\s*\d+)+)")
# the team's notes outside the repository, numbered the same way: "METHODS.md §1", "METHODS §5, §7"
OLD_CITATION = re.compile(r"\bMETHODS(?:\.md)?((?:(?:\s*,\s*|\s+and\s+|\s+)§\s*\d+)+)")
SECTION = re.compile(r"§\s*(\d+)")
HEADING = re.compile(r"^## (\d+)\. ", re.MULTILINE)
# `package.module:function` or `package.module:Class.attribute`
NAME = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)`")
TEST_NAME = re.compile(r"`(?:(tests/[\w/]+\.py)::|::)?(test_\w+)`")
PATH = re.compile(r"`((?:tests|benchmarks|analyses|circuits|interp|app|docs)/[\w/.-]+\.(?:py|md))`")


def notes() -> str:
    return NOTES.read_text(encoding="utf-8")


def sections() -> list[int]:
    return [int(n) for n in HEADING.findall(notes())]


def citations(pattern: re.Pattern) -> list[tuple[str, int, int]]:
    """(file, line, section) of every citation matching `pattern` in the package sources."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                for match in pattern.finditer(line):
                    for section in SECTION.findall(match.group(1)):
                        found.append((str(path.relative_to(ROOT)), number, int(section)))
    return found


def test_citation_patterns_read_single_and_listed_sections():
    assert [SECTION.findall(m.group(1)) for m in CITATION.finditer("see docs/methods.md §5, §7 and docs/methods.md §2")] \
        == [["5", "7"], ["2"]]
    assert [SECTION.findall(m.group(1)) for m in OLD_CITATION.finditer("(METHODS §5, §7); METHODS.md §1")] \
        == [["5", "7"], ["1"]]
    assert not CITATION.search("as docs/methods.md defines it") and not OLD_CITATION.search("METHODS = (")


def test_notes_have_sections_0_to_7_in_order():
    # the numbering of the team's METHODS.md, so that its citations and ours agree
    assert sections() == list(range(8))


def test_every_citation_names_an_existing_section():
    found = citations(CITATION)
    assert found, "no 'docs/methods.md §N' citation found in the package sources"
    missing = [f"{path}:{line} cites §{section}" for path, line, section in found if section not in sections()]
    assert not missing, f"citations of sections docs/methods.md does not have: {missing}"


def test_old_style_citations_use_the_same_numbering():
    missing = [f"{path}:{line} cites §{section}" for path, line, section in citations(OLD_CITATION)
               if section not in sections()]
    assert not missing, missing


def resolve(module: str, attribute: str):
    obj = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_module_function_in_the_notes_resolves():
    names = sorted(set(NAME.findall(notes())))
    assert len(names) >= 50, f"expected the notes to name their functions; found only {len(names)}"
    broken = []
    for module, attribute in names:
        try:
            resolve(module, attribute)
        except (ImportError, AttributeError) as err:
            broken.append(f"{module}:{attribute} ({type(err).__name__}: {err})")
    assert not broken, "names in docs/methods.md that do not resolve:\n" + "\n".join(broken)


def test_every_method_section_names_its_implementation():
    text = notes()
    bodies = re.split(r"^## \d+\. .*$", text, flags=re.MULTILINE)[1:]
    without = [n for n, body in zip(sections(), bodies) if n > 0 and not NAME.search(body)]
    assert not without, f"sections without a `module:function`: {without}"


def test_every_test_named_in_the_notes_exists():
    defined = {}
    for path in (ROOT / "tests").glob("test_*.py"):
        names = set(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.MULTILINE))
        defined[str(path.relative_to(ROOT))] = names
    everywhere = set().union(*defined.values())
    named = TEST_NAME.findall(notes())
    assert len(named) >= 50
    missing = [f"{file}::{name}" if file else name for file, name in named
               if (name not in defined.get(file, set()) if file else name not in everywhere)]
    assert not missing, f"tests named in docs/methods.md that do not exist: {missing}"


def test_every_file_named_in_the_notes_exists():
    paths = set(PATH.findall(notes()))
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p).is_file())
    assert not missing, f"files named in docs/methods.md that do not exist: {missing}"
