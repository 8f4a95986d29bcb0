"""The backend protocol: what the model layer needs from whatever runs the model.

A backend runs token batches through one model with a list of interventions and returns
the output and the captured activations, keyed by `Site`. It also hands the model layer the
Hugging Face module whose parameters the weight views read. Analyses never see a backend:
they call `HookedModel`, which delegates here, so a second backend (nnsight, for models on
several GPUs or on a remote server) slots in without touching any analysis.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import nn

from ..interventions import Intervention
from ..sites import Site


class Backend(Protocol):
    name: str

    @property
    def hf_model(self) -> nn.Module:
        """The Hugging Face module underneath (read by `architectures.read_weights`)."""

    def run(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None,
            interventions: Sequence[Intervention], capture: Sequence[Site], stop_early: bool = False
            ) -> tuple[torch.Tensor | None, dict[Site, torch.Tensor]]:
        """One forward pass of `tokens [batch, pos]` (already checked) with `interventions`
        applied, in order per site. Returns the output (logits `[batch, pos, d_vocab]`, or
        final hidden states for an encoder without a language-model head) and each site of
        `capture` (all heads; after that site's interventions). Gradients flow when enabled.
        With `stop_early` the backend may stop once every captured and edited site is computed
        (the captured values are the same); the output is then None."""

    def supports(self, site: Site, intervene: bool) -> str | None:
        """None when `site` can be captured (or intervened on); otherwise why not."""
