"""Static MAPS scores: how well each head's OV circuit, read through the vocabulary, implements
each relation (Elhelo & Geva, 2024; docs/methods.md §4).

For head (l, h), M = E · W_V W_O · U is a |V| × |V| map from a source token to a score for
every target token, on the checkpoint's raw weights (no LayerNorm, no biases, no folding).
score(R) is the fraction of pairs (s, t) of relation R whose target t is among the top-k
entries of M[s, :]; the suppression score does the same on -M.

M is never materialised. Only the rows of the source tokens in play are computed, in chunks,
all heads of a layer at once, through the factorisation M[S] = (E[S] W_V) (W_O U): W_O U is
`[head, d_head, d_vocab]`, as many numbers as U itself when n_heads * d_head = d_model.

    result = maps_scores(load_model("minilm"))      # all 20 relations, every head
    result.top("name_copying")                      # best heads first
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from interp.models import HookedModel
from interp.patching import Task

from ..specs import EMBEDDINGS, MapsConfig
from .relations import MIN_PAIRS, Pairs, Relation, load_relations
from .result import MapsResult

DEFAULT_MAX_BYTES = 256 * 2**20


def unembedding_note(model: HookedModel) -> str:
    """What U is for this model, for the record."""
    return "W_U" if model.cfg.has_lm_head else "tied W_E (encoder without LM head)"


def resolve_relations(model: HookedModel, relations, min_pairs: int = MIN_PAIRS, k: int | None = None
                      ) -> list[Relation]:
    """`relations` as loaded `Relation`s for `model`'s tokenizer: a list of `Relation`s is kept
    as is; names, a {name: pairs} mapping or None (all built-in relations) are loaded (`k`
    overrides their top-k). Raises when none has `min_pairs` usable single-token pairs, or
    when a relation's k exceeds the vocabulary."""
    if relations is not None and len(relations) > 0 and all(isinstance(r, Relation) for r in relations):
        rels = list(relations)
    else:
        rels = load_relations(model.tokenizer, relations, min_pairs=min_pairs, k=k)
    if not rels:
        raise ValueError(f"no relation has at least {min_pairs} usable single-token pairs for {model.cfg.name}")
    check_k(model, max(r.k for r in rels), "a relation's top-k")
    return rels


def check_k(model: HookedModel, k: int, what: str) -> None:
    """Refuse a top-k beyond the vocabulary (every target would count as a hit)."""
    if k > model.cfg.d_vocab:
        raise ValueError(f"{what} is {k}, but {model.cfg.name}'s vocabulary has only {model.cfg.d_vocab} tokens; "
                         f"k must be at most {model.cfg.d_vocab}")


def source_embeddings(model: HookedModel, token_ids: Int[torch.Tensor, "n"], layer: int,
                      embedding: str = "E") -> Float[torch.Tensor, "n d_model"]:
    """The rows of E a head at `layer` reads for `token_ids` (float32, on the model's device).

    embedding="E": the raw token embeddings. embedding="mlp0": for layers > 0, the first
    MLP's output on the embeddings, mlp0(norm(E)) (`HookedModel.mlp(0, ...)`), as the MAPS
    reference does for GPT-2 (layer 0 keeps E); causal models of every described family.
    Gemma's embedding scale is applied, as block 0 sees it (it changes no top-k of the E map).
    """
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
    x = model.W_E()[token_ids.to(model.device)] * model.weights.embed_scale
    if embedding == "E" or layer == 0:
        return x.float()
    with torch.no_grad():
        return _first_mlp(model, x).float()


def _first_mlp(model: HookedModel, x: Float[torch.Tensor, "n d_model"]) -> Float[torch.Tensor, "n d_model"]:
    try:
        return model.mlp(0, x)
    except ValueError as err:
        raise ValueError(f"embedding='mlp0' runs block 0's MLP on the embeddings, which {model.cfg.name} "
                         f"({model.cfg.architecture}) cannot: {err}") from err


def map_rows(x: Float[torch.Tensor, "n d_model"], W_V: Float[torch.Tensor, "head d_model d_head"],
             W_O: Float[torch.Tensor, "head d_head d_model"], U: Float[torch.Tensor, "d_model d_vocab"],
             max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[tuple[slice, Float[torch.Tensor, "head chunk d_vocab"]]]:
    """Rows `x · W_V W_O · U` of every head's map, in chunks of source rows.

    Yields `(rows, values)`: `values[h, i]` is the map row of `x[rows][i]` for head h. A chunk
    holds at most `max_bytes` of float32 values (at least one row).
    """
    n_heads, d_vocab = W_V.shape[0], U.shape[1]
    xv = torch.einsum("nd,hde->hne", x, W_V)   # [head, n, d_head]
    ou = W_O @ U                               # [head, d_head, d_vocab]
    chunk = max(1, max_bytes // (4 * n_heads * d_vocab))
    for start in range(0, x.shape[0], chunk):
        rows = slice(start, min(start + chunk, x.shape[0]))
        yield rows, xv[:, rows] @ ou


def top_targets(x: Float[torch.Tensor, "n d_model"], W_V: Float[torch.Tensor, "head d_model d_head"],
                W_O: Float[torch.Tensor, "head d_head d_model"], U: Float[torch.Tensor, "d_model d_vocab"],
                k: int, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """The k highest and k lowest targets of each head's map row for each source row.

    Returns `(top, bottom)`, both `[head, n, k]` token ids, best first (bottom: most negative
    first).
    """
    n_heads, n = W_V.shape[0], x.shape[0]
    top = torch.empty(n_heads, n, k, dtype=torch.long, device=x.device)
    bottom = torch.empty_like(top)
    for rows, values in map_rows(x, W_V, W_O, U, max_bytes):
        top[:, rows] = values.topk(k, dim=-1).indices
        bottom[:, rows] = values.topk(k, dim=-1, largest=False).indices
    return top, bottom


def hit_rate(top: Int[torch.Tensor, "head n_sources k"], source_pos: Int[torch.Tensor, "n_pairs"],
             target_ids: Int[torch.Tensor, "n_pairs"], k: int) -> Float[torch.Tensor, "head"]:
    """Per head, the fraction of pairs whose target is among the first k of its source's row."""
    picked = top[:, source_pos, :k]                              # [head, n_pairs, k]
    return (picked == target_ids[None, :, None]).any(-1).float().mean(-1)


def maps_scores(
    model: HookedModel,
    relations: Sequence[str] | Mapping[str, Pairs] | Sequence[Relation] | None = None,
    *,
    embedding: str = MapsConfig.embedding,
    min_pairs: int = MapsConfig.min_pairs,
    k: int | None = MapsConfig.k,
    layers: Sequence[int] | None = MapsConfig.layers,
    salient_heads: Sequence[tuple[int, int]] = MapsConfig.salient,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: bool = True,
) -> MapsResult:
    """Relation and suppression scores of every head for every relation.

    Args:
        model: any loaded model; runs on its device (CPU or CUDA).
        relations: None for the 20 built-in relations; a list of their names; a dict
            name -> (source, target) word pairs; or `Relation`s from `load_relations`.
        embedding: "E" (raw token embeddings) or "mlp0" (see `source_embeddings`).
        min_pairs: relations with fewer usable single-token pairs are skipped with a warning.
        k: top-k of every relation (default: 1 for copying relations, 10 otherwise).
        layers: layers to score (default all, else at least one); the others get NaN.
        salient_heads: (layer, head) pairs whose salient operations are added to the result.
        max_bytes: memory for one chunk of map rows (float32 `[head, chunk, d_vocab]`).

    Returns a `MapsResult` with `scores` and `suppression` `[layer, head, relation]`.
    """
    from .salient import salient_operations

    config = MapsConfig(embedding=embedding, min_pairs=min_pairs, k=k, layers=None if layers is None else tuple(layers),
                        salient=tuple(tuple(h) for h in salient_heads))
    n_layers, n_heads, device = model.cfg.n_layers, model.cfg.n_heads, model.device
    layers = list(range(n_layers)) if config.layers is None else list(config.layers)
    for layer in layers:
        model.W_V(layer)  # checks the range, with the model's own message
    rels = resolve_relations(model, relations, min_pairs, k)
    if embedding == "mlp0":
        _first_mlp(model, model.W_E()[:1])  # refuses models without a plain-tensor MLP before any work

    sources, inverse = torch.unique(torch.cat([r.source_ids for r in rels]), return_inverse=True)
    positions = inverse.to(device).split([r.n_usable for r in rels])
    targets = [r.target_ids.to(device) for r in rels]
    k_max = max(r.k for r in rels)
    U = model.W_U().float()

    scores = torch.full((n_layers, n_heads, len(rels)), float("nan"))
    suppression = scores.clone()
    x_first = source_embeddings(model, sources, 0, embedding)
    x_later = source_embeddings(model, sources, 1, embedding) if embedding == "mlp0" else x_first
    for layer in tqdm(layers, desc="MAPS layers", disable=not progress):
        x = x_first if layer == 0 else x_later
        top, bottom = top_targets(x, model.W_V(layer).float(), model.W_O(layer).float(), U, k_max, max_bytes)
        for i, rel in enumerate(rels):
            scores[layer, :, i] = hit_rate(top, positions[i], targets[i], rel.k).cpu()
            suppression[layer, :, i] = hit_rate(bottom, positions[i], targets[i], rel.k).cpu()

    result = MapsResult(
        scores=scores, suppression=suppression, relations=[r.name for r in rels], k=[r.k for r in rels],
        pairs_usable=[r.n_usable for r in rels], pairs_total=[r.n_total for r in rels],
        model_name=model.cfg.name, unembedding=unembedding_note(model), embedding=embedding,
        convention=rels[0].convention, min_pairs=min_pairs)
    for layer, head in config.salient:
        result.salient[f"L{layer}H{head}"] = salient_operations(model, layer, head, embedding=embedding)
    return result


def run(model: HookedModel, config: MapsConfig, task: Task | None = None, *, progress: bool = True) -> MapsResult:
    """The registered analysis "maps" (`analyses.specs`)."""
    relations = config_relations(model, config.relations, config.vocab_copying, config.min_pairs)
    return maps_scores(model, relations, embedding=config.embedding, min_pairs=config.min_pairs, k=config.k,
                       layers=config.layers, salient_heads=config.salient, progress=progress)


def config_relations(model: HookedModel, names: Sequence[str], vocab_copying: bool, min_pairs: int
                     ) -> list[Relation] | None:
    """The relations a config names: the built-in `names` (all 20 when none), plus the
    vocabulary-copying relation with `vocab_copying` (alone when no names are given)."""
    from .validation import copying_relation

    if not vocab_copying:
        return list(names) or None
    relations = load_relations(model.tokenizer, list(names), min_pairs=min_pairs) if names else []
    copying = copying_relation(model.tokenizer, min_pairs=min_pairs)
    return relations + ([copying] if copying is not None else [])
