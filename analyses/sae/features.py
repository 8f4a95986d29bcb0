"""Feature tables: the data behind SAE feature pages, computed over a corpus.

    acts = sae_activations(model, sae, texts)        # one pass: every non-zero latent of every used token
    tables = feature_tables(model, sae, texts)       # or feature_tables(model, sae, acts)
    tables.features.sort_values("density")           # one row per feature
    tables.search("Mary")                            # features whose tokens mention "Mary"
    tables.feature(12)                               # every table's rows of feature 12
    path = tables.save("runs/")                      # an "sae-features" bundle, the SAE included
    sae = load_sae_from_bundle(path)
    acts.token_f1({"Mary": [id_mary], ...})          # the best feature for each set of tokens

The site, the used tokens (special tokens and padding excluded) and the z reshape are those of
training and evaluation (`analyses.sae.store`, `analyses.sae.evals`).

Tables (pandas), one row per ...:

- `features` (feature): `density` (fraction of used tokens where the latent is non-zero),
  `max_activation`, `mean_activation` (over the tokens where it fires), `top_tokens` (the
  tokens with the largest summed activation, best first), `top_promoted` / `top_suppressed`
  (the largest / smallest logit effects), and for attention SAEs `top_head`, `top_head_share`;
- `top_contexts` (feature, rank): the `n_top_contexts` largest activations: `prompt`, `position`,
  `activation`, `token`, and the context around it: `context_tokens`, `context_activations`
  (this feature's activation at each context token; NaN on tokens the SAE never reads, such as
  BOS), `context_start` (position of the first context token), `context_index` (where the
  firing token sits in the context);
- `histograms` (feature, bin): counts of the non-zero activations in `n_bins` equal bins from 0
  to the feature's max activation;
- `logit_effects` (feature, kind, rank): the decoder row's direct effect on the logits per unit
  of activation, d_i @ W_U (TransformerLens's processed W_U in pre-norm models: the final norm's
  scale folded in, centred; the raw W_U otherwise). d_i is W_dec[i] for SAEs at residual-width
  sites (resid_*, attn_out, mlp_in, mlp_out); for z SAEs it goes through W_O first:
  sum_h W_dec[i, block h] @ W_O[h]. The `n_logit_tokens` most promoted and most suppressed tokens;
- for SAEs on z: `head_shares` (feature, head) from `analyses.sae.attention.head_shares`, and
  `top_sources` (feature, context rank, head, source): at the feature's `n_source_contexts` top
  contexts, the `n_sources` (head, source position) pairs with the largest |contribution| to the
  pre-activation (direct feature attribution, `analyses.sae.attention`).

F1 of a feature for a set of tokens (`token_f1`): over the used tokens, a token is a true
positive when its id is in the set and the feature is non-zero there; precision = TP / tokens
where the feature fires, recall = TP / tokens of the set, F1 = 2 TP / (fired + in set).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from analyses.sae.attention import (attention_inputs, attention_sae_heads, encoder_direction, head_shares,
                                    source_contributions)
from analyses.sae.base import SAE
from analyses.sae.evals import check_sae_fits
from analyses.sae.saelens_io import inference_state_dict, sae_from_tensors
from analyses.sae.sites import check_finite, check_site, flat, sae_site
from analyses.sae.store import corpus_tokens, excluded_ids, kept_positions, positive_int
from analyses.sae_specs import SAE_FEATURES
from interp.models import HookedModel, Site
from interp.results import Meta, Result, read_bundle
from interp.results.registry import Analysis

SAE_BUNDLES = ("sae-train", "sae-features", "sae")  # "sae": the name of sae-features bundles before 0.3


@dataclass
class CorpusActivations:
    """An SAE's non-zero latents over a corpus.

    tokens, keep [prompt, pos] (keep: the used tokens, numbered 0.. in row-major order), lengths
    [prompt] (real tokens of each prompt, padding excluded); `token_index`, `feature`, `value`
    [nnz]: each non-zero latent (sorted by token index)."""

    site: Site
    d_sae: int
    tokens: torch.Tensor
    keep: torch.Tensor
    lengths: torch.Tensor
    token_index: torch.Tensor
    feature: torch.Tensor
    value: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.keep.sum())

    @property
    def token_ids(self) -> torch.Tensor:
        """[n_tokens] the id of each used token."""
        return self.tokens[self.keep]

    def fired(self) -> torch.Tensor:
        """[d_sae] number of used tokens on which each feature is non-zero."""
        return torch.bincount(self.feature, minlength=self.d_sae)

    def density(self) -> torch.Tensor:
        return self.fired().double() / self.n_tokens

    def token_f1(self, groups: Mapping[str, int | Collection[int]]) -> pd.DataFrame:
        """For each named set of token ids, the feature with the best F1 (module docstring):
        one row per group: group, n_tokens, feature, f1, precision, recall."""
        if not groups:
            raise ValueError("token_f1 needs at least one group of token ids")
        d_vocab = int(max(self.tokens.max().item(), *(max(_ids(v)) for v in groups.values()))) + 1
        group_of = torch.full((d_vocab,), -1, dtype=torch.long)
        names = list(groups)
        for g, name in enumerate(names):
            ids = torch.tensor(_ids(groups[name]))
            taken = group_of[ids] >= 0
            if taken.any():
                raise ValueError(f"groups must not share token ids: {ids[taken].tolist()} of {name!r} are in another group")
            group_of[ids] = g
        token_group = group_of[self.token_ids]
        positives = torch.bincount(token_group[token_group >= 0], minlength=len(names))
        absent = [names[g] for g in range(len(names)) if positives[g] == 0]
        if absent:
            raise ValueError(f"no used token of the corpus belongs to the group(s) {absent[:10]}: their F1 is undefined")
        g = token_group[self.token_index]
        hit = g >= 0
        tp = torch.bincount(g[hit] * self.d_sae + self.feature[hit], minlength=len(names) * self.d_sae)
        tp = tp.view(len(names), self.d_sae).double()
        fired = self.fired().double()
        f1 = 2 * tp / (positives[:, None].double() + fired[None, :])
        best = f1.argmax(1)
        rows = torch.arange(len(names))
        return pd.DataFrame({"group": names, "n_tokens": positives.tolist(), "feature": best.tolist(),
                             "f1": f1[rows, best].tolist(),
                             "precision": (tp[rows, best] / fired[best].clamp_min(1)).tolist(),
                             "recall": (tp[rows, best] / positives.double()).tolist()})


def _ids(value) -> list[int]:
    ids = [value] if isinstance(value, int) else list(value)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"a group is a token id or a non-empty collection of token ids (ints >= 0), got {value!r}")
    return ids


@torch.no_grad()
def sae_activations(model: HookedModel, sae: SAE, corpus: Sequence[str] | torch.Tensor, *, site: Site | str | None = None,
                    attention_mask: torch.Tensor | None = None, prompts_per_forward: int = 32,
                    exclude_special_tokens: bool | Collection[int] = True, progress: bool = True) -> CorpusActivations:
    """Run `corpus` and encode every used token's activation at the SAE's site (one pass)."""
    site = check_site(model, sae_site(sae, site))
    check_sae_fits(model, sae, site)
    positive_int(prompts_per_forward, "prompts_per_forward")
    tokens, real = corpus_tokens(model, corpus, attention_mask)
    keep = kept_positions(tokens, real, excluded_ids(model, exclude_special_tokens))
    if not keep.any():
        raise ValueError(f"the corpus ({len(tokens)} prompts) has no tokens left once special tokens and padding "
                         f"are excluded")
    lengths = real.sum(1)
    parts, offset = [], 0
    for start in tqdm(range(0, len(tokens), prompts_per_forward), disable=not progress, desc="SAE features", leave=False):
        rows = slice(start, start + prompts_per_forward)
        width = int(lengths[rows].max())
        kp = keep[rows, :width].to(model.device)
        _, cache = model.run(tokens[rows, :width].to(model.device), capture=[site],
                             attention_mask=real[rows, :width].long().to(model.device), stop_early=True)
        x = flat(cache[site], site)[kp].float()
        check_finite(x, site, f" (prompts {start}..{start + int(kp.shape[0]) - 1} of the corpus)")
        f = sae.encode(x)
        index, feature = f.nonzero(as_tuple=True)
        parts.append((index.cpu() + offset, feature.cpu(), f[index, feature].float().cpu()))
        offset += len(x)
    token_index, feature, value = (torch.cat(p) for p in zip(*parts))
    return CorpusActivations(site, sae.cfg.d_sae, tokens, keep, lengths, token_index, feature, value)


@dataclass
class FeatureTables(Result):
    """Per-feature data of an SAE over a corpus (module docstring). `features` is the table to
    sort and search; the others hold the feature pages' details. A `Result` of the registered
    analysis "sae-features"."""

    spec: ClassVar[Analysis] = SAE_FEATURES

    sae: SAE
    site: Site
    model_name: str
    n_prompts: int
    n_tokens: int
    features: pd.DataFrame
    top_contexts: pd.DataFrame
    histograms: pd.DataFrame
    logit_effects: pd.DataFrame
    head_shares: pd.DataFrame | None = None
    top_sources: pd.DataFrame | None = None
    parameters: dict = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        names = ("features", "top_contexts", "histograms", "logit_effects", "head_shares", "top_sources")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def search(self, text: str) -> pd.DataFrame:
        """Rows of `features` whose top tokens, promoted or suppressed tokens contain `text`
        (case-insensitive), or whose id is `text`."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"search needs a non-empty string, got {text!r}")
        needle = text.strip().lower()
        hit = pd.Series(False, index=self.features.index)
        for column in ("top_tokens", "top_promoted", "top_suppressed"):
            hit |= self.features[column].map(lambda tokens: any(needle in t.lower() for t in tokens))
        if needle.isdigit():
            hit |= self.features["feature"] == int(needle)
        return self.features[hit]

    def feature(self, i: int) -> dict[str, pd.DataFrame]:
        """Every table's rows of feature `i` (a feature page's data)."""
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.sae.cfg.d_sae:
            raise IndexError(f"feature must be an int in [0, {self.sae.cfg.d_sae - 1}], got {i!r}")
        return {name: table[table["feature"] == i].reset_index(drop=True) for name, table in self.tables().items()}

    def meta(self) -> Meta:
        return Meta(model=self.model_name, parameters={"site": str(self.site), "n_prompts": self.n_prompts,
                                                       "n_tokens": self.n_tokens, **self.parameters},
                    extra={"sae_cfg": self.sae.cfg.inference_dict()})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The SAE's tensors (SAELens's names) and each feature's density."""
        return {**inference_state_dict(self.sae), "feature_density": torch.tensor(self.features["density"].values)}


def load_sae_from_bundle(path: str | os.PathLike, *, device: str = "cpu", dtype: str | None = None) -> SAE:
    """The SAE stored in an `sae train` or `sae features` bundle (`SAETraining.save`,
    `FeatureTables.save`)."""
    bundle = read_bundle(path)
    if bundle.meta.get("analysis") not in SAE_BUNDLES or "sae_cfg" not in bundle.meta:
        raise ValueError(f"{path} is not an SAE bundle (analysis {bundle.meta.get('analysis')!r}, "
                         f"{'no' if 'sae_cfg' not in bundle.meta else 'with'} sae_cfg)")
    names = [n for n in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if n in bundle.tensor_names]
    return sae_from_tensors(bundle.meta["sae_cfg"], {n: bundle.tensor(n) for n in names}, f"bundle {path}",
                            device=device, dtype=dtype)


# ---- the tables -------------------------------------------------------------------------------------


def feature_directions(model: HookedModel, sae: SAE, site: Site) -> torch.Tensor:
    """[d_sae, d_model]: what one unit of each feature writes into the residual stream."""
    w_dec = sae.W_dec.detach().float()
    if site.kind != "z":
        return w_dec
    heads = attention_sae_heads(model, site)
    w_o = model.W_O(site.layer).float()[heads]  # [head, d_head, d_model]
    return torch.einsum("fhe,hed->fd", w_dec.view(sae.cfg.d_sae, len(heads), -1), w_o.to(w_dec.device))


def logit_effects(model: HookedModel, sae: SAE, site: Site, n: int, chunk: int = 1024) -> pd.DataFrame:
    """The n most promoted and suppressed tokens of each feature (module docstring)."""
    w_u = model.W_U(processed=model.cfg.pre_ln).float()
    directions = feature_directions(model, sae, site).to(w_u.device)
    n = min(n, w_u.shape[1])
    rows = {"feature": [], "kind": [], "rank": [], "token_id": [], "effect": []}
    for start in range(0, len(directions), chunk):
        effects = directions[start:start + chunk] @ w_u
        for kind, largest in (("promoted", True), ("suppressed", False)):
            top = effects.topk(n, dim=-1, largest=largest)
            count = top.values.numel()
            rows["feature"] += (torch.arange(start, start + len(effects))[:, None].expand(-1, n)).flatten().tolist()
            rows["kind"] += [kind] * count
            rows["rank"] += list(range(n)) * len(effects)
            rows["token_id"] += top.indices.flatten().tolist()
            rows["effect"] += top.values.flatten().tolist()
    frame = pd.DataFrame(rows)
    frame.insert(4, "token", model.tokenizer.convert_ids_to_tokens(frame["token_id"].tolist()))
    return frame


def _top_per_feature(acts: CorpusActivations, n: int):
    """(feature, rank, token index, value) of each feature's n largest activations."""
    order = torch.argsort(acts.value, descending=True, stable=True)
    order = order[torch.argsort(acts.feature[order], stable=True)]
    feature = acts.feature[order]
    starts = torch.cumsum(acts.fired(), 0) - acts.fired()
    rank = torch.arange(len(order)) - starts[feature]
    chosen = rank < n
    return feature[chosen], rank[chosen], acts.token_index[order][chosen], acts.value[order][chosen]


def top_contexts(acts: CorpusActivations, tokenizer, n: int, before: int, after: int) -> pd.DataFrame:
    feature, rank, index, value = _top_per_feature(acts, n)
    prompt_of, position_of = acts.keep.nonzero(as_tuple=True)
    index_of = torch.full(acts.keep.shape, -1, dtype=torch.long)
    index_of[acts.keep] = torch.arange(acts.n_tokens)
    keys = acts.token_index * acts.d_sae + acts.feature  # sorted: token index first, then feature
    keys, key_order = torch.sort(keys)
    key_values = acts.value[key_order]
    rows = {name: [] for name in ("feature", "rank", "prompt", "position", "activation", "token", "context_tokens",
                                  "context_activations", "context_start", "context_index")}
    for f, r, i, v in zip(feature.tolist(), rank.tolist(), index.tolist(), value.tolist()):
        p, q = int(prompt_of[i]), int(position_of[i])
        lo, hi = max(0, q - before), min(int(acts.lengths[p]), q + after + 1)
        ids = acts.tokens[p, lo:hi]
        idx = index_of[p, lo:hi]
        lookup = idx.clamp_min(0) * acts.d_sae + f
        at = torch.searchsorted(keys, lookup).clamp_max(len(keys) - 1)
        found = keys[at] == lookup
        context = torch.where(found, key_values[at], torch.zeros(())).double()
        context[idx < 0] = float("nan")
        for name, val in (("feature", f), ("rank", r), ("prompt", p), ("position", q), ("activation", v),
                          ("token", tokenizer.convert_ids_to_tokens(int(acts.tokens[p, q]))),
                          ("context_tokens", tokenizer.convert_ids_to_tokens(ids.tolist())),
                          ("context_activations", context.tolist()), ("context_start", lo), ("context_index", q - lo)):
            rows[name].append(val)
    return pd.DataFrame(rows)


def histograms(acts: CorpusActivations, n_bins: int) -> pd.DataFrame:
    top = torch.zeros(acts.d_sae).scatter_reduce(0, acts.feature, acts.value, "amax", include_self=True)
    scale = top[acts.feature].clamp_min(1e-30)
    bins = (acts.value / scale * n_bins).long().clamp(0, n_bins - 1)
    counts = torch.bincount(acts.feature * n_bins + bins, minlength=acts.d_sae * n_bins).view(acts.d_sae, n_bins)
    feature, b = counts.nonzero(as_tuple=True)
    width = top[feature] / n_bins
    return pd.DataFrame({"feature": feature.tolist(), "bin": b.tolist(), "bin_start": (b * width).tolist(),
                         "bin_end": ((b + 1) * width).tolist(), "count": counts[feature, b].tolist()})


def top_tokens(acts: CorpusActivations, tokenizer, n: int) -> list[list[str]]:
    """For each feature, the n token strings with the largest summed activation."""
    ids = acts.token_ids[acts.token_index]
    pairs, inverse = torch.unique(acts.feature * (int(acts.tokens.max()) + 1) + ids, return_inverse=True)
    sums = torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, inverse, acts.value.double())
    pair_feature, pair_token = pairs // (int(acts.tokens.max()) + 1), pairs % (int(acts.tokens.max()) + 1)
    order = torch.argsort(sums, descending=True, stable=True)
    order = order[torch.argsort(pair_feature[order], stable=True)]
    out: list[list[int]] = [[] for _ in range(acts.d_sae)]
    for f, t in zip(pair_feature[order].tolist(), pair_token[order].tolist()):
        if len(out[f]) < n:
            out[f].append(t)
    return [tokenizer.convert_ids_to_tokens(ids) for ids in out]


@torch.no_grad()
def top_sources(model: HookedModel, sae: SAE, acts: CorpusActivations, n_contexts: int, n_sources: int,
                prompts_per_forward: int) -> pd.DataFrame:
    """At each feature's top contexts, the (head, source) pairs with the largest |contribution|."""
    site = acts.site
    heads = attention_sae_heads(model, site)
    feature, rank, index, _ = _top_per_feature(acts, n_contexts)
    prompt_of, position_of = acts.keep.nonzero(as_tuple=True)
    prompt, query = prompt_of[index], position_of[index]
    real_len = acts.lengths
    rows = {name: [] for name in ("feature", "context_rank", "prompt", "query_position", "head", "source_position",
                                  "source_token", "contribution")}
    needed = torch.unique(prompt)
    for start in range(0, len(needed), prompts_per_forward):
        chunk = needed[start:start + prompts_per_forward]
        width = int(real_len[chunk].max())
        tokens = acts.tokens[chunk, :width].to(model.device)
        mask = torch.arange(width)[None, :] < real_len[chunk][:, None]
        pattern, values, _ = attention_inputs(model, site, tokens, mask.to(model.device))
        for local, p in enumerate(chunk.tolist()):
            for j in (prompt == p).nonzero(as_tuple=True)[0].tolist():
                f, q = int(feature[j]), int(query[j])
                direction, _ = encoder_direction(sae, f, len(heads))
                c = source_contributions(pattern[local, :, q:q + 1], values[local], direction.to(values.device))[0]
                k = min(n_sources, c.numel())
                top = c.flatten().abs().topk(k).indices
                h, s = top // c.shape[1], top % c.shape[1]
                rows["feature"] += [f] * k
                rows["context_rank"] += [int(rank[j])] * k
                rows["prompt"] += [p] * k
                rows["query_position"] += [q] * k
                rows["head"] += [heads[i] for i in h.tolist()]
                rows["source_position"] += s.tolist()
                rows["source_token"] += model.tokenizer.convert_ids_to_tokens(acts.tokens[p, s.cpu()].tolist())
                rows["contribution"] += c.flatten()[top].tolist()
    return pd.DataFrame(rows).sort_values(["feature", "context_rank"], kind="stable").reset_index(drop=True)


def feature_tables(model: HookedModel, sae: SAE, corpus: Sequence[str] | torch.Tensor | CorpusActivations, *,
                   site: Site | str | None = None, attention_mask: torch.Tensor | None = None, n_top_contexts: int = 10,
                   context_before: int = 10, context_after: int = 3, n_bins: int = 30, n_logit_tokens: int = 10,
                   n_top_tokens: int = 5, n_source_contexts: int = 1, n_sources: int = 5, prompts_per_forward: int = 32,
                   exclude_special_tokens: bool | Collection[int] = True, progress: bool = True) -> FeatureTables:
    """The feature tables of `sae` over `corpus` (texts, a token tensor, or the `CorpusActivations`
    of an earlier `sae_activations` call); see the module docstring."""
    for name, value in (("n_top_contexts", n_top_contexts), ("n_bins", n_bins), ("n_logit_tokens", n_logit_tokens),
                        ("n_top_tokens", n_top_tokens), ("n_source_contexts", n_source_contexts),
                        ("n_sources", n_sources), ("prompts_per_forward", prompts_per_forward)):
        positive_int(value, name)
    for name, value in (("context_before", context_before), ("context_after", context_after)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if isinstance(corpus, CorpusActivations):
        acts = corpus
        if site is not None and check_site(model, site) != acts.site:
            raise ValueError(f"the activations were taken at {acts.site}, not at {site}")
        check_sae_fits(model, sae, acts.site)
        if acts.d_sae != sae.cfg.d_sae:
            raise ValueError(f"the activations are of an SAE with d_sae={acts.d_sae}, this one has {sae.cfg.d_sae}")
    else:
        acts = sae_activations(model, sae, corpus, site=site, attention_mask=attention_mask,
                               prompts_per_forward=prompts_per_forward, exclude_special_tokens=exclude_special_tokens,
                               progress=progress)
    tok = model.tokenizer
    fired = acts.fired()
    density = fired.double() / acts.n_tokens
    max_act = torch.zeros(acts.d_sae).scatter_reduce(0, acts.feature, acts.value, "amax", include_self=True)
    sums = torch.zeros(acts.d_sae, dtype=torch.float64).index_add_(0, acts.feature, acts.value.double())
    effects = logit_effects(model, sae, acts.site, n_logit_tokens)
    best = {kind: effects[effects["kind"] == kind].groupby("feature")["token"].apply(list) for kind in ("promoted", "suppressed")}
    features = pd.DataFrame({
        "feature": range(acts.d_sae), "density": density.tolist(),
        "log10_density": torch.log10(density.clamp_min(1e-10)).tolist(), "max_activation": max_act.tolist(),
        "mean_activation": (sums / fired.clamp_min(1)).tolist(), "top_tokens": top_tokens(acts, tok, n_top_tokens),
        "top_promoted": [best["promoted"][f][:5] for f in range(acts.d_sae)],
        "top_suppressed": [best["suppressed"][f][:5] for f in range(acts.d_sae)]})
    shares = sources = None
    if acts.site.kind == "z":
        heads = attention_sae_heads(model, acts.site)
        share = head_shares(sae, len(heads))
        features["top_head"] = [heads[i] for i in share.argmax(1).tolist()]
        features["top_head_share"] = share.max(1).values.tolist()
        shares = pd.DataFrame({"feature": torch.arange(acts.d_sae).repeat_interleave(len(heads)).tolist(),
                               "head": heads * acts.d_sae, "share": share.flatten().tolist()})
        sources = top_sources(model, sae, acts, n_source_contexts, n_sources, prompts_per_forward)
    return FeatureTables(
        sae=sae, site=acts.site, model_name=model.cfg.name, n_prompts=len(acts.tokens), n_tokens=acts.n_tokens,
        features=features, top_contexts=top_contexts(acts, tok, n_top_contexts, context_before, context_after),
        histograms=histograms(acts, n_bins), logit_effects=effects, head_shares=shares, top_sources=sources,
        parameters={"n_top_contexts": n_top_contexts, "context_before": context_before, "context_after": context_after,
                    "n_bins": n_bins, "n_logit_tokens": n_logit_tokens, "exclude_special_tokens":
                    exclude_special_tokens if isinstance(exclude_special_tokens, bool) else sorted(exclude_special_tokens)})
