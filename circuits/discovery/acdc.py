"""ACDC (Conmy et al., 2023): automatic circuit discovery by pruning edges one at a time.

Receivers are visited from the output back (the logits, then each layer's MLP and its heads'
value, key and query inputs, last layer first); each receiver's incoming edges are tried in
reverse order of their senders. An edge is removed for good when removing it (its receiver
reads the ablated sender, corrupted by default) raises the loss by less than `threshold`:

    loss(circuit without the edge) - loss(current circuit) < threshold

with loss = KL(full model || circuit) at the answer position (default), or the negated task
metric. Removed edges stay removed, so later decisions see them.

Batched, with the sequential algorithm's decisions: the candidates of one receiver run
together as cumulative removals (variant j drops candidates 1..j), which is what the
sequential walk evaluates as long as every earlier candidate is removed; at the first kept
candidate, the variants after it are discarded and run again from the new state. Every
masked run starts at the receiver's layer: nothing upstream has changed.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from interp.models import HookedModel
from interp.patching import Task
from interp.patching.edges import CircuitRunner, EdgeLayout


def acdc(model: HookedModel, task: Task, threshold: float, loss: str = "kl", ablation: str = "patching",
         batched: bool = True, memory_budget: int | None = None, progress: bool = True,
         runner: CircuitRunner | None = None) -> tuple[EdgeLayout, torch.Tensor, torch.Tensor]:
    """Run ACDC; returns `(layout, in_graph [n_senders, n_receivers] bool, scores)` where
    `scores[s, r]` is the loss change measured when the edge was tried (NaN off-edges).

    `batched=False` runs the plain sequential algorithm (one masked run of the whole model per
    edge tried): the reference the batched algorithm must agree with.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    if loss not in ("kl", "metric"):
        raise ValueError(f"loss must be 'kl' (divergence from the full model) or 'metric' (the negated task "
                         f"metric), got {loss!r}")
    runner = runner or CircuitRunner(model, task, ablation, memory_budget)
    layout = runner.layout

    def losses(masks: torch.Tensor, start: int) -> torch.Tensor:
        values = runner.kl(masks, start) if loss == "kl" else -runner.metric(masks, start)
        return values.mean(1).cpu()

    current = layout.exists.clone()
    scores = torch.full(layout.exists.shape, float("nan"))
    loss_now = float(losses(current[None], 0)[0])
    order = range(len(layout.receivers) - 1, -1, -1)
    for r in tqdm(order, desc="ACDC", disable=not progress):
        start = layout.receiver_layer[r] if batched else 0
        candidates = [s for s in range(len(layout.senders) - 1, -1, -1) if current[s, r]]
        i = 0
        while i < len(candidates):
            chunk = candidates[i:i + (runner.chunk if batched else 1)]
            masks = current.unsqueeze(0).repeat(len(chunk), 1, 1)
            for j in range(len(chunk)):
                masks[j:, chunk[j], r] = False  # variant j removes chunk[0..j]
            tried = losses(masks, start)
            for j, s in enumerate(chunk):
                change = float(tried[j]) - loss_now
                scores[s, r] = change
                i += 1
                if change < threshold:
                    current[s, r] = False
                    loss_now = float(tried[j])
                else:
                    break  # the variants after a kept edge assumed it removed: run them again
    return layout, current, scores
