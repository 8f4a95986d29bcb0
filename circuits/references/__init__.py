"""Published reference circuits, shipped as data: `load_reference("gpt2-small-ioi")`.

A reference is a JSON file: `model`, `task`, `source`, `classes` (each a `name`, the
`position` where its heads act, and `heads` as `[layer, head]` pairs) and the published
`faithfulness`. Nothing is downloaded; evaluating a circuit against a reference on its model
(GPT-2 small here) needs that model, i.e. hub access.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
REFERENCES = sorted(p.stem for p in FOLDER.glob("*.json"))


@dataclass(frozen=True)
class HeadClass:
    name: str
    position: str
    heads: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ReferenceCircuit:
    """A published circuit at head level: its head classes and the paper's faithfulness."""

    name: str
    model: str
    task: str
    source: str
    classes: tuple[HeadClass, ...]
    faithfulness: float
    raw: dict

    @property
    def heads(self) -> list[tuple[int, int]]:
        """Every head `(layer, head)`, class by class in the paper's order."""
        return [h for c in self.classes for h in c.heads]

    @property
    def head_class(self) -> dict[tuple[int, int], str]:
        return {h: c.name for c in self.classes for h in c.heads}

    def node_names(self) -> list[str]:
        """The heads as MIB / EAP-IG graph nodes, `a{layer}.h{head}`."""
        return [f"a{layer}.h{head}" for layer, head in self.heads]


def load_reference(name_or_path: str | Path) -> ReferenceCircuit:
    """A shipped reference by name (`REFERENCES`), or a JSON file of the same format."""
    path = Path(name_or_path)
    if not path.suffix:
        if str(name_or_path) not in REFERENCES:
            raise ValueError(f"unknown reference circuit {str(name_or_path)!r}; shipped: {', '.join(REFERENCES)} "
                             f"(or pass the path of a JSON file)")
        path = FOLDER / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no reference circuit file at {path}")
    data = json.loads(path.read_text())
    missing = [k for k in ("name", "model", "task", "source", "classes", "faithfulness") if k not in data]
    if missing:
        raise ValueError(f"{path} is not a reference circuit: it lacks {missing}")
    classes, seen = [], set()
    for c in data["classes"]:
        heads = []
        for pair in c.get("heads", []):
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in pair)):
                raise ValueError(f"{path}: class {c.get('name')!r} has head {pair!r}; expected [layer, head], "
                                 f"two non-negative integers")
            if tuple(pair) in seen:
                raise ValueError(f"{path}: head {pair} appears twice")
            seen.add(tuple(pair))
            heads.append(tuple(pair))
        if not heads:
            raise ValueError(f"{path}: class {c.get('name')!r} has no heads")
        classes.append(HeadClass(c["name"], c.get("position", ""), tuple(heads)))
    faithfulness = data["faithfulness"]
    if isinstance(faithfulness, bool) or not isinstance(faithfulness, (int, float)) or not abs(faithfulness) <= 2:
        raise ValueError(f"{path}: faithfulness must be a fraction of the model's metric (such as 0.87, not a "
                         f"percentage), got {faithfulness!r}")
    return ReferenceCircuit(data["name"], data["model"], data["task"], data["source"], tuple(classes),
                            float(faithfulness), data)


__all__ = ["REFERENCES", "HeadClass", "ReferenceCircuit", "load_reference"]
