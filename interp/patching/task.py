"""A patching task: clean and corrupted prompts of one shape, answers, and a metric.

Builders for concrete tasks (IOI, colored objects, induction, lists of prompt pairs) live in
`circuits.tasks`; this module holds the container the engine reads, so that `interp` stays
free of imports from `circuits`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

import torch
from jaxtyping import Float, Int

MetricFn = Callable[[Float[torch.Tensor, "... batch d_vocab"], "Task"], Float[torch.Tensor, "... batch"]]


def logit_diff(logits: Float[torch.Tensor, "... batch d_vocab"], task: "Task") -> Float[torch.Tensor, "... batch"]:
    """logit(answer) - logit(wrong) of each prompt, from logits at its answer position."""
    rows = torch.arange(task.batch, device=logits.device)
    return logits[..., rows, task.answer.to(logits.device)] - logits[..., rows, task.wrong.to(logits.device)]


@dataclass
class Task:
    """Clean/corrupted token pairs with one answer each.

    Attributes:
        clean, corrupt: `[batch, pos]` token ids, the same shape (right-padded if needed).
        answer, wrong: `[batch]` the correct and the contrasting next token.
        answer_pos: `[batch]` where the metric reads the logits (default: the last position).
        metric: "logit_diff" (default), or a function `(logits [..., batch, d_vocab], task) ->
            [..., batch]` giving one number per prompt.
        name: a short name for labels and bundles.
        clean_prompts, corrupt_prompts: the texts, when the task was built from text.
    """

    clean: Int[torch.Tensor, "batch pos"]
    corrupt: Int[torch.Tensor, "batch pos"]
    answer: Int[torch.Tensor, "batch"]
    wrong: Int[torch.Tensor, "batch"]
    answer_pos: Int[torch.Tensor, "batch"] | None = None
    metric: Union[str, MetricFn] = "logit_diff"
    name: str = "task"
    clean_prompts: list[str] | None = field(default=None, repr=False)
    corrupt_prompts: list[str] | None = field(default=None, repr=False)

    def __post_init__(self):
        for label in ("clean", "corrupt", "answer", "wrong"):
            value = getattr(self, label)
            if not isinstance(value, torch.Tensor) or value.dtype.is_floating_point:
                raise TypeError(f"Task.{label} must be an integer tensor, got {type(value).__name__}")
        if self.clean.ndim != 2 or self.clean.shape[0] == 0 or self.clean.shape[1] == 0:
            raise ValueError(f"Task.clean must have shape [batch, pos] with batch, pos >= 1, got {tuple(self.clean.shape)}")
        if self.corrupt.shape != self.clean.shape:
            raise ValueError(f"clean and corrupted tokens must have the same shape [batch, pos]: "
                             f"clean {tuple(self.clean.shape)}, corrupt {tuple(self.corrupt.shape)}")
        batch, n_pos = self.clean.shape
        for label in ("answer", "wrong"):
            if getattr(self, label).shape != (batch,):
                raise ValueError(f"Task.{label} must have shape [batch] = [{batch}] (one single-token answer "
                                 f"per prompt), got {tuple(getattr(self, label).shape)}")
        if self.answer_pos is None:
            self.answer_pos = torch.full((batch,), n_pos - 1, dtype=torch.long)
        if self.answer_pos.shape != (batch,) or not (0 <= int(self.answer_pos.min()) and int(self.answer_pos.max()) < n_pos):
            raise ValueError(f"Task.answer_pos must be [batch] positions in [0, {n_pos - 1}], got {self.answer_pos.tolist()}")
        if isinstance(self.metric, str) and self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; known metrics: {', '.join(METRICS)} (or pass a function)")
        if not isinstance(self.metric, str) and not callable(self.metric):
            raise TypeError(f"Task.metric must be a metric name or a function, got {type(self.metric).__name__}")

    @property
    def batch(self) -> int:
        return self.clean.shape[0]

    @property
    def n_pos(self) -> int:
        return self.clean.shape[1]

    def metric_fn(self) -> MetricFn:
        return METRICS[self.metric] if isinstance(self.metric, str) else self.metric

    def to(self, device: torch.device) -> "Task":
        """The same task with its tensors on `device`."""
        moved = {k: getattr(self, k).to(device) for k in ("clean", "corrupt", "answer", "wrong", "answer_pos")}
        return Task(**moved, metric=self.metric, name=self.name, clean_prompts=self.clean_prompts,
                    corrupt_prompts=self.corrupt_prompts)


METRICS: dict[str, MetricFn] = {"logit_diff": logit_diff}
