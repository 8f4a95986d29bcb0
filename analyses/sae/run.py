"""Entry points of `headlab sae train | eval | features` (registered in `analyses.sae_specs`):
the corpus a command runs on, the SAE it reads, and the results it writes.

    result = train(model, SaeTrainConfig(site="resid_pre(2)", d_sae=256, tokens=100_000))
    result.sae                       # the trained SAE (raw activations in, SAELens conventions)
    result.save("runs/")             # an "sae-train" bundle: the SAE's tensors, its curves, its evaluation
    load_sae_from_bundle(path)       # the SAE back
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
import torch

from analyses.sae import make_sae
from analyses.sae.base import SAE
from analyses.sae.evals import evaluate_spliced
from analyses.sae.features import FeatureTables, feature_tables, load_sae_from_bundle
from analyses.sae.saelens_io import inference_state_dict, load_sae, save_sae
from analyses.sae.sites import check_site, site_width
from analyses.sae.store import ActivationStore
from analyses.sae.train import TrainConfig, train_saes_on_store
from analyses.sae_specs import SAE_EVAL, SAE_TRAIN, SaeEvalConfig, SaeFeaturesConfig, SaeTrainConfig
from interp.models import HookedModel
from interp.patching import Task
from interp.results import Meta, Result
from interp.results.registry import Analysis
from interp.zoo.registry import EMBEDDED


def corpus_texts(model: HookedModel, corpus: str | None, n_texts: int | None, context_size: int,
                 seed: int) -> list[str] | torch.Tensor:
    """The texts a command runs on (`corpus` as `analyses.sae_specs.CORPUS_HELP` says): a list
    of texts, or for 'random' a `[n, context_size]` token tensor (BOS first where the model
    has one), at most `n_texts` of them."""
    if corpus is None:
        if model.cfg.name not in EMBEDDED:
            raise ValueError(f"{model.cfg.name} is not an embedded model, so it ships no corpus: give --corpus FILE "
                             "(one text per line) or --corpus random")
        texts = EMBEDDED[model.cfg.name].corpus()
    elif corpus == "random":
        return _random_tokens(model, n_texts or 1000, context_size, seed)
    else:
        path = Path(corpus)
        if not path.is_file():
            raise FileNotFoundError(f"corpus {corpus!r} is neither 'random' nor a text file")
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise ValueError(f"corpus file {corpus} holds no text (one text per line)")
    return texts[:n_texts] if n_texts is not None else texts


def _random_tokens(model: HookedModel, n: int, length: int, seed: int) -> torch.Tensor:
    special = set(model.tokenizer.all_special_ids)
    pool = torch.tensor([i for i in range(model.cfg.d_vocab) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    tokens = pool[torch.randint(len(pool), (n, length), generator=generator)]
    bos = model.tokenizer.bos_token_id
    if model.cfg.is_causal and bos is not None:
        tokens[:, 0] = bos
    return tokens


def read_sae(path: str | os.PathLike) -> SAE:
    """An SAE from an SAE bundle (`sae train`, `sae features`) or a SAELens folder."""
    folder = Path(path)
    if (folder / "meta.json").is_file():
        return load_sae_from_bundle(folder)
    if (folder / "cfg.json").is_file():
        return load_sae(folder)
    raise FileNotFoundError(f"{path} is neither an SAE bundle (meta.json) nor a SAELens folder (cfg.json)")


def _split(texts: list[str] | torch.Tensor, fraction: float) -> tuple:
    n_eval = max(1, round(len(texts) * fraction))
    if len(texts) - n_eval < 1:
        raise ValueError(f"the corpus has {len(texts)} texts: too few to hold out {fraction:.0%} for evaluation")
    return texts[:-n_eval], texts[-n_eval:]


# ---------------------------------------------------------------- sae train


@dataclass
class SAETraining(Result):
    """A trained SAE, its training curves (one row per step) and its spliced evaluation."""

    spec: ClassVar[Analysis] = SAE_TRAIN
    sae: SAE
    model_name: str
    site: str
    history: pd.DataFrame
    evaluation: pd.DataFrame
    parameters: dict
    seed: int

    def meta(self) -> Meta:
        return Meta(model=self.model_name, parameters={"site": self.site, **self.parameters}, seed=self.seed,
                    extra={"sae_cfg": self.sae.cfg.inference_dict()})

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"training": self.history, "evaluation": self.evaluation}

    def tensors(self) -> dict[str, torch.Tensor]:
        return inference_state_dict(self.sae)


def train(model: HookedModel, config: SaeTrainConfig, task: Task | None = None, *, progress: bool = True) -> SAETraining:
    """Train one SAE at `config.site` on the corpus (less the held-out share), then evaluate it
    spliced in on the held-out texts."""
    site = check_site(model, config.site)
    texts = corpus_texts(model, config.corpus, config.n_texts, config.context_size, config.seed)
    training_texts, held_out = _split(texts, config.eval_fraction)
    store = ActivationStore(model, training_texts, site, batch_size=config.batch_size, seed=config.seed,
                            progress=progress)
    options = {"topk": {"k": config.k}, "batchtopk": {"k": config.k}, "jumprelu": {"l0_coefficient": config.l0_coefficient},
               "standard": {"l1_coefficient": config.l1_coefficient}}[config.architecture]
    sae = make_sae(config.architecture, d_in=site_width(model, site), d_sae=config.d_sae, seed=config.seed,
                   device=str(model.device), **options)
    steps = max(1, config.tokens // config.batch_size)
    result = train_saes_on_store(sae, store, TrainConfig(total_training_steps=steps, lr=config.lr), progress=progress)
    history = pd.DataFrame(result.history)
    losses = [c for c in history.columns if c.endswith("loss")]
    history = history.assign(tokens=(history["step"] + 1) * config.batch_size, loss=history[losses].sum(axis=1))
    keep = ["step", "tokens", "loss", *losses, "l0", "explained_variance", "dead_fraction"]
    history = history[list(dict.fromkeys(keep))]
    evaluation = evaluate_spliced(model, sae, held_out, site=site, progress=progress).to_frame()
    if config.saelens:
        save_sae(sae, config.saelens)
    parameters = {k: v for k, v in config.as_parameters().items() if k not in ("site", "seed", "saelens")}
    return SAETraining(sae=sae, model_name=model.cfg.name, site=str(site), history=history, evaluation=evaluation,
                       parameters={**parameters, "steps": steps, "training_tokens": result.tokens},
                       seed=config.seed)


# ---------------------------------------------------------------- sae eval


@dataclass
class SAEEvaluation(Result):
    """An SAE spliced into the model on a corpus: SAELens's metrics, one row each."""

    spec: ClassVar[Analysis] = SAE_EVAL
    model_name: str
    site: str
    evaluation: pd.DataFrame
    parameters: dict

    def meta(self) -> Meta:
        return Meta(model=self.model_name, parameters={"site": self.site, **self.parameters})

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"evaluation": self.evaluation}


def evaluate(model: HookedModel, config: SaeEvalConfig, task: Task | None = None, *,
             progress: bool = True) -> SAEEvaluation:
    sae = read_sae(config.sae)
    texts = corpus_texts(model, config.corpus, config.n_texts, config.context_size, config.seed)
    spliced = evaluate_spliced(model, sae, texts, progress=progress)
    return SAEEvaluation(model_name=model.cfg.name, site=str(spliced.site), evaluation=spliced.to_frame(),
                         parameters=config.as_parameters())


# ---------------------------------------------------------------- sae features


def features(model: HookedModel, config: SaeFeaturesConfig, task: Task | None = None, *,
             progress: bool = True) -> FeatureTables:
    sae = read_sae(config.sae)
    texts = corpus_texts(model, config.corpus, config.n_texts, config.context_size, config.seed)
    tables = feature_tables(model, sae, texts, n_top_contexts=config.n_top_contexts,
                            n_logit_tokens=config.n_logit_tokens, n_bins=config.n_bins, progress=progress)
    tables.parameters.update(config.as_parameters())
    return tables
