"""Rebuild a zoo model from its recipe: `python -m recipes.train NAME [--out FOLDER]`.

The shipped checkpoints were made this way; a rebuild with the same settings gives the same
model up to floating-point nondeterminism across machines and thread counts.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from interp.zoo.registry import CHECKPOINTS

RECIPES = {
    "induction-2l": "recipes.induction",
    "ioi-small": "recipes.ioi",
    "ioi-kept": "recipes.ioi_kept",
    "constructed": "recipes.constructed",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recipes.train", description=__doc__)
    parser.add_argument("name", help=f"which recipe: {', '.join(RECIPES)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder to write (default: the shipped checkpoint's folder)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    args = parser.parse_args(argv)
    name = args.name.removeprefix("zoo/")
    if name not in RECIPES:
        parser.error(f"unknown recipe {args.name!r}; recipes: {', '.join(RECIPES)}")
    recipe = importlib.import_module(RECIPES[name])
    out = args.out or CHECKPOINTS / name
    recipe.build(out, threads=args.threads)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
