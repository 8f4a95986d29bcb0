"""`Task`: what the model is asked to do and how its behaviour is measured — the one task type
of patching, circuit discovery, head importance and pruning.

Most tasks are clean/corrupted token pairs with one answer each; their score is the mean of a
per-prompt metric on the clean prompts (logit difference by default) and their loss, for
gradients, the cross-entropy of the answer. A task that is not about next tokens (a sentence
encoder's retrieval task, `analyses.sentence_pairs`) brings its own `loss` and `score`
functions and no token pairs; patching refuses such a task by name.

Builders for concrete tasks (IOI, colored objects, induction, lists of prompt pairs) live in
`circuits.tasks`; this module holds the container, so that `interp` imports nothing from
`circuits`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Sequence, Union

import torch
from jaxtyping import Float, Int

if TYPE_CHECKING:
    from interp.models import HookedModel, Intervention

MetricFn = Callable[[Float[torch.Tensor, "... batch d_vocab"], "Task"], Float[torch.Tensor, "... batch"]]
# loss(model, interventions) -> one scalar loss per batch of the task's data, differentiable
# through the interventions; score(model, interventions) -> one number, higher is better.
LossFn = Callable[["HookedModel", Sequence["Intervention"]], Iterator[torch.Tensor]]
ScoreFn = Callable[["HookedModel", Sequence["Intervention"]], float]
_PAIRS = ("clean", "corrupt", "answer", "wrong")


def logit_diff(logits: Float[torch.Tensor, "... batch d_vocab"], task: "Task") -> Float[torch.Tensor, "... batch"]:
    """logit(answer) - logit(wrong) of each prompt, from logits at its answer position."""
    rows = torch.arange(task.batch, device=logits.device)
    return logits[..., rows, task.answer.to(logits.device)] - logits[..., rows, task.wrong.to(logits.device)]


def accuracy(logits: Float[torch.Tensor, "... batch d_vocab"], task: "Task") -> Float[torch.Tensor, "... batch"]:
    """1 where the answer's logit beats the wrong token's, else 0 (a step: no useful gradient)."""
    return (logit_diff(logits, task) > 0).to(logits.dtype)


@dataclass
class Task:
    """A task (see the module docstring).

    Attributes:
        clean, corrupt: `[batch, pos]` token ids, the same shape (right-padded if needed).
        answer, wrong: `[batch]` the correct and the contrasting next token.
        answer_pos: `[batch]` where the metric reads the logits (default: the last position).
        metric: "logit_diff" (default), "accuracy", or a function `(logits [..., batch,
            d_vocab], task) -> [..., batch]` giving one number per prompt.
        name: a short name for labels and bundles.
        clean_prompts, corrupt_prompts: the texts, when the task was built from text.
        loss: instead of the answer's cross-entropy, `loss(model, interventions)` yielding one
            scalar per batch (a task without token pairs needs it for head importance).
        score: instead of the mean metric, `score(model, interventions) -> float`, higher is
            better (required for a task without token pairs); `score_name` names it.
    """

    clean: Int[torch.Tensor, "batch pos"] | None = None
    corrupt: Int[torch.Tensor, "batch pos"] | None = None
    answer: Int[torch.Tensor, "batch"] | None = None
    wrong: Int[torch.Tensor, "batch"] | None = None
    answer_pos: Int[torch.Tensor, "batch"] | None = None
    metric: Union[str, MetricFn] = "logit_diff"
    name: str = "task"
    clean_prompts: list[str] | None = field(default=None, repr=False)
    corrupt_prompts: list[str] | None = field(default=None, repr=False)
    loss: LossFn | None = field(default=None, repr=False)
    score: ScoreFn | None = field(default=None, repr=False)
    score_name: str | None = None

    def __post_init__(self):
        given = [label for label in _PAIRS if getattr(self, label) is not None]
        if given and len(given) < len(_PAIRS):
            raise ValueError(f"Task.clean, corrupt, answer and wrong go together; got only {', '.join(given)}")
        for label, value in (("loss", self.loss), ("score", self.score)):
            if value is not None and not callable(value):
                raise TypeError(f"Task.{label} must be a function (model, interventions), got {type(value).__name__}")
        if not given:
            if self.score is None:
                raise ValueError("a Task needs clean/corrupt/answer/wrong token pairs, or a score function "
                                 "(model, interventions) -> float (and a loss for head importance)")
            return
        for label in _PAIRS:
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
    def has_pairs(self) -> bool:
        """Whether the task holds clean/corrupted token pairs (patching needs them)."""
        return self.clean is not None

    def _require_pairs(self, what: str) -> None:
        if not self.has_pairs:
            raise ValueError(f"task {self.name!r} has no clean/corrupted token pairs (it is scored by its own "
                             f"functions), so {what}; build a task from prompt pairs (circuits.tasks)")

    @property
    def batch(self) -> int:
        self._require_pairs("it has no batch of prompts")
        return self.clean.shape[0]

    @property
    def n_pos(self) -> int:
        self._require_pairs("it has no positions")
        return self.clean.shape[1]

    @property
    def metric_name(self) -> str:
        """What `evaluate` returns: `score_name`, else the metric's name."""
        if self.score_name is not None:
            return self.score_name
        return self.metric if isinstance(self.metric, str) else getattr(self.metric, "__name__", "metric")

    def metric_fn(self) -> MetricFn:
        return METRICS[self.metric] if isinstance(self.metric, str) else self.metric

    def to(self, device: torch.device) -> "Task":
        """The same task with its tensors on `device` (patching's first step: it refuses a
        task without token pairs)."""
        self._require_pairs("patching and circuit discovery cannot run on it")
        moved = {k: getattr(self, k).to(device) for k in ("clean", "corrupt", "answer", "wrong", "answer_pos")}
        return dataclasses.replace(self, **moved)

    def rows(self, rows: slice) -> "Task":
        """The task restricted to prompts `rows`."""
        self._require_pairs("it has no prompts to select")
        picked = {k: getattr(self, k)[rows] for k in ("clean", "corrupt", "answer", "wrong", "answer_pos")}
        return dataclasses.replace(self, **picked, clean_prompts=None, corrupt_prompts=None)

    # ------------------------------------------------------------------ loss and score

    def losses(self, model: "HookedModel", interventions: Sequence["Intervention"] = (),
               batch_size: int = 16) -> Iterator[torch.Tensor]:
        """One scalar loss per batch (lower is better), differentiable through `interventions`:
        the task's own `loss`, else the cross-entropy of each clean prompt's answer token at
        its answer position (this needs a model with an LM head)."""
        if self.loss is not None:
            for i, value in enumerate(self.loss(model, interventions)):
                if not isinstance(value, torch.Tensor) or value.ndim != 0:
                    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise ValueError(f"task {self.name!r}: its loss must yield one scalar tensor per batch (the mean "
                                     f"over the batch), got {shape} for batch {i}")
                yield value
            return
        self._require_pairs("it has no answers for a cross-entropy loss; give it a loss function")
        _check_batch_size(batch_size)
        _require_lm_head(model, self)
        for start in range(0, self.batch, batch_size):
            part = self.rows(slice(start, start + batch_size))
            logits = self._answer_logits(model, part, interventions)
            yield torch.nn.functional.cross_entropy(logits, part.answer.to(logits.device))

    def evaluate(self, model: "HookedModel", interventions: Sequence["Intervention"] = (),
                 batch_size: int = 16) -> float:
        """The task's score (higher is better), without gradients: its own `score`, else the
        mean of its metric over the clean prompts. A non-finite score is an error."""
        if self.score is not None:
            value = self.score(model, interventions)
        else:
            self._require_pairs("it has no prompts to score")
            _check_batch_size(batch_size)
            _require_lm_head(model, self)
            metric, values = self.metric_fn(), []
            with torch.no_grad():
                for start in range(0, self.batch, batch_size):
                    part = self.rows(slice(start, start + batch_size))
                    values.append(metric(self._answer_logits(model, part, interventions), part).double())
            value = torch.cat(values).mean().item()
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"task {self.name!r}: its score must be a finite number, got {value!r}")
        return float(value)

    @staticmethod
    def _answer_logits(model: "HookedModel", part: "Task", interventions) -> Float[torch.Tensor, "batch d_vocab"]:
        logits = model.run(part.clean, interventions=interventions)[0]
        index = torch.arange(logits.shape[0], device=logits.device)
        return logits[index, part.answer_pos.to(logits.device)].float()


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def _require_lm_head(model: "HookedModel", task: Task) -> None:
    if not model.cfg.has_lm_head:
        raise ValueError(f"task {task.name!r} is scored on next-token logits, but {model.cfg.name} has no LM head "
                         f"(its output is hidden states, not logits); use a task with its own loss and score, "
                         f"e.g. analyses.sentence_pairs.sentence_pair_task for a sentence encoder")


METRICS: dict[str, MetricFn] = {"logit_diff": logit_diff, "accuracy": accuracy}
