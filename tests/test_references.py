"""Reference circuits shipped as data: the GPT-2 small IOI circuit against the list in
METHODS.md (transcribed here), and the loader's refusals."""

from __future__ import annotations

import json
import re

import pytest

from circuits.references import REFERENCES, load_reference

# METHODS.md, section 5, "IOI in GPT-2 small (Wang et al., 2022), 26 heads", copied verbatim.
METHODS_IOI = ("name movers 9.9 10.0 9.6; backup name movers 10.10 10.6 10.2 10.1 11.2 9.7 9.0 11.9; "
               "negative name movers 10.7 11.10; S-inhibition 7.3 7.9 8.6 8.10; induction 5.5 5.8 5.9 6.9; "
               "duplicate token 0.1 0.10 3.0; previous token 2.2 4.11. Faithfulness ≈ 87% of the logit difference.")


def _methods_classes() -> dict[str, list[tuple[int, int]]]:
    """Class name (singular, lower case) -> heads, parsed from the METHODS.md sentence."""
    classes = {}
    for part in METHODS_IOI.split(". Faithfulness")[0].split(";"):
        name, heads = re.match(r"\s*([A-Za-z -]+?)\s+([\d. ]+)$", part).groups()
        singular = re.sub(r"s$", "", name.lower().replace("movers", "mover"))
        classes[singular] = [tuple(int(x) for x in h.split(".")) for h in heads.split()]
    return classes


def test_ioi_reference_matches_methods():
    ref = load_reference("gpt2-small-ioi")
    expected = _methods_classes()
    assert [c.name for c in ref.classes] == list(expected)
    for c in ref.classes:
        assert list(c.heads) == expected[c.name], c.name
    assert len(ref.heads) == len(set(ref.heads)) == 26
    assert all(0 <= layer < 12 and 0 <= head < 12 for layer, head in ref.heads)  # GPT-2 small: 12 x 12
    assert ref.model == "gpt2" and ref.task == "ioi"
    assert ref.faithfulness == pytest.approx(0.87)
    logit_diff = ref.raw["logit_diff"]
    assert logit_diff["circuit"] / logit_diff["model"] == pytest.approx(ref.faithfulness, abs=0.005)
    assert ref.head_class[(9, 9)] == "name mover" and ref.head_class[(4, 11)] == "previous token"
    assert ref.node_names()[:3] == ["a9.h9", "a10.h0", "a9.h6"]
    positions = {c.name: c.position for c in ref.classes}
    assert positions["name mover"] == positions["s-inhibition"] == "END"
    assert positions["induction"] == positions["duplicate token"] == "S2"


def test_shipped_references_are_listed():
    assert "gpt2-small-ioi" in REFERENCES


def _write(tmp_path, **changes):
    data = json.loads(json.dumps(load_reference("gpt2-small-ioi").raw))  # a deep copy
    data.update(changes)
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(data))
    return path


def test_loader_refusals(tmp_path):
    with pytest.raises(ValueError, match=r"unknown reference circuit 'gpt2-ioi'; shipped: .*gpt2-small-ioi"):
        load_reference("gpt2-ioi")
    with pytest.raises(FileNotFoundError, match="no reference circuit file"):
        load_reference(tmp_path / "none.json")
    good = load_reference("gpt2-small-ioi").raw
    classes = [dict(c) for c in good["classes"]]
    with pytest.raises(ValueError, match=r"head \[9, 9\] appears twice"):
        load_reference(_write(tmp_path, classes=classes + [{"name": "again", "heads": [[9, 9]]}]))
    with pytest.raises(ValueError, match=r"has head \[9, 1.5\]; expected \[layer, head\]"):
        load_reference(_write(tmp_path, classes=[{"name": "bad", "heads": [[9, 1.5]]}]))
    with pytest.raises(ValueError, match=r"has head \[-1, 2\]"):
        load_reference(_write(tmp_path, classes=[{"name": "bad", "heads": [[-1, 2]]}]))
    with pytest.raises(ValueError, match="class 'empty' has no heads"):
        load_reference(_write(tmp_path, classes=[{"name": "empty", "heads": []}]))
    with pytest.raises(ValueError, match="not a percentage.*got 87"):
        load_reference(_write(tmp_path, faithfulness=87))
    data = dict(good)
    del data["faithfulness"]
    (tmp_path / "short.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"lacks \['faithfulness'\]"):
        load_reference(tmp_path / "short.json")
