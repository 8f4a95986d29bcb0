"""The analyses and tasks the app offers: the packages' registrations (torch-free modules),
imported here, in a stable order.

Adding an analysis to the app needs nothing here when it is registered in one of these
modules; a new package with its own registrations is one more import below.
"""

from __future__ import annotations

import analyses.specs  # noqa: F401  (registers the analyses of heads and the sentence-pair task)
import analyses.sae_specs  # noqa: F401  (registers "sae-train", "sae-eval", "sae-features"; after the above)
import circuits.specs  # noqa: F401  (registers "circuit" and the tasks of circuits.tasks)
import interp.patching.spec  # noqa: F401  (registers "patch")
from interp.results import registry
from interp.results.registry import Analysis, TaskBuilder

# Analyses are listed package by package (then in registration order), whatever order the
# modules happened to be imported in: the demo's steps and the heads grid's first choice stay put.
PACKAGE_ORDER = ("analyses", "interp", "circuits")


def analyses() -> list[Analysis]:
    """Every registered analysis: those of `analyses`, then `interp`, then `circuits`, then others."""
    registered = registry.analyses()

    def rank(item: tuple[int, Analysis]) -> tuple[int, int]:
        index, analysis = item
        package = analysis.run.split(".", 1)[0]
        return (PACKAGE_ORDER.index(package) if package in PACKAGE_ORDER else len(PACKAGE_ORDER), index)

    return [analysis for _, analysis in sorted(enumerate(registered), key=rank)]


def find(name: str) -> Analysis | None:
    """The analysis of a bundle's `analysis` name (or an older alias of it), else None."""
    return registry.find(name)


def tasks() -> list[TaskBuilder]:
    return registry.tasks()
