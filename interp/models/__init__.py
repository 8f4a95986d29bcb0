"""The model layer: `load_model` -> `HookedModel`, the vocabulary every analysis speaks."""

from ..zoo.registry import list_models
from .cache import Cache
from .config import ModelConfig
from .hooked import HookedModel
from .loading import load_model

__all__ = ["Cache", "HookedModel", "ModelConfig", "list_models", "load_model"]
