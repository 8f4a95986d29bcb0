"""headlab's core: models with hooks on every head, embedded models, patching, result bundles."""

from .models import HookedModel, list_models, load_model

__all__ = ["HookedModel", "list_models", "load_model"]
