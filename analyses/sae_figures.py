"""Figures of the SAE commands, pure functions of their bundles' tables (no torch): training
curves, the spliced evaluation, feature density, and one feature's page."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp.results.figures import colouring

Tables = Mapping[str, pd.DataFrame]
MAX_FEATURE_CHOICES = 500  # the feature picker lists the most frequent features first


def draw_training(tables: Tables, meta: dict) -> go.Figure:
    """Loss, L0 and the dead-latent share against training tokens."""
    training = tables["training"]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("loss", "L0 (active latents per token)", "dead latents (share)"))
    for col, column in enumerate(("loss", "l0", "dead_fraction"), start=1):
        fig.add_trace(go.Scatter(x=training["tokens"], y=training[column], mode="lines", name=column), row=1, col=col)
        fig.update_xaxes(title="training tokens", row=1, col=col)
    parameters = meta.get("parameters") or {}
    fig.update_layout(title=f"{parameters.get('architecture')} SAE on {parameters.get('site')} of {meta['model']}",
                      showlegend=False, height=360)
    return fig


def draw_evaluation(tables: Tables, meta: dict) -> go.Figure:
    """The scores in [0, 1] (ce_loss_score, kl_div_score, explained_variance) as bars."""
    evaluation = tables["evaluation"].set_index("metric")["value"]
    shown = [m for m in ("ce_loss_score", "kl_div_score", "explained_variance") if m in evaluation]
    fig = go.Figure(go.Bar(x=shown, y=[evaluation[m] for m in shown], text=[f"{evaluation[m]:.3f}" for m in shown]))
    fig.update_layout(title=f"spliced into {meta['model']} at {(meta.get('parameters') or {}).get('site')} "
                            f"(L0 {evaluation.get('l0', float('nan')):.1f})", yaxis_title="score (1 = as the model)",
                      height=360)
    return fig


def draw_density(tables: Tables, meta: dict) -> go.Figure:
    """Histogram of log10 feature density over the features that fire."""
    features = tables["features"]
    alive = features[features["density"] > 0]
    fig = go.Figure(go.Histogram(x=alive["log10_density"], nbinsx=50))
    fig.update_layout(title=f"feature density: {len(alive)} of {len(features)} features fire",
                      xaxis_title="log10 share of tokens where the feature fires", yaxis_title="features", height=360)
    return fig


def feature_options(tables: Tables, meta: dict) -> list[tuple[int, str]]:
    """The features that fire, most frequent first (at most MAX_FEATURE_CHOICES), labelled with
    their density and top tokens."""
    features = tables["features"]
    alive = features[features["density"] > 0].sort_values("density", ascending=False, kind="stable")
    return [(int(r.feature), f"{r.feature}: density {r.density:.2g}, {' '.join(map(str, list(r.top_tokens)[:3]))}")
            for r in alive.head(MAX_FEATURE_CHOICES).itertuples()]


def draw_feature(tables: Tables, meta: dict, feature: int = 0) -> go.Figure:
    """One feature's page: its top contexts (rows; each token coloured by the feature's
    activation there, the firing token outlined by its value), the histogram of its non-zero
    activations, and the tokens its decoder direction promotes and suppresses."""
    features = tables["features"]
    if feature not in set(features["feature"]):
        raise KeyError(f"no feature {feature!r}; features 0..{len(features) - 1}")
    contexts = tables["top_contexts"]
    contexts = contexts[contexts["feature"] == feature].sort_values("rank")
    width = max((len(c) for c in contexts["context_tokens"]), default=1)
    z = np.full((len(contexts), width), np.nan)
    text = np.full((len(contexts), width), "", dtype=object)
    for i, row in enumerate(contexts.itertuples()):
        n = len(row.context_tokens)
        z[i, :n] = np.asarray(row.context_activations, dtype=float)
        text[i, :n] = [str(t) for t in row.context_tokens]
    fig = make_subplots(rows=2, cols=2, specs=[[{"colspan": 2}, None], [{}, {}]], vertical_spacing=0.18,
                        subplot_titles=("top-activating contexts (colour: activation)", "non-zero activations",
                                        "logit effects of the decoder direction"))
    top = float(np.nanmax(z)) if np.isfinite(z).any() else 1.0
    fig.add_trace(go.Heatmap(z=z, text=text, texttemplate="%{text}", y=[f"#{r}" for r in contexts["rank"]],
                             hovertemplate="%{text}: %{z:.3g}<extra></extra>", showscale=True,
                             **{**colouring(z, "activation", "free"), "zmin": 0.0, "zmax": top}), row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    bins = tables["histograms"]
    bins = bins[bins["feature"] == feature]
    fig.add_trace(go.Bar(x=(bins["bin_start"] + bins["bin_end"]) / 2, y=bins["count"], name="count",
                         showlegend=False), row=2, col=1)
    fig.update_xaxes(title="activation", row=2, col=1)
    effects = tables["logit_effects"]
    effects = effects[effects["feature"] == feature].sort_values("effect")
    fig.add_trace(go.Bar(x=effects["effect"], y=[f"{t} " for t in effects["token"]], orientation="h",
                         showlegend=False, marker_color=np.where(effects["effect"] > 0, "#2166ac", "#b2182b")),
                  row=2, col=2)
    fig.update_xaxes(title="logit per unit of activation", row=2, col=2)
    row = features[features["feature"] == feature].iloc[0]
    fig.update_layout(title=f"feature {feature} of {meta['model']} {(meta.get('parameters') or {}).get('site')}: "
                            f"density {row['density']:.3g}, max {row['max_activation']:.3g}",
                      height=420 + 26 * len(contexts))
    return fig


def head_totals(frame: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """Per head of an attention SAE's layer: its decoder-norm shares summed over the features
    (how many features' worth of decoder it writes), with the layer from the SAE's site."""
    site = str((meta.get("parameters") or {}).get("site", ""))
    layer = int(site[site.index("(") + 1:].split(",")[0].rstrip(")")) if "(" in site else 0
    totals = frame.groupby("head", as_index=False)["share"].sum()
    return totals.assign(layer=layer)[["layer", "head", "share"]]
