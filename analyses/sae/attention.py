"""Attention-output SAEs attributed to heads (Kissane et al., 2024; docs/methods.md §6).

An SAE on a layer's z of all heads concatenated (site `z(l)`, d_in = n_heads * d_head,
head-major) has decoder rows W_dec[i] = [block_0 | block_1 | ... ], one block of d_head per head.

- `head_shares(sae, n_heads)` [d_sae, n_heads]: each head's share of feature i's decoder norm,
  ||block_h|| / sum_h' ||block_h'|| (Kissane et al.'s weight-based head attribution; rows sum to 1).
- `source_attribution(model, sae, prompts, feature)`: direct feature attribution by source
  position. z at query q of head h is sum_s A_h[q, s] v_s, with v_s the value vector of the
  key/value head that h reads (under grouped-query attention several query heads share one).
  The feature's pre-activation is linear in z:
      pre_i[q] = sum_h sum_s A_h[q, s] (v_s . W_enc[block h, i])  +  (b_enc[i] - b_dec . W_enc[:, i])
  so `contributions[b, q, h, s] = A_h[q, s] (v_s . W_enc[block h, i])`, and the contributions
  plus `bias` (the second bracket; b_enc[i] alone when the SAE does not subtract b_dec from its
  input) add up to the pre-activation. For an SAE on one head's z (`z(l, h)`) the same holds
  with that head alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from analyses.sae.base import SAE
from analyses.sae.evals import check_sae_fits
from analyses.sae.sites import check_finite, check_site, flat, sae_site
from analyses.sae.store import corpus_tokens
from interp.models import HookedModel, Site, sites


def head_shares(sae: SAE, n_heads: int) -> torch.Tensor:
    """[d_sae, n_heads]: ||W_dec[i, block h]|| / sum_h' ||W_dec[i, block h']|| for an SAE on the
    concatenated z of `n_heads` heads (head-major blocks of d_in / n_heads)."""
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive integer, got {n_heads!r}")
    if sae.cfg.d_in % n_heads:
        raise ValueError(f"an SAE on the z of {n_heads} heads has d_in = n_heads * d_head; d_in={sae.cfg.d_in} is "
                         f"not a multiple of {n_heads}")
    norms = sae.W_dec.detach().float().view(sae.cfg.d_sae, n_heads, -1).norm(dim=-1)
    return norms / norms.sum(-1, keepdim=True).clamp_min(1e-30)


def attention_sae_heads(model: HookedModel, site: Site) -> list[int]:
    """The query heads an SAE at a z site reads: all of the layer's, or the site's one head."""
    if site.kind != "z":
        raise ValueError(f"head attribution is for SAEs on attention z (z(l) or z(l, h)), got an SAE at {site}")
    return list(range(model.cfg.n_heads)) if site.head is None else [site.head]


def source_contributions(pattern: torch.Tensor, values: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """pattern [..., head, q, src], values [..., src, head, d_head] (one per query head),
    direction [head, d_head] -> [..., q, head, src]: pattern[h, q, s] * (values[s, h] . direction[h])."""
    projected = torch.einsum("...shd,hd->...hs", values, direction)  # [..., head, src]
    return (pattern * projected[..., None, :]).transpose(-3, -2)


@dataclass
class SourceAttribution:
    """One feature's pre-activation split by head and source position.

    contributions [batch, q, head, src] (heads as in `heads`), bias (a number), pre [batch, q]
    (the SAE's own pre-activation of the feature on the run's z), tokens and mask [batch, pos]
    (mask False on padding)."""

    feature: int
    site: Site
    heads: list[int]
    contributions: torch.Tensor
    bias: float
    pre: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor

    def total(self) -> torch.Tensor:
        """sum over heads and sources + bias [batch, q]: equals `pre` (up to rounding)."""
        return self.contributions.sum((-2, -1)) + self.bias

    def top(self, prompt: int, query: int, n: int = 10, tokenizer=None) -> pd.DataFrame:
        """The n largest |contributions| at one query: head, source, contribution (and the source's token)."""
        c = self.contributions[prompt, query]
        n = min(n, c.numel())
        top = c.flatten().abs().topk(n).indices
        rows = {"head": [self.heads[i // c.shape[1]] for i in top.tolist()], "source": (top % c.shape[1]).tolist(),
                "contribution": c.flatten()[top].tolist()}
        if tokenizer is not None:
            rows["source_token"] = tokenizer.convert_ids_to_tokens(self.tokens[prompt, rows["source"]].tolist())
        return pd.DataFrame(rows)


def attention_inputs(model: HookedModel, site: Site, tokens: torch.Tensor, mask: torch.Tensor):
    """One run: (pattern [batch, head, q, src] of the site's heads, values [batch, src, head, d_head]
    of the key/value head each reads, z [batch, q, d_in] as the SAE sees it)."""
    layer = site.layer
    _, cache = model.run_with_cache(tokens, sites=[sites.pattern(layer), sites.v(layer), sites.z(layer)],
                                    attention_mask=mask.long())
    heads = attention_sae_heads(model, site)
    kv = torch.tensor([model.cfg.kv_head(h) for h in heads], device=tokens.device)
    pattern = cache.pattern(layer)[:, heads].float()
    values = cache.v(layer).index_select(2, kv).float()
    z = flat(cache[site], site).float()
    check_finite(z, site)
    return pattern, values, z


def encoder_direction(sae: SAE, feature: int, n_heads: int) -> tuple[torch.Tensor, float]:
    """(W_enc[:, feature] as [head, d_head], the feature's bias term b_enc - b_dec . W_enc[:, feature])."""
    w = sae.W_enc.detach().float()[:, feature]
    bias = sae.b_enc.detach().float()[feature]
    if sae.cfg.apply_b_dec_to_input:
        bias = bias - sae.b_dec.detach().float() @ w
    return w.view(n_heads, -1), float(bias)


def check_feature(sae: SAE, feature) -> int:
    if isinstance(feature, bool) or not isinstance(feature, int):
        raise TypeError(f"feature must be an int in [0, {sae.cfg.d_sae - 1}], got {feature!r}")
    if not 0 <= feature < sae.cfg.d_sae:
        raise IndexError(f"feature {feature} is out of range: the SAE has features 0..{sae.cfg.d_sae - 1}")
    return feature


@torch.no_grad()
def source_attribution(model: HookedModel, sae: SAE, prompts: Sequence[str] | torch.Tensor, feature: int, *,
                       site: Site | str | None = None, attention_mask: torch.Tensor | None = None) -> SourceAttribution:
    """Direct feature attribution by head and source position (module docstring) of `feature`
    of an SAE at z(l) or z(l, h), on `prompts` (texts or a token tensor [batch, pos])."""
    site = check_site(model, sae_site(sae, site))
    heads = attention_sae_heads(model, site)
    check_sae_fits(model, sae, site)
    feature = check_feature(sae, feature)
    tokens, mask = corpus_tokens(model, prompts, attention_mask)
    tokens, mask = tokens.to(model.device), mask.to(model.device)
    pattern, values, z = attention_inputs(model, site, tokens, mask)
    direction, bias = encoder_direction(sae, feature, len(heads))
    direction = direction.to(values.device)
    return SourceAttribution(feature=feature, site=site, heads=heads,
                             contributions=source_contributions(pattern, values, direction), bias=bias,
                             pre=sae.hidden_pre(z)[..., feature].float(), tokens=tokens, mask=mask)
