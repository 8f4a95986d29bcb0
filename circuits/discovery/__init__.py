"""Circuit discovery methods; each finds which edges of a model's graph carry a task."""

from .acdc import acdc

__all__ = ["acdc"]
