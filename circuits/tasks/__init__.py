"""Tasks for patching and circuit discovery: clean/corrupted prompts, answers, a metric.

`TASKS` maps each task's name (as registered in `circuits.specs`, which the command line
offers) to its builder `builder(model, n=..., seed=..., ...) -> interp.patching.Task`.
"""

from interp.results.registry import resolve

from ..specs import TASK_BUILDERS
from .builders import (answer_token, colored_objects_task, from_prompt_pairs, induction_task, ioi_task,
                       kept_object_task)
from .constructed import constructed_task

TASKS = {name: resolve(entry) for name, (entry, _) in TASK_BUILDERS.items()}

__all__ = ["TASKS", "answer_token", "colored_objects_task", "constructed_task", "from_prompt_pairs", "induction_task",
           "ioi_task", "kept_object_task"]
