"""Validating MAPS scores against what the heads do in a forward pass (Elhelo & Geva, 2024;
docs/methods.md §4).

Dynamic validation. Each source token s is placed in neutral templates ("This is a document
about {}"). At the last real position q, head (l, h)'s output is `z[q, h] · W_O[l, h]` (its
share of the attention output, without b_O); projected through U it ranks the vocabulary, and
the head's dynamic score for relation R is the fraction of (pair, template) instances whose
target is in the top-k of that projection, with the static score's k (1 for copying, 10
otherwise). Two settings:

- with context: the model's own attention;
- without context: in every head of every layer, the last query row attends only to the
  source token, so the head's output is its OV circuit applied to the source's residual
  stream (which, for the source itself, then holds nothing from other tokens: every way
  other tokens reach it goes through its own, now forced, attention row). The forcing is
  done on z: `z[q, h] := v[source, kv(h)]`, which is exactly a one-hot attention row on the
  source (z = Σ_k A[q, k] v[k]), and works on every architecture (TransformerLens's bridge
  ignores edits of attention patterns on encoders such as BERT).

U is W_U for models with an LM head and the tied token embedding W_E^T for encoders without
one (minilm), as for the static scores; no final LayerNorm is applied, like the static map.
For encoders, "last position" is the last real token before [SEP]; the templates here end
with the source word, so for them it is the source token itself.

The static-vs-dynamic agreement is the Pearson r across all heads, per relation.

Causal validation (causal LMs with an LM head only): the relation's accuracy is the fraction
of (pair, template) instances whose target is among the model's top-k next-token
predictions after a template that asks for it ("The capital of {} is"). The top-m heads by
static score are ablated cumulatively (zero or mean ablation of their z) and compared with
m random heads (seeded draws from all heads).

    from analyses.maps import dynamic_validation, causal_validation
    dyn = dynamic_validation(load_model("minilm"), ["country_to_capital", "name_copying"])
    dyn.to_frame()        # relation, r_without_context, r_with_context, n_pairs, n_heads
    cau = causal_validation(model, ["country_to_capital"], {"country_to_capital": ["The capital of {} is"]}, m=5)
    cau.to_frame()        # relation, m, top_accuracy, random_accuracy_mean/std, baseline_accuracy
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from scipy import stats
from tqdm.auto import tqdm

from interp.models import HookedModel, Intervention, Patch, sites
from interp.models.ablation import ablation, z_means
from interp.patching import Task

from ..specs import MapsValidationConfig
from .relations import MIN_PAIRS, Pairs, Relation, load_relation
from .scores import check_k, config_relations, hit_rate, maps_scores, resolve_relations, unembedding_note
from .validation_result import CausalValidation, DynamicValidation

DEFAULT_TEMPLATES = ("This is a document about {}", "This text is about {}", "Here is a short note about {}")
# Prompts after which a relation's target is the right next token, one per built-in relation,
# for `causal_validation` on language models (written for this project).
CAUSAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "adj_antonym": ("The opposite of {} is",),
    "adj_comparative": ("The comparative form of {} is",),
    "adj_superlative": ("The superlative form of {} is",),
    "country_to_capital": ("The capital of {} is",),
    "country_to_official_language": ("The official language of {} is",),
    "english_to_french": ("The French word for {} is",),
    "english_to_spanish": ("The Spanish word for {} is",),
    "entity_to_pronoun": ("The {} said that",),
    "general_copying": ("The word is {}. Again, the word is",),
    "name_copying": ("My name is {}. Again, my name is",),
    "object_superclass": ("A {} is a kind of",),
    "product_by_company": ("The {} is a product made by",),
    "verb_past_tense": ("Today I {}. Yesterday I",),
    "word_first_letter": ("The word {} begins with the letter",),
    "word_last_letter": ("The word {} ends with the letter",),
    "word_to_compound": ("Compound word: {}",),
    "word_to_homophone": ("The word {} sounds the same as",),
    "word_to_synonym": ("Another word for {} is",),
    "work_location": ("A {} works in a",),
    "year_to_following": ("The year after {} is",),
}
RelationsArg = Sequence[str] | Mapping[str, Pairs] | Sequence[Relation] | None
TemplatesArg = Sequence[str] | Mapping[str, Sequence[str]]


# ---------------------------------------------------------------------------- inputs


def copying_relation(tokenizer, words: Sequence[str] | None = None, name: str = "vocab_copying",
                     min_pairs: int = MIN_PAIRS) -> Relation | None:
    """A copying relation (each word -> itself, k = 1) over `words`, by default every
    non-special token of the tokenizer's vocabulary (for small word-level vocabularies such
    as the zoo models', where the English relations hardly tokenize). None, with a warning,
    when fewer than `min_pairs` words are single tokens."""
    if words is None:
        special = set(tokenizer.all_special_ids)
        vocab = tokenizer.get_vocab()
        words = [tokenizer.decode([i]).strip() for i in sorted(vocab.values()) if i not in special]
    words = list(dict.fromkeys(w for w in words if w))
    return load_relation(name, tokenizer, pairs=[(w, w) for w in words], min_pairs=min_pairs, k=1)


def _relations(model: HookedModel, relations: RelationsArg, min_pairs: int, max_pairs: int | None,
               seed: int) -> list[Relation]:
    """Load relations as `maps_scores` does; keep at most `max_pairs` pairs of each (a seeded
    random subset, in the original order)."""
    MapsValidationConfig(min_pairs=min_pairs, max_pairs=max_pairs, seed=seed)  # checks them
    rels = resolve_relations(model, relations, min_pairs)
    if max_pairs is None:
        return rels
    gen = torch.Generator().manual_seed(seed)
    out = []
    for rel in rels:
        if rel.n_usable > max_pairs:
            keep = torch.randperm(rel.n_usable, generator=gen)[:max_pairs].sort().values
            rel = dataclasses.replace(rel, pairs=[rel.pairs[i] for i in keep.tolist()],
                                      source_ids=rel.source_ids[keep], target_ids=rel.target_ids[keep])
        out.append(rel)
    return out


@dataclass(frozen=True)
class TemplateBatch:
    """One template filled with many source tokens.

    `tokens` `[n, pos]` (specials included); `source_pos` is where the source token sits and
    `last_pos` the last real token (the last before [SEP] for encoders), the same in every row.
    """

    template: str
    tokens: Int[torch.Tensor, "n pos"]
    source_pos: int
    last_pos: int


def template_tokens(model: HookedModel, template: str, source_ids: Int[torch.Tensor, "n"]) -> TemplateBatch:
    """Fill `template` (text with one "{}") with each source token, as token ids.

    The text around "{}" is tokenized on its own and the source id is put in between, so the
    source stays the single token the relation loader found (a word after another word:
    " Paris" for GPT-2's BPE). The model's own special tokens (BOS, or [CLS] ... [SEP]) frame
    the sequence as `model.to_tokens` would. Warns when the template's words are unknown to
    the tokenizer.
    """
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"a template must be a string with exactly one '{{}}' for the source word, got {template!r}")
    tok = model.tokenizer
    before, after = template.split("{}")
    prefix = tok.encode(before.rstrip(), add_special_tokens=False) if before.strip() else []
    suffix = tok.encode(after, add_special_tokens=False) if after.strip() else []
    if tok.unk_token_id is not None and tok.unk_token_id in prefix + suffix:
        warnings.warn(f"template {template!r} has words unknown to {model.cfg.name}'s tokenizer "
                      f"(they become {tok.unk_token!r})", stacklevel=3)
    n = source_ids.shape[0]
    if n == 0:
        raise ValueError("template_tokens needs at least one source token")
    head, tail = _special_frame(model, int(source_ids[0]))
    row = lambda ids: torch.tensor(ids, dtype=torch.long).expand(n, len(ids))  # noqa: E731
    tokens = torch.cat([row(head + prefix), source_ids.reshape(n, 1).cpu(), row(suffix + tail)], dim=1)
    source_pos = len(head) + len(prefix)
    return TemplateBatch(template, tokens, source_pos, tokens.shape[1] - 1 - len(tail))


def _special_frame(model: HookedModel, probe_id: int) -> tuple[list[int], list[int]]:
    """The special tokens `model.to_tokens` puts before and after a text, found by framing
    the text of one ordinary token (`probe_id`)."""
    text = model.tokenizer.decode([probe_id])
    plain = model.tokenizer.encode(text, add_special_tokens=False)
    framed = model.to_tokens(text)[0].tolist()
    for start in range(len(framed) - len(plain) + 1):
        if plain and framed[start:start + len(plain)] == plain:
            return framed[:start], framed[start + len(plain):]
    raise ValueError(f"cannot tell which special tokens {model.cfg.name} adds around a text: "
                     f"{text!r} is {plain} alone and {framed} framed")


def _templates_for(name: str, templates: TemplatesArg) -> list[str]:
    if isinstance(templates, str):
        raise ValueError(f"templates must be a list of strings or a dict relation -> list, got the string {templates!r}")
    if isinstance(templates, Mapping):
        if name not in templates:
            raise ValueError(f"no template for relation {name!r}; templates were given for: {', '.join(templates)}")
        templates = templates[name]
    templates = list(templates)
    if not templates:
        raise ValueError(f"relation {name!r} needs at least one template")
    return templates


def _chunks(n: int, size: int):
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {size}")
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ---------------------------------------------------------------------------- dynamic


def last_position_z(model: HookedModel, batch: TemplateBatch, rows: slice = slice(None), *,
                    forced: bool) -> Float[torch.Tensor, "layer n head d_head"]:
    """Every head's z at `batch.last_pos` (float32).

    forced=True: in every layer, the last query row attends only to `batch.source_pos`:
    z[last, h] := v[source, kv(h)] (the key/value head query head h reads), the same as a
    one-hot attention row. Layer l's values depend on the forcing in layers < l only, so they
    are read layer by layer: run l forces layers 0..l-1 (`Patch` of z at the last position)
    and captures layer l's values. One run per layer; without forcing, one run in all."""
    tokens = batch.tokens[rows]
    layers = range(model.cfg.n_layers)
    with torch.no_grad():
        if not forced:
            _, cache = model.run_with_cache(tokens, sites=[sites.z(layer) for layer in layers])
            return torch.stack([cache.z(layer)[:, batch.last_pos].float() for layer in layers])
        group = model.cfg.n_heads // model.cfg.n_kv_heads
        forced_z, patches = [], []
        for layer in layers:
            _, cache = model.run(tokens, interventions=patches, capture=[sites.v(layer)])
            z_last = cache.v(layer)[:, batch.source_pos].repeat_interleave(group, dim=1)  # [n, head, d_head]
            forced_z.append(z_last.float())
            full = z_last.new_zeros(tokens.shape[0], tokens.shape[1], *z_last.shape[1:])
            full[:, batch.last_pos] = z_last
            patches.append(Patch(sites.z(layer), positions=batch.last_pos, source=full))
    return torch.stack(forced_z)


def head_logits(z: Float[torch.Tensor, "n head d_head"], W_O: Float[torch.Tensor, "head d_head d_model"],
                U: Float[torch.Tensor, "d_model d_vocab"]) -> Float[torch.Tensor, "head n d_vocab"]:
    """Each head's output `z · W_O[h]` projected through U."""
    return torch.einsum("nhe,hed->hnd", z, W_O) @ U


def dynamic_validation(
    model: HookedModel,
    relations: RelationsArg = None,
    *,
    templates: TemplatesArg = DEFAULT_TEMPLATES,
    embedding: str = MapsValidationConfig.embedding,
    min_pairs: int = MapsValidationConfig.min_pairs,
    max_pairs: int | None = MapsValidationConfig.max_pairs,
    seed: int = MapsValidationConfig.seed,
    batch_size: int = MapsValidationConfig.batch_size,
    progress: bool = True,
) -> DynamicValidation:
    """Static MAPS scores against dynamic scores with and without context, for every head.

    Args:
        model: any loaded model (causal LM, or encoder: U is then the tied W_E^T).
        relations: as for `maps_scores` (None: the 20 built-in relations).
        templates: texts with one "{}" for the source word, used for every relation, or a
            dict relation -> its templates. The source's position and the last real
            position are read off each template (see `template_tokens`).
        embedding: static scores' source embedding, "E" or "mlp0" (see `maps_scores`).
        min_pairs: relations with fewer usable pairs are skipped with a warning.
        max_pairs: score at most this many pairs per relation (a seeded random subset).
        batch_size: sources per forward pass.

    Returns a `DynamicValidation`: static and both dynamic scores `[layer, head, relation]`
    and, per relation, the Pearson r between static and dynamic scores across all heads.
    """
    MapsValidationConfig(embedding=embedding, batch_size=batch_size)  # checks them
    rels = _relations(model, relations, min_pairs, max_pairs, seed)
    static = maps_scores(model, rels, embedding=embedding, progress=False)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    U = model.W_U().float()
    W_O = [model.W_O(layer).float() for layer in range(n_layers)]
    dynamic = {mode: torch.zeros(n_layers, n_heads, len(rels)) for mode in (True, False)}

    groups: dict[tuple[str, ...], list[int]] = {}   # relations sharing their templates share runs
    for i, rel in enumerate(rels):
        groups.setdefault(tuple(_templates_for(rel.name, templates)), []).append(i)
    steps = tqdm(total=sum(len(t) for t in groups) * 2, desc="MAPS dynamic", disable=not progress)
    for group_templates, members in groups.items():
        sources, inverse = torch.unique(torch.cat([rels[i].source_ids for i in members]), return_inverse=True)
        positions = inverse.split([rels[i].n_usable for i in members])
        k_max = max(rels[i].k for i in members)
        for template in group_templates:
            batch = template_tokens(model, template, sources)
            for forced in (True, False):
                top = torch.empty(n_layers, n_heads, len(sources), k_max, dtype=torch.long)
                for rows in _chunks(len(sources), batch_size):
                    z = last_position_z(model, batch, rows, forced=forced)        # [layer, n, head, d_head]
                    for layer in range(n_layers):
                        top[layer, :, rows] = head_logits(z[layer], W_O[layer], U).topk(k_max, dim=-1).indices.cpu()
                for j, i in enumerate(members):
                    for layer in range(n_layers):
                        dynamic[forced][layer, :, i] += hit_rate(top[layer], positions[j], rels[i].target_ids,
                                                                 rels[i].k) / len(group_templates)
                steps.update()
    steps.close()
    templates_used = {rel.name: _templates_for(rel.name, templates) for rel in rels}
    return DynamicValidation(
        static=static.scores, without_context=dynamic[True], with_context=dynamic[False],
        relations=[r.name for r in rels], k=[r.k for r in rels], n_pairs=[r.n_usable for r in rels],
        templates=templates_used, model_name=model.cfg.name, unembedding=unembedding_note(model),
        embedding=embedding, max_pairs=max_pairs, seed=seed)


# ---------------------------------------------------------------------------- causal


def _require_causal_lm(model: HookedModel) -> None:
    if not (model.cfg.is_causal and model.cfg.has_lm_head):
        raise ValueError(f"causal validation needs a causal language model with an LM head (it measures next-token "
                         f"accuracy); {model.cfg.name} ({model.cfg.architecture}) is "
                         f"{'without an LM head' if model.cfg.is_causal else 'an encoder'}. "
                         f"Use dynamic_validation for encoders.")


def _ablation(model: HookedModel, heads: Sequence[int], means: Float[torch.Tensor, "layer pos head d_head"] | None
              ) -> list[Intervention]:
    """Zero (means=None) or mean ablation of flat heads (layer * n_heads + head), through
    `interp.models.ablation`."""
    pairs = [divmod(int(flat), model.cfg.n_heads) for flat in heads]
    return ablation(model, pairs, kind="zero" if means is None else "mean", means=means)


def _accuracy(model: HookedModel, batches: Sequence[TemplateBatch], targets: Int[torch.Tensor, "n"],
              heads: Sequence[int], k: int, means: Sequence | None, batch_size: int) -> float:
    """Fraction of (pair, template) instances whose target is in the top-k next tokens."""
    hits, count = 0, 0
    for b, batch in enumerate(batches):
        interventions = _ablation(model, heads, None if means is None else means[b])
        for rows in _chunks(batch.tokens.shape[0], batch_size):
            with torch.no_grad():
                logits = model.run(batch.tokens[rows], interventions=interventions)[0][:, batch.last_pos]
            top = logits.topk(k, dim=-1).indices.cpu()
            hits += int((top == targets[rows, None]).any(-1).sum())
            count += top.shape[0]
    return hits / count


def causal_validation(
    model: HookedModel,
    relations: RelationsArg,
    templates: TemplatesArg | None = None,
    *,
    m: int = MapsValidationConfig.m,
    n_random: int = MapsValidationConfig.n_random,
    seed: int = MapsValidationConfig.seed,
    ablation: str = MapsValidationConfig.ablation,
    k: int = MapsValidationConfig.k,
    embedding: str = MapsValidationConfig.embedding,
    min_pairs: int = MapsValidationConfig.min_pairs,
    max_pairs: int | None = MapsValidationConfig.max_pairs,
    batch_size: int = MapsValidationConfig.batch_size,
    progress: bool = True,
) -> CausalValidation:
    """Accuracy on each relation after ablating its top-1 ... top-m heads by static score,
    against m random heads.

    Args:
        model: a causal LM with an LM head (encoders raise a ValueError).
        relations: as for `maps_scores`.
        templates: prompts with one "{}" for the source, after which the target is the right
            next token ("The capital of {} is"): one list for every relation, or a dict
            relation -> list; default `CAUSAL_TEMPLATES` (one prompt per built-in relation).
        m: ablate 1, 2, ..., m heads (cumulatively, best first).
        n_random: random draws; draw d ablates the first 1 ... m heads of a seeded random
            permutation of all heads.
        ablation: "zero" (z := 0) or "mean" (z := its mean over the relation's prompts of the
            same template, at each position).
        k: a pair counts as right when its target is among the top-k next tokens.

    Returns a `CausalValidation` (per relation and m: top-m accuracy, random mean and std,
    baseline).
    """
    _require_causal_lm(model)
    MapsValidationConfig(m=m, n_random=n_random, ablation=ablation, k=k, embedding=embedding,
                         batch_size=batch_size)  # checks them
    check_k(model, k, "k (the top next tokens a target must be among)")
    n_total = model.cfg.n_layers * model.cfg.n_heads
    if not 1 <= m <= n_total:
        raise ValueError(f"m must be between 1 and the number of heads ({n_total}), got {m}")
    templates = CAUSAL_TEMPLATES if templates is None else templates
    rels = _relations(model, relations, min_pairs, max_pairs, seed)
    static = maps_scores(model, rels, embedding=embedding, progress=False)

    baseline, top, random = [], torch.zeros(len(rels), m), torch.zeros(len(rels), n_random, m)
    order = []
    for i, rel in enumerate(tqdm(rels, desc="MAPS causal", disable=not progress)):
        batches = [template_tokens(model, t, rel.source_ids) for t in _templates_for(rel.name, templates)]
        means = [z_means(model, b.tokens, batch_size=batch_size) for b in batches] if ablation == "mean" else None
        accuracy = partial(_accuracy, model, batches, rel.target_ids, k=k, means=means, batch_size=batch_size)
        ranked = static.scores[:, :, i].reshape(-1).argsort(descending=True, stable=True)
        order.append(ranked[:m].tolist())
        baseline.append(accuracy(heads=[]))
        for j in range(m):
            top[i, j] = accuracy(heads=ranked[: j + 1].tolist())
        gen = torch.Generator().manual_seed(seed)
        for d in range(n_random):
            perm = torch.randperm(n_total, generator=gen)
            for j in range(m):
                random[i, d, j] = accuracy(heads=perm[: j + 1].tolist())
    return CausalValidation(
        relations=[r.name for r in rels], n_pairs=[r.n_usable for r in rels], baseline=torch.tensor(baseline),
        top=top, random=random, top_heads=[[divmod(f, model.cfg.n_heads) for f in o] for o in order],
        static=static.scores, templates={r.name: _templates_for(r.name, templates) for r in rels},
        model_name=model.cfg.name, ablation=ablation, k=k, seed=seed, embedding=embedding)


# ---------------------------------------------------------------------------- head importance on a task


def head_ablation_effects(model: HookedModel, task: Task, *, ablation: str = "zero",
                          batch_size: int = 64) -> Float[torch.Tensor, "layer head"]:
    """Drop of the task's mean metric (on its clean prompts) when one head's z is ablated:
    `metric(clean) - metric(head ablated)`, for every head (positive: the head helps).

    ablation "mean": z := its mean over the task's clean prompts at each position."""
    MapsValidationConfig(ablation=ablation, batch_size=batch_size)  # checks them
    task.to("cpu")  # refuses a task without token pairs
    means = z_means(model, task.clean, batch_size=batch_size) if ablation == "mean" else None
    metric = task.metric_fn()

    def mean_metric(heads: Sequence[int]) -> float:
        interventions, picked = _ablation(model, heads, means), []
        for rows in _chunks(task.batch, batch_size):
            with torch.no_grad():
                logits = model.run(task.clean[rows], interventions=interventions)[0]
            picked.append(logits[torch.arange(logits.shape[0]), task.answer_pos[rows].to(logits.device)].float())
        return float(metric(torch.cat(picked), task).mean())

    base = mean_metric([])
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    return torch.tensor([base - mean_metric([f]) for f in range(n_layers * n_heads)]).reshape(n_layers, n_heads)


def run_validation(model: HookedModel, config: MapsValidationConfig, task: Task | None = None, *,
                   progress: bool = True) -> DynamicValidation | CausalValidation:
    """The registered analysis "maps-validation" (`analyses.specs`): dynamic or causal, as
    `config.validation` says."""
    c = config
    relations = config_relations(model, c.relations, c.vocab_copying, c.min_pairs)
    if c.validation == "dynamic":
        return dynamic_validation(model, relations, templates=list(c.templates) or DEFAULT_TEMPLATES,
                                  embedding=c.embedding, min_pairs=c.min_pairs, max_pairs=c.max_pairs, seed=c.seed,
                                  batch_size=c.batch_size, progress=progress)
    return causal_validation(model, relations, list(c.templates) or None, m=c.m, n_random=c.n_random, seed=c.seed,
                             ablation=c.ablation, k=c.k, embedding=c.embedding, min_pairs=c.min_pairs,
                             max_pairs=c.max_pairs, batch_size=c.batch_size, progress=progress)


def top_heads(scores: Float[torch.Tensor, "layer head"], top: int) -> list[tuple[int, int]]:
    """The heads whose score is strictly above the (top+1)-th highest: the `top` best, or
    fewer when heads tie across the cut (no tie is broken arbitrarily). Best first."""
    flat = scores.reshape(-1).double()
    order = flat.argsort(descending=True, stable=True)
    cut = flat[order[top]] if top < len(flat) else -torch.inf
    n_heads = scores.shape[-1]
    return [divmod(int(f), n_heads) for f in order[:top] if flat[f] > cut]


def rank_agreement(a: Float[torch.Tensor, "layer head"], b: Float[torch.Tensor, "layer head"],
                   top: int = 5) -> dict:
    """How much two per-head scores agree: Spearman rho across all heads (ties get average
    ranks; NaN when either score is constant), and the overlap of their `top_heads`."""
    if a.shape != b.shape:
        raise ValueError(f"scores must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    x, y = a.reshape(-1).double().numpy(), b.reshape(-1).double().numpy()
    rho = float(stats.spearmanr(x, y).statistic) if np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")
    top_a, top_b = top_heads(a, top), top_heads(b, top)
    return {"spearman": rho, "top": top, "top_a": top_a, "top_b": top_b,
            "top_overlap": len(set(top_a) & set(top_b))}
