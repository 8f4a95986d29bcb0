"""The patching engine: exact batched activation patching, path patching, attribution patching."""

from .result import PatchResult
from .sweep import COMPONENTS, patch
from .task import METRICS, Task, logit_diff

__all__ = ["COMPONENTS", "METRICS", "PatchResult", "Task", "logit_diff", "patch"]
