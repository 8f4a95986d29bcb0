"""An SAE spliced into its model: reconstruction metrics and the model's loss with the SAE in
place, under SAELens's names.

    result = evaluate_spliced(model, sae, texts)          # the site from sae.cfg.metadata, or site=...
    result.ce_loss_score, result.kl_div_score, result.explained_variance
    logits, _ = model.run(tokens, interventions=[sae_splice(sae)])   # the SAE inside any run

The SAE runs inside the forward pass through a `Splice` intervention at its site: the site's
activation [batch, pos, d_in] (z of all heads flattened [.., head, d_head] -> [.., head * d_head]
and back) is replaced by the reconstruction x_hat at the used tokens. Used tokens are as in
training (`analyses.sae.store`): real tokens that are not special tokens (BOS, EOS, padding, ...)
unless `exclude_special_tokens` says otherwise; elsewhere the activation is left as it was.

Three runs per batch of prompts: clean, SAE spliced, and zero ablation (the site's activation
set to 0 at the same used tokens the SAE replaces). With log p the next-token log-softmax:

- ce_loss_without_sae / ce_loss_with_sae / ce_loss_with_ablation: mean of -log p(next token) over
  the positions t whose token is used and whose next token t+1 is real (SAELens averages over
  non-special positions too; every prompt here is its own sequence, so padding is left out);
- ce_loss_score = (CE_ablation - CE_SAE) / (CE_ablation - CE_clean) (docs/methods.md's "CE loss
  recovered"); delta_lm_loss = CE_SAE - CE_clean;
- kl_div_with_sae / kl_div_with_ablation: mean over used positions of KL(p_clean || p_run) =
  sum_v p_clean (log p_clean - log p_run) (natural log); kl_div_score = (KL_ablation - KL_SAE) / KL_ablation;
- the activation metrics of `analyses.sae.metrics.evaluate` (explained_variance as docs/methods.md
  defines it over the whole set, mse, cossim, l0, l1, l2_ratio, feature density, dead and dense
  latents) on the clean activations of the used tokens: upstream of the site the spliced run is
  the clean run, so these are the activations the SAE replaced.

One difference from SAELens's `run_evals`: its zero ablation zeroes every position, BOS
included; here it zeroes the positions the SAE replaces, so both runs change the same tokens.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from analyses.sae.base import SAE
from analyses.sae.metrics import SAEMetrics, evaluate
from analyses.sae.sites import check_finite, check_site, describe_width, flat, sae_site, site_width
from analyses.sae.store import corpus_tokens, excluded_ids, kept_positions, positive_int
from interp.models import HookedModel, Site, Splice


def check_sae_fits(model: HookedModel, sae: SAE, site: Site) -> None:
    """Refuse an SAE whose d_in is not the width of `site` on `model` (e.g. an SAE of another site)."""
    if not isinstance(sae, SAE):
        raise TypeError(f"sae must be an analyses.sae SAE, got {type(sae).__name__}")
    if sae.cfg.d_in != site_width(model, site):
        trained = sae.cfg.metadata.get("site") or sae.cfg.metadata.get("hook_name")
        origin = f" (it was trained on {trained})" if trained and str(trained) != str(site) else ""
        raise ValueError(f"the SAE has d_in={sae.cfg.d_in}{origin}, but {site} of {model.cfg.name} has activations of "
                         f"width {describe_width(model, site)}")


def sae_splice(sae: SAE, site: Site | str | None = None, keep: torch.Tensor | None = None) -> Splice:
    """A `Splice` that replaces `site`'s activation by the SAE's reconstruction (at the positions
    where `keep` [batch, pos] is True; everywhere when None). The site defaults to the SAE's
    metadata. Refuses, inside the run, activations of the wrong width or with NaN/inf."""
    site = sae_site(sae, site)

    def reconstruct(activation: torch.Tensor) -> torch.Tensor:
        x = flat(activation, site)
        if x.shape[-1] != sae.cfg.d_in:
            raise ValueError(f"the SAE spliced at {site} has d_in={sae.cfg.d_in}, but the activations there have "
                             f"shape {list(activation.shape)} (width {x.shape[-1]})")
        check_finite(x, site)
        x_hat = sae(x).to(x.dtype)
        if keep is not None:
            if tuple(keep.shape) != tuple(x.shape[:2]):
                raise ValueError(f"keep must have the shape [batch, pos] = {list(x.shape[:2])} of the run, "
                                 f"got {list(keep.shape)}")
            x_hat = torch.where(keep.to(x.device)[..., None], x_hat, x)
        return x_hat.reshape(activation.shape)

    return Splice(site, fn=reconstruct)


def zero_ablation(site: Site, keep: torch.Tensor | None = None) -> Splice:
    """A `Splice` that sets `site`'s activation to 0 where `keep` [batch, pos] is True (everywhere when None)."""

    def ablate(activation: torch.Tensor) -> torch.Tensor:
        if keep is None:
            return torch.zeros_like(activation)
        mask = keep.to(activation.device).reshape(*keep.shape, *[1] * (activation.ndim - 2))
        return torch.where(mask, torch.zeros_like(activation), activation)

    return Splice(site, fn=ablate)


@dataclass
class SpliceEvaluation:
    """Metrics of an SAE spliced into its model (module docstring), under SAELens's names."""

    site: Site
    metrics: SAEMetrics  # activation metrics on the used tokens
    ce_loss_without_sae: float
    ce_loss_with_sae: float
    ce_loss_with_ablation: float
    kl_div_with_sae: float
    kl_div_with_ablation: float
    n_tokens: int  # tokens the SAE replaced
    n_predictions: int  # next-token predictions the CE losses average over

    @property
    def ce_loss_score(self) -> float:
        return (self.ce_loss_with_ablation - self.ce_loss_with_sae) / (self.ce_loss_with_ablation - self.ce_loss_without_sae)

    @property
    def kl_div_score(self) -> float:
        return (self.kl_div_with_ablation - self.kl_div_with_sae) / self.kl_div_with_ablation

    @property
    def delta_lm_loss(self) -> float:
        return self.ce_loss_with_sae - self.ce_loss_without_sae

    @property
    def explained_variance(self) -> float:
        return self.metrics.explained_variance

    def scalars(self) -> dict[str, float]:
        """Every number, SAELens's names (plus delta_lm_loss, n_tokens, n_predictions)."""
        return {**self.metrics.scalars(), "ce_loss_score": self.ce_loss_score,
                "ce_loss_without_sae": self.ce_loss_without_sae, "ce_loss_with_sae": self.ce_loss_with_sae,
                "ce_loss_with_ablation": self.ce_loss_with_ablation, "delta_lm_loss": self.delta_lm_loss,
                "kl_div_score": self.kl_div_score, "kl_div_with_sae": self.kl_div_with_sae,
                "kl_div_with_ablation": self.kl_div_with_ablation, "n_predictions": self.n_predictions}

    def to_frame(self) -> pd.DataFrame:
        """One row per metric: metric, value."""
        return pd.DataFrame({"metric": list(self.scalars()), "value": [float(v) for v in self.scalars().values()]})


@torch.no_grad()
def evaluate_spliced(model: HookedModel, sae: SAE, corpus: Sequence[str] | torch.Tensor, *, site: Site | str | None = None,
                     attention_mask: torch.Tensor | None = None, prompts_per_forward: int = 32,
                     exclude_special_tokens: bool | Collection[int] = True, dense_threshold: float = 0.1,
                     progress: bool = True) -> SpliceEvaluation:
    """Run `corpus` (texts or a token tensor [batch, pos], see `analyses.sae.store`) clean, with
    the SAE spliced in at `site` (default: the SAE's metadata) and with the site zero-ablated;
    return the metrics of the module docstring."""
    if not (model.cfg.is_causal and model.cfg.has_lm_head):
        raise ValueError(f"evaluate_spliced measures next-token loss, which needs a causal language model; "
                         f"{model.cfg.name} is {'an encoder' if not model.cfg.is_causal else 'without an LM head'}")
    site = check_site(model, sae_site(sae, site))
    check_sae_fits(model, sae, site)
    positive_int(prompts_per_forward, "prompts_per_forward")
    tokens, real = corpus_tokens(model, corpus, attention_mask)
    keep = kept_positions(tokens, real, excluded_ids(model, exclude_special_tokens))
    if not keep.any():
        raise ValueError(f"the corpus ({len(tokens)} prompts) has no tokens left once special tokens and padding "
                         f"are excluded")
    lengths = real.sum(1)
    sums = dict.fromkeys(("ce_clean", "ce_sae", "ce_abl", "kl_sae", "kl_abl"), 0.0)
    n_pred = n_kept = 0
    kept_activations = []
    for start in tqdm(range(0, len(tokens), prompts_per_forward), disable=not progress, desc="SAE evals", leave=False):
        rows = slice(start, start + prompts_per_forward)
        width = int(lengths[rows].max())
        toks, rl, kp = tokens[rows, :width].to(model.device), real[rows, :width], keep[rows, :width]
        mask = rl.long().to(model.device)
        kp_dev = kp.to(model.device)
        logits_clean, cache = model.run(toks, capture=[site], attention_mask=mask)
        x = flat(cache[site], site)[kp_dev].float()
        check_finite(x, site, f" (prompts {start}..{start + len(toks) - 1} of the corpus)")
        kept_activations.append(x)
        logits_sae, _ = model.run(toks, interventions=[sae_splice(sae, site, kp_dev)], attention_mask=mask)
        logits_abl, _ = model.run(toks, interventions=[zero_ablation(site, kp_dev)], attention_mask=mask)

        logp_clean = torch.log_softmax(logits_clean.float(), dim=-1)
        predicted = (kp[:, :-1] & rl[:, 1:]).to(model.device)
        targets = toks[:, 1:, None]
        for key, logits in (("ce_clean", None), ("ce_sae", logits_sae), ("ce_abl", logits_abl)):
            logp = logp_clean if logits is None else torch.log_softmax(logits.float(), dim=-1)
            nll = -logp[:, :-1].gather(-1, targets)[..., 0]
            sums[key] += nll[predicted].double().sum().item()
            if logits is not None:
                kl = (logp_clean.exp() * (logp_clean - logp)).sum(-1)
                sums["kl_" + key[3:]] += kl[kp_dev].double().sum().item()
        n_pred += int(predicted.sum())
        n_kept += int(kp.sum())
    if n_pred == 0:
        raise ValueError("no used token is followed by a real token: the CE loss has no predictions to average "
                         "(the prompts are too short)")
    return SpliceEvaluation(
        site=site, metrics=evaluate(sae, kept_activations, dense_threshold=dense_threshold),
        ce_loss_without_sae=sums["ce_clean"] / n_pred, ce_loss_with_sae=sums["ce_sae"] / n_pred,
        ce_loss_with_ablation=sums["ce_abl"] / n_pred, kl_div_with_sae=sums["kl_sae"] / n_kept,
        kl_div_with_ablation=sums["kl_abl"] / n_kept, n_tokens=n_kept, n_predictions=n_pred)
