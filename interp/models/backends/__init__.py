"""Backends: what runs a model underneath `HookedModel` (see `base.Backend`). The nnsight
backend imports nnsight only when it is used."""

from .base import Backend
from .lens import LensBackend
from .nnsight import NNsightBackend

__all__ = ["Backend", "LensBackend", "NNsightBackend"]
