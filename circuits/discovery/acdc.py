"""ACDC (Conmy et al., 2023): automatic circuit discovery by pruning edges one at a time.

Receivers are visited from the output back (the logits, then each layer's MLP and its heads'
value, key and query inputs, last layer first); each receiver's incoming edges are tried in
reverse order of their senders. An edge is removed for good when removing it (its receiver
reads the ablated sender, corrupted by default) raises the loss by less than `threshold`:

    loss(circuit without the edge) - loss(current circuit) < threshold

with loss = KL(full model || circuit) at the answer position (default), or the negated task
metric. Removed edges stay removed, so later decisions see them.

As in Conmy et al.'s implementation, a receiver whose node no longer sends any edge in the
circuit is not tried: removing its incoming edges cannot change the output, so they go
without a run (score 0).

Batched, with the sequential algorithm's decisions: the candidates of one receiver run
together as cumulative removals (variant j drops candidates 1..j), which is what the
sequential walk evaluates as long as every earlier candidate is removed; at the first kept
candidate, the variants after it are discarded and run again from the new state. Each run
recomputes only the receiver's node and what it reaches through the circuit's edges
(`interp.patching.circuit_state`); the sequential reference runs the whole masked model once
per edge.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from interp.models import HookedModel
from interp.patching import Task
from interp.patching.circuit_state import CircuitState
from interp.patching.edges import CircuitRunner, EdgeLayout


def acdc(model: HookedModel, task: Task, threshold: float, loss: str = "kl", ablation: str = "patching",
         batched: bool = True, memory_budget: int | None = None, progress: bool = True,
         runner: CircuitRunner | None = None) -> tuple[EdgeLayout, torch.Tensor, torch.Tensor]:
    """Run ACDC; returns `(layout, in_graph [n_senders, n_receivers] bool, scores)` where
    `scores[s, r]` is the loss change measured when the edge was tried (NaN off-edges).

    `batched=False` runs the plain sequential algorithm (one masked run of the whole model per
    edge tried): the reference the batched algorithm must agree with. Edges into a receiver
    whose node sends no edge any more are removed untried, with score 0.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    if loss not in ("kl", "metric"):
        raise ValueError(f"loss must be 'kl' (divergence from the full model) or 'metric' (the negated task "
                         f"metric), got {loss!r}")
    runner = runner or CircuitRunner(model, task, ablation, memory_budget)
    layout = runner.layout

    def losses(finals: torch.Tensor) -> torch.Tensor:
        """The loss of each variant `[N]` from its final-normed residuals `[N, B, d_model]`."""
        values = runner.kl_of(finals) if loss == "kl" else -runner.metric_of(finals)
        return values.mean(1).cpu()

    state = CircuitState(runner)
    scores = torch.full(layout.exists.shape, float("nan"))
    with torch.no_grad():
        loss_now = float(losses(runner.engine.f.final(state.final_in)[None]))
    for r in tqdm(range(len(layout.receivers) - 1, -1, -1), desc="ACDC", disable=not progress):
        candidates = state.mask[:, r].nonzero()[:, 0].flip(0).tolist()  # senders, last first
        if not state.connected(r):
            scores[candidates, r] = 0.0
            state.mask[:, r] = False
            continue
        i = 0
        while i < len(candidates):
            chunk = candidates[i:i + (runner.chunk if batched else 1)]
            columns = state.mask[:, r].unsqueeze(0).repeat(len(chunk), 1)
            for j in range(len(chunk)):
                columns[j:, chunk[j]] = False  # variant j removes chunk[0..j]
            with runner.engine.sweeping():
                if batched:
                    variants = state.try_receiver(r, columns)
                    tried = losses(variants.final)
                else:
                    masks = state.mask.unsqueeze(0).clone()
                    masks[0, :, r] = columns[0]
                    tried = losses(runner.final(masks))
            for j, s in enumerate(chunk):
                change = float(tried[j]) - loss_now
                scores[s, r] = change
                i += 1
                if change < threshold:
                    loss_now = float(tried[j])
                    if batched:
                        state.accept(variants, j)
                    else:
                        state.mask[s, r] = False
                else:
                    break  # the variants after a kept edge assumed it removed: run them again
    return layout, state.mask.cpu(), scores
