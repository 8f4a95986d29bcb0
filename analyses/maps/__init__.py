"""MAPS: what each attention head does, inferred from its parameters alone (Elhelo & Geva,
2024; docs/methods.md §4).

    from interp import load_model
    from analyses.maps import maps_scores, salient_operations

    model = load_model("minilm")
    result = maps_scores(model)                     # every head x the 20 relations
    result.top("country_to_capital")                # best heads first
    result.figure()                                 # heads x relations heatmap (figure("suppression"))
    salient_operations(model, layer=5, head=3)      # what one head amplifies, and into what
    result.save("runs")                             # a bundle, analysis="maps"

    dynamic_validation(model).to_frame()            # static vs dynamic Pearson r per relation
    causal_validation(gpt2, ["country_to_capital"], m=5).to_frame()   # built-in prompt per relation
"""

from .relations import COPYING, MIN_PAIRS, RELATIONS, Relation, load_relation, load_relations, read_pairs
from .result import MapsResult
from .salient import salient_operations
from .scores import map_rows, maps_scores, run, source_embeddings, top_targets
from .validation import (CAUSAL_TEMPLATES, DEFAULT_TEMPLATES, copying_relation, causal_validation, dynamic_validation,
                         head_ablation_effects, rank_agreement, run_validation, template_tokens, top_heads)
from .validation_result import CausalValidation, DynamicValidation

__all__ = ["CAUSAL_TEMPLATES", "COPYING", "DEFAULT_TEMPLATES", "MIN_PAIRS", "RELATIONS", "CausalValidation", "DynamicValidation",
           "MapsResult", "Relation", "causal_validation", "copying_relation", "dynamic_validation",
           "head_ablation_effects", "load_relation", "load_relations", "map_rows", "maps_scores", "rank_agreement",
           "read_pairs", "run", "run_validation", "salient_operations", "source_embeddings", "template_tokens", "top_heads",
           "top_targets"]
