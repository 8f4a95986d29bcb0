"""Backends: what runs a model underneath `HookedModel` (see `base.Backend`)."""

from .base import Backend
from .lens import LensBackend

__all__ = ["Backend", "LensBackend"]
