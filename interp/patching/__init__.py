"""The patching engine: exact batched activation patching, path patching, attribution patching."""

from .attribution import attribution_patch
from .path import path_patch
from .result import Comparison, PatchResult
from .sweep import COMPONENTS, patch
from .task import METRICS, Task, logit_diff

__all__ = ["COMPONENTS", "METRICS", "Comparison", "PatchResult", "Task", "attribution_patch", "logit_diff",
           "patch", "path_patch"]
