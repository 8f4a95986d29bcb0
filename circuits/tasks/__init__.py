"""Tasks for patching and circuit discovery: clean/corrupted prompts, answers, a metric."""

from .builders import answer_token, colored_objects_task, from_prompt_pairs, induction_task, ioi_task
from .constructed import constructed_task

TASKS = {"ioi": ioi_task, "colored-objects": colored_objects_task, "induction": induction_task,
         "constructed": constructed_task}

__all__ = ["TASKS", "answer_token", "colored_objects_task", "constructed_task", "from_prompt_pairs", "induction_task",
           "ioi_task"]
