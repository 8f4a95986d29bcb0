"""The registrations of the SAE commands: `headlab sae train`, `headlab sae eval` and `headlab
sae features`, their configs, tables and figures (`analyses.sae_figures`). Torch-free, so they
live beside the `analyses.sae` package (which imports torch); the entry points are in
`analyses.sae.run`, imported only when they run."""

from __future__ import annotations

from dataclasses import dataclass

from analyses import sae_figures as figures
from interp.results.config import Config, option
from interp.results.registry import Analysis, Control, Demo, Figure, HeadMetric, Table, register

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")
CORPUS_HELP = ("texts to run the model on: a text file (one text per line), 'random' (random token sequences), or "
               "by default the corpus the embedded model ships (zoo/ioi-small: a sample of its training text)")


@dataclass(frozen=True)
class SaeTrainConfig(Config):
    site: str = option("resid_pre(1)", "where the SAE reads: a site (resid_pre(2), z(0), mlp_out(1), ...) or a "
                                       "TransformerLens hook name (blocks.2.hook_resid_pre)")
    architecture: str = option("topk", "SAE architecture", choices=ARCHITECTURES)
    d_sae: int = option(512, "number of latents", ge=1)
    k: int = option(16, "active latents per token (topk) or on average over a batch (batchtopk)", ge=1)
    l1_coefficient: float = option(5.0, "standard: the L1 penalty's coefficient", gt=0)
    l0_coefficient: float = option(1.0, "jumprelu: the L0 penalty's coefficient", gt=0)
    tokens: int = option(200_000, "training tokens", ge=1)
    batch_size: int = option(1024, "tokens per optimiser step", ge=1)
    lr: float = option(3e-4, "Adam learning rate", gt=0)
    corpus: str | None = option(None, CORPUS_HELP)
    n_texts: int | None = option(None, "use at most this many texts of the corpus", ge=2)
    context_size: int = option(32, "tokens per random text (corpus 'random')", ge=2)
    eval_fraction: float = option(0.1, "share of the texts held out for the spliced evaluation", gt=0, lt=1)
    seed: int = option(0, "seed of the SAE, the batches and random texts", ge=0)
    saelens: str | None = option(None, "also write the SAE in SAELens's folder format to this folder")


@dataclass(frozen=True)
class SaeInputs(Config):
    """What `sae eval` and `sae features` read: an SAE and a corpus."""

    sae: str = option("latest", "the SAE: an SAE bundle (of sae train or sae features), a SAELens folder, or "
                                "'latest': the newest sae train bundle of this model in --out")
    corpus: str | None = option(None, CORPUS_HELP)
    n_texts: int | None = option(None, "use at most this many texts of the corpus", ge=1)
    context_size: int = option(32, "tokens per random text (corpus 'random')", ge=2)
    seed: int = option(0, "seed of random texts", ge=0)


@dataclass(frozen=True)
class SaeEvalConfig(SaeInputs):
    pass


@dataclass(frozen=True)
class SaeFeaturesConfig(SaeInputs):
    n_top_contexts: int = option(10, "top-activating contexts kept per feature", ge=1)
    n_logit_tokens: int = option(10, "most promoted and suppressed tokens kept per feature", ge=1)
    n_bins: int = option(30, "bins of each feature's activation histogram", ge=1)


_EVALUATION = Table("evaluation", ("metric", "value"), "the SAE spliced into the model on held-out texts: SAELens's "
                                                       "metric names")

SAE_TRAIN = register(Analysis(
    name="sae-train",
    group="sae",
    summary="train a sparse autoencoder on one site of the model, then evaluate it spliced in",
    how_to_read="The curves are the training losses and the share of latents that never fire, per step. The "
                "evaluation reruns held-out texts with the SAE's reconstruction in place of the site: ce_loss_score "
                "is 1 when the model's loss is unchanged and 0 when it is as bad as with the site zeroed; "
                "explained_variance and l0 describe the reconstruction and its sparsity.",
    run="analyses.sae.run:train",
    requires="causal",
    config=SaeTrainConfig,
    tables=(Table("training", ("step", "tokens", "loss", "l0", "explained_variance", "dead_fraction"),
                  "one row per optimiser step"), _EVALUATION),
    figures=(Figure("training", figures.draw_training, needs=("training",)),),
    demo=(Demo("a TopK SAE on zoo/ioi-small's residual stream", ("zoo/ioi-small", "--site", "resid_pre(2)",
                                                                  "--d-sae", "256", "--tokens", "50000")),),
    related=("sae-eval", "sae-features"),
))

SAE_EVAL = register(Analysis(
    name="sae-eval",
    group="sae",
    summary="evaluate a sparse autoencoder spliced into the model (SAELens's metrics)",
    how_to_read="ce_loss_score is 1 when the model's loss with the SAE's reconstruction in place of the site equals "
                "its clean loss and 0 when it is as bad as with the site zeroed; kl_div_score likewise for the KL "
                "divergence of the next-token distributions; explained_variance and l0 describe the reconstruction.",
    run="analyses.sae.run:evaluate",
    requires="causal",
    config=SaeEvalConfig,
    tables=(_EVALUATION,),
    figures=(Figure("evaluation", figures.draw_evaluation, needs=("evaluation",)),),
    demo=(Demo("that SAE spliced into the model on 300 texts", ("zoo/ioi-small", "--n-texts", "300")),),
    related=("sae-train", "sae-features"),
))

SAE_FEATURES = register(Analysis(
    name="sae-features",
    group="sae",
    summary="feature pages of a sparse autoencoder: top contexts, histograms, logit effects, head shares",
    how_to_read="Pick a feature: its top-activating contexts (each row a context, the firing token's activation the "
                "strongest colour), the histogram of its non-zero activations, and the tokens its decoder direction "
                "promotes and suppresses through the unembedding. For SAEs on attention outputs (z) the share of each "
                "head in the decoder row says which heads write the feature. The density plot shows how often "
                "features fire (log10 of the share of tokens).",
    run="analyses.sae.run:features",
    requires="causal",
    config=SaeFeaturesConfig,
    tables=(Table("features", ("feature", "density", "log10_density", "max_activation", "mean_activation",
                               "top_tokens", "top_promoted", "top_suppressed"), "one row per feature"),
            Table("top_contexts", ("feature", "rank", "prompt", "position", "activation", "token", "context_tokens",
                                   "context_activations", "context_start", "context_index")),
            Table("histograms", ("feature", "bin", "bin_start", "bin_end", "count")),
            Table("logit_effects", ("feature", "kind", "rank", "token_id", "token", "effect")),
            Table("head_shares", ("feature", "head", "share"), "attention SAEs: each head's share of the decoder row",
                  optional=True),
            Table("top_sources", ("feature", "context_rank", "prompt", "query_position", "head", "source_position",
                                  "source_token", "contribution"), optional=True)),
    figures=(Figure("feature", figures.draw_feature, needs=("features", "top_contexts", "histograms", "logit_effects"),
                    controls=(Control("feature", "feature (most frequent first)", figures.feature_options),)),
             Figure("density", figures.draw_density, needs=("features",))),
    head_metrics=(HeadMetric("head_shares", "share", "SAE features written (share of decoder norm, summed)",
                             "features' worth of decoder norm", "free", select=figures.head_totals,
                             how_to_read="How much of the SAE's decoder lies in this head's slice of the attention "
                                         "output, summed over features: the heads that many features write through."),),
    demo=(Demo("feature pages of that SAE", ("zoo/ioi-small", "--n-texts", "500")),),
    aliases=("sae",),
    related=("sae-train", "sae-eval", "heads"),
))
