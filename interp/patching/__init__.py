"""The patching engine: exact batched activation patching, path patching, attribution patching.

Names are imported on first use, so that the torch-free parts (`interp.patching.spec`, the
figures, the component list) can be read without loading the engine.
"""

from importlib import import_module

_WHERE = {"attribution_patch": "attribution", "path_patch": "path", "Comparison": "result", "PatchResult": "result",
          "COMPONENTS": "components", "patch": "sweep", "METRICS": "task", "Task": "task", "logit_diff": "task"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'interp.patching' has no attribute {name!r}")
