"""headlab's core: models with hooks on every head, embedded models, patching, result bundles.

`load_model`, `list_models` and `HookedModel` are imported on first use, so that light
consumers (`interp.results`, the dashboard) do not pay for torch and TransformerLens.
"""

from importlib import import_module

__all__ = ["HookedModel", "list_models", "load_model"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(import_module(".models", __name__), name)
    raise AttributeError(f"module 'interp' has no attribute {name!r}")
