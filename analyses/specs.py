"""The registrations of the analyses of heads (torch-free): for each, its config (the options
and their defaults, stated here once), the tables its bundles hold, its figures, per-head
metrics and head-page views (`analyses.figures`), its demo steps, and its entry point, a
`run` function in its own module, imported only when it runs."""

from __future__ import annotations

from dataclasses import dataclass

from analyses import figures
from interp.results.config import Config, option
from interp.results.registry import (Analysis, Control, Demo, Figure, HeadMetric, HeadView, Table, TaskBuilder,
                                     TaskUse, register, register_task)

KINDS = ("previous_token", "induction", "duplicate_token")
ORDERS = ("once", "exact", "random")
EMBEDDINGS = ("E", "mlp0")
EXAMPLE_TEXTS = ("The cat sat on the mat because it was tired.", "Paris is the capital and largest city of France.")
MAX_FLOW_SCALE = 2**30  # capacities up to (1 + 1e-6) * 2^30 stay below scipy's int32 limit 2^31 - 1
MIN_FLOW_SCALE = 2**20  # coarser rounding moves a flow by more than ~5e-7 per edge of its minimum cut
MIN_PAIRS = 30  # docs/methods.md §4: a relation needs at least 30 usable pairs
MAX_PATTERN_PROMPTS = 8  # head-patterns keeps every head's full pattern on each prompt


# ------------------------------------------------------------------ configs


@dataclass(frozen=True)
class HeadsConfig(Config):
    n_sequences: int = option(64, "probe sequences (a random span written twice)", ge=1)
    span: int = option(20, "length of the repeated random span", ge=2)
    seed: int = option(0, "seed of the probes", ge=0)
    kinds: tuple[str, ...] = option(KINDS, "which scores", choices=KINDS, min_items=1)
    batch_size: int = option(32, "probes per forward pass", ge=1)


@dataclass(frozen=True)
class HeadPatternsConfig(Config):
    texts: tuple[str, ...] = option((), "prompts whose every head's pattern is kept (default: 4 probes of a random "
                                        "span of 8 tokens written twice)", max_items=MAX_PATTERN_PROMPTS)


@dataclass(frozen=True)
class RolloutConfig(Config):
    texts: tuple[str, ...] = option(EXAMPLE_TEXTS, "prompts to explain", min_items=1)


@dataclass(frozen=True)
class FlowConfig(Config):
    texts: tuple[str, ...] = option(EXAMPLE_TEXTS, "prompts to explain", min_items=1)
    layers: tuple[int, ...] | None = option(None, "blocks whose outputs to explain (default all)", ge=0, min_items=1,
                                            index="layer")
    queries: tuple[int, ...] | None = option(None, "output positions to explain (default all)", ge=0, min_items=1)
    scale: int = option(MAX_FLOW_SCALE, "integer scaling of the capacities for scipy's max-flow",
                        ge=MIN_FLOW_SCALE, le=MAX_FLOW_SCALE)


@dataclass(frozen=True)
class AttributionCompareConfig(Config):
    blank_out: str = option("drop", "blank-out importance: the output's drop, or its absolute change",
                            choices=("drop", "abs"))
    gradient: str = option("sum", "input-gradient importance: the paper's |sum over dims| (refused for pre-LayerNorm "
                                  "models, where it is 0) or the gradient's L2 norm", choices=("sum", "norm"))
    scale: int = option(MAX_FLOW_SCALE, "integer scaling of flow capacities", ge=MIN_FLOW_SCALE, le=MAX_FLOW_SCALE)
    batch_size: int = option(32, "prompts per forward pass", ge=1)


@dataclass(frozen=True)
class SinksConfig(Config):
    texts: tuple[str, ...] = option((), "prompts (default: random-token prompts)")
    n_prompts: int = option(32, "random prompts when no texts are given", ge=1)
    length: int | None = option(None, "tokens per random prompt besides BOS/CLS/SEP (default: 63, or what the "
                                      "context allows)", ge=1)
    seed: int = option(0, "seed of the random prompts", ge=0)
    epsilon: float = option(0.3, "sink threshold ε on a head's mean attention to a key", gt=0, lt=1)
    abs_threshold: float = option(100.0, "massive activations: |x| above this", ge=0)
    ratio: float = option(1000.0, "massive activations: |x| above this many times the median |x| of its state", ge=0)
    tau: float = option(20.0, "hidden-state sink threshold τ on φ", gt=0)
    frame_min_rate: float = option(10.0, "percent of heads with a sink at a key for it to anchor the model's frame",
                                   ge=0, le=100)
    batch_size: int = option(32, "prompts per forward pass", ge=1)


@dataclass(frozen=True)
class PruningConfig(Config):
    step: float = option(0.1, "fraction of all heads pruned per step", gt=0, le=1)
    orders: tuple[str, ...] = option(ORDERS, "pruning orders", choices=ORDERS, min_items=1)
    n_random: int = option(3, "random orders averaged", ge=1)
    seed: int = option(0, "seed of the random orders", ge=0)
    max_fraction: float = option(1.0, "prune up to this fraction of the heads", gt=0, le=1)
    metric: str | None = option(None, "score of a next-token task instead of its own metric: mean logit "
                                      "difference or accuracy", choices=("logit_diff", "accuracy"))


@dataclass(frozen=True)
class MapsConfig(Config):
    relations: tuple[str, ...] = option((), "built-in relations to score (default: all 20)")
    vocab_copying: bool = option(False, "add the relation vocab_copying (every vocabulary token -> itself, for small "
                                        "vocabularies such as the zoo models'); alone, it replaces the default 20")
    embedding: str = option("E", "source embedding: the token embedding, or the first MLP's output on it",
                            choices=EMBEDDINGS)
    min_pairs: int = option(MIN_PAIRS, "relations with fewer usable single-token pairs are skipped", ge=1)
    k: int | None = option(None, "top-k for every relation (default: 1 for copying, 10 otherwise)", ge=1)
    layers: tuple[int, ...] | None = option(None, "layers to score (default all)", ge=0, min_items=1, index="layer")
    salient: tuple[tuple[int, int], ...] = option((), "heads (L.H) whose salient operations to list", index="head")


@dataclass(frozen=True)
class MapsValidationConfig(Config):
    validation: str = option("dynamic", "dynamic: static vs in-context scores; causal: ablate each relation's top "
                                        "heads (causal LMs)", choices=("dynamic", "causal"))
    relations: tuple[str, ...] = option((), "built-in relations (default: all 20)")
    vocab_copying: bool = option(False, "add the relation vocab_copying (alone: replaces the default 20)")
    templates: tuple[str, ...] = option((), "prompts with one {} for the source word (default: three neutral ones "
                                            "for dynamic, one per relation for causal)")
    embedding: str = option("E", "source embedding of the static scores", choices=EMBEDDINGS)
    min_pairs: int = option(MIN_PAIRS, "relations with fewer usable pairs are skipped", ge=1)
    max_pairs: int | None = option(None, "at most this many pairs per relation (a seeded subset)", ge=1)
    m: int = option(5, "causal: ablate the top 1..m heads", ge=1)
    n_random: int = option(5, "causal: random draws of m heads", ge=1)
    ablation: str = option("zero", "causal: zero or mean ablation of z", choices=("zero", "mean"))
    k: int = option(1, "causal: a pair counts when its target is among the top-k next tokens", ge=1)
    seed: int = option(0, "seed of the pair subsets and random heads", ge=0)
    batch_size: int = option(64, "sources per forward pass", ge=1)


# ------------------------------------------------------------------ registrations

HEADS = register(Analysis(
    name="heads",
    summary="previous-token, induction and duplicate-token scores of every head",
    how_to_read="Each score is the mean attention a head pays, on a random span written twice, to the one key its "
                "job names (the previous token; the token after the current one's earlier copy; that earlier copy). "
                "Near 1, the head does that job on every token; a uniform head scores about 1/position.",
    run="analyses.heads:run",
    config=HeadsConfig,
    tables=(Table("scores", ("layer", "head", "kind", "score"), "one row per head and kind"),),
    figures=(Figure("scores", figures.draw_detector_scores, needs=("scores",)),),
    head_metrics=(HeadMetric("scores", "score", figures.kind_label, "share of attention", "share", group="kind",
                             how_to_read="The share of its attention the head puts where the pattern says (the "
                                         "previous token, the token after an earlier copy of the current one, ...), "
                                         "averaged over probes: near 1, the head does this; near 0, it does not."),),
    demo=(Demo("head detectors, induction model", ("zoo/induction-2l",)),
          Demo("head detectors, IOI model", ("zoo/ioi-small",)),
          Demo("head detectors, MiniLM", ("minilm",))),
    related=("head-patterns", "patch", "pruning", "sinks"),
))

HEAD_PATTERNS = register(Analysis(
    name="head-patterns",
    summary="every head's attention on a few prompts, with QK/OV norms and OV copying scores",
    how_to_read="Rows are queries, columns the keys they attend to (each row sums to 1). The OV copying score is "
                "+1 for a head whose output raises the logit of the token it attends to, -1 for one that suppresses it.",
    run="analyses.head_patterns:run",
    config=HeadPatternsConfig,
    tables=(Table("patterns", ("prompt", "layer", "head", "query", "key", "value", "query_token", "key_token"),
                  "every head's attention weights on every prompt"),
            Table("qk_ov", ("layer", "head", "qk_norm", "ov_norm", "ov_copying"), "QK/OV summaries per head")),
    figures=(Figure("pattern", figures.draw_pattern, needs=("patterns",),
                    controls=(Control("prompt", "prompt", figures.prompt_options("patterns")),
                              Control("layer", "layer", figures.column_options("patterns", "layer")),
                              Control("head", "head", figures.column_options("patterns", "head")))),),
    head_metrics=(HeadMetric("qk_ov", "ov_copying", "OV copying score", "Σ Re λ / Σ |λ| of the full OV circuit",
                             "signed", how_to_read="From the weights alone: +1, the head's output raises the logit "
                             "of the token it attends to (copying, as name movers do); -1, it lowers it (copy "
                             "suppression); near 0, neither."),),
    head_views=(HeadView("Attention patterns on stored prompts", figures.head_patterns_view, needs=("patterns",)),
                HeadView("QK / OV summaries", figures.qk_ov_view, needs=("qk_ov",))),
    demo=(Demo("attention patterns and QK/OV, induction model", ("zoo/induction-2l",)),
          Demo("attention patterns and QK/OV, IOI model",
               ("zoo/ioi-small", "--texts", "When Mary and John went to the store, John gave a drink to")),
          Demo("attention patterns and QK/OV, MiniLM", ("minilm", "--texts", *EXAMPLE_TEXTS))),
    aliases=("attention-patterns",),
    related=("heads", "maps", "sinks"),
))

_MAPS_TABLE = Table("maps", ("layer", "prompt", "query", "key", "value"),
                    "one row per layer, prompt and (query, key) pair of real tokens (with the tokens when known)")
_TOKEN_MAP = Figure("map", figures.draw_token_map, needs=("maps",),
                    controls=(Control("prompt", "prompt", figures.prompt_options("maps")),
                              Control("layer", "after layer", figures.column_options("maps", "layer"), default="last",
                                      widget="slider")))

ROLLOUT = register(Analysis(
    name="rollout",
    summary="attention rollout (Abnar & Zuidema 2020): how much each position draws on each input token",
    how_to_read="Row i after layer l is how much position i's representation draws on each input token, multiplying "
                "the head-averaged attention (plus the residual) of every layer up to l; rows sum to 1.",
    run="analyses.rollout:run",
    config=RolloutConfig,
    tables=(_MAPS_TABLE,),
    figures=(_TOKEN_MAP,),
    demo=(Demo("attention rollout", ("minilm", "--texts", *EXAMPLE_TEXTS)),),
    related=("flow", "attribution-compare"),
))

FLOW = register(Analysis(
    name="flow",
    summary="attention flow (Abnar & Zuidema 2020): max-flow from each output to each input token",
    how_to_read="Like rollout, but each value is the maximum flow through the layered attention graph, so a path "
                "counts only as much as its narrowest layer; rows sum to 1. After one layer it equals rollout.",
    run="analyses.flow:run",
    config=FlowConfig,
    tables=(_MAPS_TABLE,),
    figures=(_TOKEN_MAP,),
    demo=(Demo("attention flow", ("minilm", "--texts", EXAMPLE_TEXTS[0])),),
    related=("rollout", "attribution-compare"),
))

ATTRIBUTION_COMPARE = register(Analysis(
    name="attribution-compare",
    summary="raw attention, rollout and flow against blank-out and gradient importance (Abnar & Zuidema 2020, "
            "Table 1)",
    how_to_read="Each line is the Spearman correlation, averaged over prompts, between an attention-based map's scores "
                "of the input tokens and the tokens' importance to the output; higher means the map explains the "
                "output better. Open markers are the paper's last-layer numbers.",
    run="analyses.attribution_compare:run",
    config=AttributionCompareConfig,
    tables=(Table("summary", ("layer", "method", "importance", "spearman", "sem", "n_prompts", "paper_last_layer"),
                  "mean ρ per layer, method and importance"),
            Table("per_prompt", ("prompt", "layer", "method", "importance", "spearman", "n_tokens"))),
    figures=(Figure("spearman", figures.draw_spearman, needs=("summary",)),),
    task=TaskUse(required=False, default=None, pairs=True),
    demo=(Demo("attention-based maps against token importance on 8 IOI prompts",
               ("zoo/ioi-small", "--task", "ioi", "--n", "8", "--gradient", "norm")),),
    related=("rollout", "flow"),
))

SINKS = register(Analysis(
    name="sinks",
    summary="attention sinks: sink rate per key position, massive activations, reference frames",
    how_to_read="A head has a sink at a key when its mean attention there exceeds ε; the sink rate is the share of "
                "all heads with one, per key position. A sink on the first token in most heads is the usual picture; "
                "the frame says whether the anchors sit at one end, both ends or spread out.",
    run="analyses.sinks:run",
    config=SinksConfig,
    tables=(Table("heads", ("layer", "head", "key", "alpha", "sink_fraction", "frame"),
                  "per head and key: mean attention α, share of prompts with a sink, the head's frame"),
            Table("rates", ("key", "rate", "n_prompts", "token"), "sink rate (% of heads) per key position"),
            Table("massive", ("layer", "batch", "position", "token", "dim", "value", "ratio"),
                  "massive activations", optional=True)),
    figures=(Figure("sinks", figures.draw_sinks, needs=("rates", "heads")),),
    head_metrics=(HeadMetric("heads", "sink_fraction", figures.sink_label, "share of prompts", "share",
                             select=figures.key_zero, detail="frame",
                             how_to_read="The share of prompts on which the head gives key 0 (usually BOS) more "
                                         "than ε of its attention: high for a head that parks its attention on the "
                                         "sink when it has nothing else to attend to."),),
    head_views=(HeadView("Attention received per key position (sinks)", figures.alpha_view,
                         needs=("heads", "rates")),),
    demo=(Demo("attention sinks, MiniLM", ("minilm",)), Demo("attention sinks, IOI model", ("zoo/ioi-small",))),
    related=("head-patterns", "heads"),
))

PRUNING = register(Analysis(
    name="pruning",
    summary="head importance (Michel et al. 2019) and pruning curves",
    how_to_read="Each curve is the task's score as more heads are removed, least important first: 'once' ranks heads "
                "on the full model, 'exact' re-ranks after every step, 'random' is the baseline (mean ± std). Where a "
                "curve stays flat, those heads were not needed.",
    run="analyses.pruning:run",
    config=PruningConfig,
    tables=(Table("curve", ("order", "fraction", "n_pruned", "metric", "metric_std"), "score after each step"),
            Table("importance", ("layer", "head", "importance", "raw_importance", "rank"),
                  "per head: importance normalised per layer, raw, and pruning rank", optional=True)),
    figures=(Figure("curve", figures.draw_pruning_curve, needs=("curve",)),),
    head_metrics=(HeadMetric("importance", "importance", "pruning importance ({task})",
                             "E|∂loss/∂ξ_h|, normalised per layer", "free",
                             how_to_read="How much the task's loss moves when the head's output is scaled (the "
                                         "gradient at its gate, Michel et al.), normalised within each layer: the "
                                         "large ones are the heads the task cannot lose; compare within a layer."),),
    task=TaskUse(required=True, default="ioi", pairs=False),
    demo=(Demo("head pruning (IOI)", ("zoo/ioi-small", "--task", "ioi", "--n", "32")),
          Demo("head pruning (sentence pairs, MiniLM)",
               ("minilm", "--task", "sentence-pairs", "--orders", "once", "random"))),
    related=("patch", "heads", "circuit"),
))

MAPS = register(Analysis(
    name="maps",
    summary="MAPS (Elhelo & Geva 2024): each head's relation scores from its parameters alone",
    how_to_read="A head's score for a relation is the share of its (source, target) pairs whose target is among the "
                "top-k tokens the head's OV circuit maps the source to, read through the (un)embedding: 1 means the "
                "head implements the relation for every pair. No forward pass is involved.",
    run="analyses.maps:run",
    config=MapsConfig,
    tables=(Table("scores", ("layer", "head", "relation", "k", "score", "suppression"),
                  "per head and relation: relation and suppression scores"),
            Table("relations", ("relation", "k", "pairs_usable", "pairs_total"), "the relations scored"),
            Table("salient_*", ("rank", "token_id", "token", "norm_ratio", "targets"),
                  "salient operations of head L{layer}H{head}", optional=True)),
    figures=(Figure("scores", figures.draw_relation_scores, needs=("scores", "relations")),
             Figure("suppression", figures.draw_suppression_scores, needs=("scores", "relations"))),
    head_metrics=(HeadMetric("scores", "score", "MAPS top relation score", "share of pairs", "share",
                             select=figures.best_relation, detail="relation",
                             how_to_read="From the weights alone: the best share, over the relations tested (the "
                                         "hover names it), of a relation's pairs whose target is among the head's "
                                         "top outputs when it reads the source. High: the head implements it."),),
    head_views=(HeadView("MAPS: relations and salient operations", figures.relations_view, needs=("scores",)),),
    demo=(Demo("MAPS relation scores, MiniLM", ("minilm", "--salient", "5.7", "2.1")),
          Demo("MAPS copying scores, induction model", ("zoo/induction-2l", "--vocab-copying"))),
    related=("maps-validation", "head-patterns"),
))

MAPS_VALIDATION = register(Analysis(
    name="maps-validation",
    summary="MAPS scores checked against the forward pass: dynamic (in-context) scores, or ablation of top heads",
    how_to_read="Dynamic: each point is a head, its static score against the same score measured on its output in "
                "templates; agreement (Pearson r near 1) means the parameters tell what the head does in context. "
                "Causal: ablating a relation's top heads should hurt its accuracy more than ablating random heads.",
    run="analyses.maps:run_validation",
    config=MapsValidationConfig,
    tables=(Table("correlations", ("relation", "r_without_context", "r_with_context", "n_pairs"),
                  "dynamic: Pearson r per relation", optional=True),
            Table("heads", ("relation", "layer", "head", "static", "dynamic_without_context", "dynamic_with_context"),
                  "dynamic: every head's three scores", optional=True),
            Table("causal", ("relation", "m", "top_accuracy", "random_accuracy_mean", "random_accuracy_std",
                             "baseline_accuracy"), "causal: accuracy after ablating m heads", optional=True),
            Table("top_heads", ("relation", "rank", "layer", "head", "static"), "causal: the ablation order",
                  optional=True)),
    figures=(Figure("scatter", figures.draw_static_vs_dynamic, needs=("correlations", "heads")),
             Figure("curves", figures.draw_ablation_curves, needs=("causal",))),
    demo=(Demo("MAPS copying scores against dynamic ones (induction model)",
               ("zoo/induction-2l", "--vocab-copying", "--templates", "t5 t9 {}")),
          Demo("MAPS copying heads ablated (induction model)",
               ("zoo/induction-2l", "--validation", "causal", "--vocab-copying", "--templates", "t1 t2 {} t3 t4 t1 t2",
                "--m", "4"))),
    related=("maps",),
))

register_task(TaskBuilder("sentence-pairs", "analyses.sentence_pairs:sentence_pair_task",
                          "paraphrase retrieval for sentence encoders (minilm): InfoNCE loss, pair accuracy",
                          pairs=False))
