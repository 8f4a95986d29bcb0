"""Per-head attention patterns on a few prompts, with QK/OV summaries: what a head's page shows.

    result = head_patterns(load_model("zoo/induction-2l"))   # 4 repeated-random-span probes
    result.to_frame()        # prompt, layer, head, query, key, value, query_token, key_token
    result.circuits          # layer, head, qk_norm, ov_norm, ov_copying
    result.save("runs")      # bundle, analysis "head-patterns"

QK/OV summaries, on the raw weights (no LayerNorm, no biases), one row per query head (under
grouped-query attention with the key/value head it reads: `W_K(l, h)`, `W_V(l, h)`):

- qk_norm, ov_norm: Frobenius norms of W_Q W_Kᵀ and W_V W_O.
- ov_copying: the copying score of Elhage et al. (2021) of the full OV circuit
  W_E W_V W_O W_U, Σ Re λ / Σ |λ| over its eigenvalues: +1 for a head that copies every token
  it attends to, −1 for one that suppresses it. The nonzero eigenvalues of the vocab × vocab
  product equal those of the d_head × d_head matrix W_O (W_U W_E) W_V, which is what is
  computed. U is W_U, or the tied W_Eᵀ for encoders without an LM head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int

from interp.models import HookedModel
from interp.patching import Task
from interp.results import Meta, Result
from interp.results.registry import Analysis

from .heads import make_probe
from .rollout import attention_patterns
from .specs import HEAD_PATTERNS, MAX_PATTERN_PROMPTS, HeadPatternsConfig


def head_patterns(model: HookedModel, prompts: Sequence[str] | Int[torch.Tensor, "batch pos"] | None = None
                  ) -> "HeadPatterns":
    """Every head's attention on `prompts` (texts or token ids `[batch, pos]`, at most 8: the
    full patterns are kept; default: 4 probes of a random span of 8 plain tokens written
    twice, where previous-token and induction heads show) and the QK/OV summaries of every
    head."""
    if prompts is None:
        prompts = make_probe(model, n_sequences=4, span=8).tokens
    if len(prompts) == 0:
        raise ValueError("head_patterns needs at least one prompt")
    if len(prompts) > MAX_PATTERN_PROMPTS:
        raise ValueError(f"head_patterns keeps every head's full pattern, so it takes at most {MAX_PATTERN_PROMPTS} "
                         f"prompts; got {len(prompts)}")
    attention = attention_patterns(model, prompts)
    return HeadPatterns(model_name=model.cfg.name, patterns=attention.patterns, str_tokens=attention.str_tokens,
                        circuits=circuit_summary(model))


def run(model: HookedModel, config: HeadPatternsConfig, task: Task | None = None, *,
        progress: bool = True) -> "HeadPatterns":
    """The registered analysis "head-patterns" (`analyses.specs`)."""
    return head_patterns(model, list(config.texts) or None)


def circuit_summary(model: HookedModel) -> pd.DataFrame:
    """One row per head: layer, head, qk_norm, ov_norm, ov_copying (see the module docstring)."""
    rows = []
    with torch.no_grad():
        ue = model.W_U().float() @ model.W_E().float()  # [d_model, d_model]: W_U W_E, summed over the vocabulary
        for layer in range(model.cfg.n_layers):
            W_Q, W_K = model.W_Q(layer).float(), model.W_K(layer).float()
            W_V, W_O = model.W_V(layer).float(), model.W_O(layer).float()
            for head in range(model.cfg.n_heads):
                small = W_O[head] @ ue @ W_V[head]  # [d_head, d_head]
                eig = torch.linalg.eigvals(small.double())
                rows.append({"layer": layer, "head": head,
                             "qk_norm": torch.linalg.matrix_norm(W_Q[head] @ W_K[head].T).item(),
                             "ov_norm": torch.linalg.matrix_norm(W_V[head] @ W_O[head]).item(),
                             "ov_copying": (eig.real.sum() / eig.abs().sum().clamp_min(1e-30)).item()})
    return pd.DataFrame(rows)


@dataclass
class HeadPatterns(Result):
    """`patterns [layer, prompt, head, q, k]` (zero past each prompt's real tokens),
    `str_tokens[p]` the real tokens of prompt p, `circuits` the QK/OV summary table.
    `figure(prompt=, layer=, head=)` draws one head's pattern."""

    spec: ClassVar[Analysis] = HEAD_PATTERNS

    model_name: str
    patterns: Float[torch.Tensor, "layer prompt head q k"]
    str_tokens: list[list[str]]
    circuits: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        """One row per (prompt, layer, head, query, key) over real tokens: the attention
        weight (`value`) and the two tokens."""
        frames = []
        n_layers, _, n_heads = self.patterns.shape[:3]
        for prompt, tokens in enumerate(self.str_tokens):
            n = len(tokens)
            grid = self.patterns[:, prompt, :, :n, :n]  # [layer, head, q, k]
            layer, head, query, key = torch.meshgrid(*(torch.arange(s) for s in grid.shape), indexing="ij")
            frames.append(pd.DataFrame({
                "prompt": prompt, "layer": layer.flatten().numpy(), "head": head.flatten().numpy(),
                "query": query.flatten().numpy(), "key": key.flatten().numpy(), "value": grid.flatten().numpy(),
                "query_token": [tokens[q] for q in query.flatten().tolist()],
                "key_token": [tokens[k] for k in key.flatten().tolist()]}))
        return pd.concat(frames, ignore_index=True)

    def meta(self) -> Meta:
        return Meta(model=self.model_name, parameters={"n_prompts": len(self.str_tokens)},
                    extra={"str_tokens": self.str_tokens})

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"patterns": self.to_frame(), "qk_ov": self.circuits}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"patterns": self.patterns}
