"""Does attention explain the output? Raw attention, rollout and flow against input-attribution
(Abnar & Zuidema, 2020, Table 1; docs/methods.md §1).

For every prompt and layer l, each attention-based map gives one score per input token: the
row of the output being explained in raw attention Ā^l (heads averaged, no residual), in
rollout R^l and in normalised flow. These are ranked against two importance scores of the
same tokens, and the Spearman ρ is averaged over prompts:

- blank-out: out(x) - out(x with token t replaced by a blank token, [UNK] by default), the
  drop in the output (`blank_out="abs"`: its absolute value, how much the output moves);
- input gradient: |Σ_d ∂out/∂e_{t,d}|, e the embeddings (the `embed` site), sum over dims then
  abs, as in the paper's code (`gradient="sum"`); or the gradient's L2 norm ‖∂out/∂e_t‖
  (`gradient="norm"`). In a pre-LayerNorm model (GPT-2, GPT-NeoX) every block and the final
  norm subtract the mean over d_model, so adding c·(1, ..., 1) to an embedding changes
  nothing and the paper's sum is identically 0 (floating-point noise): "sum" is refused there.

What "out" and "the output's row" are depends on the model:

- encoder (e.g. `minilm`, a sentence encoder): out = cosine similarity between the prompt's
  mean-pooled sentence embedding and the embedding of a target text (by default a topic
  phrase such as "animals and pets"). The pooled embedding is the mean of the final hidden
  states over all real positions, so the row explained is the mean of the maps' rows over
  all real queries (for rollout this is exactly the rollout of the pooled output).
- causal LM: out = the logit, at the last position, of the token the model predicts there on
  the unchanged prompt; the row explained is the last position's.

Correlations use content tokens only (special tokens such as [CLS], [SEP] and BOS are never
blanked out nor ranked); prompts with fewer than 3 content tokens are skipped.

    headlab attribution-compare minilm --out runs      # about 4.5 minutes on two CPU cores
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from interp.models import Add, HookedModel, Intervention, sites
from interp.patching import Task
from interp.results import Meta, Result
from interp.results.registry import Analysis

from .figures import IMPORTANCES, METHODS
from .flow import attention_flow
from .rollout import attention_patterns, attention_rollout
from .specs import ATTRIBUTION_COMPARE, AttributionCompareConfig

GRADIENTS = ("sum", "norm")
# Abnar & Zuidema (2020), Table 1: Spearman ρ, last layer of their 6-layer verb-number model.
PAPER_TABLE_1 = {"blank-out": {"raw": 0.29, "rollout": 0.71, "flow": 0.70},
                 "gradient": {"raw": 0.46, "rollout": 0.54, "flow": 0.61}}

# Simple sentences written for this project, twelve per topic; the target of each is its topic.
TOPIC_SENTENCES: dict[str, list[str]] = {
    "animals and pets": [
        "The cat slept on the warm windowsill all afternoon.",
        "Our dog barks at every bird in the garden.",
        "A horse was grazing quietly in the green field.",
        "The little rabbit hid under the hedge.",
        "Elephants walk many miles to find fresh water.",
        "She feeds her goldfish twice a day.",
        "The owl hunts mice in the dark forest.",
        "My neighbour keeps three noisy parrots.",
        "A fox crossed the road in front of our car.",
        "The puppy chewed my new shoes.",
        "Cows were lying down before the rain came.",
        "The zoo has a new family of penguins.",
    ],
    "weather": [
        "It rained heavily all through the night.",
        "The morning was cold and foggy.",
        "A strong wind blew the leaves off the trees.",
        "Tomorrow will be sunny with a light breeze.",
        "Snow covered the village for a whole week.",
        "The storm knocked out power across the town.",
        "Summer afternoons here are hot and humid.",
        "Thunder rolled over the hills after lunch.",
        "The forecast says there will be frost tonight.",
        "A rainbow appeared after the shower.",
        "The drought has lasted for three months.",
        "Hail damaged the roofs of several houses.",
    ],
    "food and cooking": [
        "He baked fresh bread for breakfast.",
        "The soup needs a little more salt.",
        "We grilled vegetables and fish for dinner.",
        "She chopped the onions very finely.",
        "This cake is made with lemon and honey.",
        "The pasta should boil for ten minutes.",
        "My grandmother makes the best apple pie.",
        "They ordered spicy noodles from the restaurant.",
        "Stir the sauce slowly until it thickens.",
        "The chef tasted the curry and smiled.",
        "I had rice and beans for lunch.",
        "Fresh strawberries are sweet in June.",
    ],
    "sports": [
        "The team scored a goal in the last minute.",
        "She runs five kilometres every morning.",
        "He hit the ball over the fence.",
        "The tennis match lasted four hours.",
        "Our school won the basketball championship.",
        "The swimmer broke the national record.",
        "Fans cheered loudly when the game began.",
        "The cyclist climbed the steep mountain pass.",
        "The coach told the players to defend.",
        "They play football in the park on Sundays.",
        "The boxer trained hard for the big fight.",
        "The referee showed him a red card.",
    ],
    "music": [
        "She plays the violin in an orchestra.",
        "The band played until midnight.",
        "He is learning to play the guitar.",
        "The choir sang a beautiful old song.",
        "That album sold a million copies.",
        "The drummer kept a steady beat.",
        "We listened to jazz on the radio.",
        "The pianist practised the same piece for hours.",
        "Their concert tickets sold out quickly.",
        "The singer forgot the words of the chorus.",
        "He writes songs about the sea.",
        "The festival had music on three stages.",
    ],
    "travel": [
        "We took the night train to the coast.",
        "Their flight was delayed by two hours.",
        "She packed her suitcase for the long trip.",
        "The hotel had a view of the old harbour.",
        "They travelled across the country by bus.",
        "He lost his passport at the airport.",
        "We rented a small car to explore the island.",
        "The tourists visited the ancient castle.",
        "The ferry leaves the port every morning.",
        "I booked a room near the station.",
        "They hiked through the mountains for a week.",
        "The map showed a road along the river.",
    ],
    "work and office": [
        "The meeting started late this morning.",
        "She sent the report to her manager.",
        "He works at a desk near the window.",
        "The company hired ten new employees.",
        "Our team finished the project on time.",
        "The printer in the office is broken again.",
        "He asked his boss for a day off.",
        "The budget must be ready by Friday.",
        "She answered emails for most of the day.",
        "The interview went better than expected.",
        "They signed the contract after lunch.",
        "The office closes early on holidays.",
    ],
    "health and medicine": [
        "The doctor listened to his heartbeat.",
        "She took medicine for her headache.",
        "The nurse checked the patient's temperature.",
        "He broke his arm playing in the yard.",
        "Regular exercise keeps the heart healthy.",
        "The hospital opened a new children's ward.",
        "My cough has lasted for two weeks.",
        "The dentist cleaned my teeth.",
        "Drink plenty of water when you have a fever.",
        "The vaccine protects against the flu.",
        "He needs surgery on his knee.",
        "She rested at home until she felt better.",
    ],
    "computers and technology": [
        "My laptop restarted during the update.",
        "The website loads very slowly today.",
        "He wrote a program to sort the files.",
        "The phone battery dies after a few hours.",
        "She forgot the password to her account.",
        "The new software fixed the bug.",
        "Our internet connection keeps dropping.",
        "The engineers built a faster processor.",
        "He backed up his photos to the cloud.",
        "The keyboard stopped working after I spilled tea.",
        "The robot can sort packages on its own.",
        "They installed a new server in the lab.",
    ],
    "family and home": [
        "My sister painted the kitchen yellow.",
        "Grandpa tells stories after dinner.",
        "The children cleaned their rooms on Saturday.",
        "We moved into a bigger house last year.",
        "Her brother fixed the leaking tap.",
        "Our parents celebrated their anniversary.",
        "The baby finally fell asleep.",
        "They planted roses in the front garden.",
        "My cousins visit us every summer.",
        "Dad washed the dishes while we talked.",
        "The family had breakfast together.",
        "Mum hung new curtains in the living room.",
    ],
}


def topic_prompts() -> tuple[list[str], list[str]]:
    """The project's 120 topic sentences and, for each, its topic phrase as the target."""
    texts = [text for sentences in TOPIC_SENTENCES.values() for text in sentences]
    targets = [topic for topic, sentences in TOPIC_SENTENCES.items() for _ in sentences]
    return texts, targets


class _Readout:
    """The scalar output being explained: `__call__(tokens [k, pos], interventions) -> [k]`.
    Causal: the logit of the token predicted last on `tokens [pos]`; encoder: cosine of the
    pooled embedding with `target [d_model]`."""

    def __init__(self, model: HookedModel, tokens: torch.Tensor, target: torch.Tensor | None):
        self.model, self.target = model, target
        if model.cfg.is_causal:
            with torch.no_grad():
                self.answer = int(model(tokens[None])[0, -1].argmax())

    def __call__(self, tokens: torch.Tensor, interventions: Sequence[Intervention] = ()) -> torch.Tensor:
        out = self.model.run(tokens, interventions=interventions)[0]
        if self.model.cfg.is_causal:
            return out[:, -1, self.answer]
        pooled = out.float().mean(dim=1)
        return torch.nn.functional.cosine_similarity(pooled, self.target.to(pooled)[None], dim=-1)


def blank_out_importance(readout: _Readout, tokens: torch.Tensor, positions: Sequence[int], blank_id: int) -> np.ndarray:
    """out(tokens) - out(tokens with position p blanked), for each p in `positions`."""
    variants = tokens.repeat(len(positions) + 1, 1)
    variants[torch.arange(1, len(positions) + 1), torch.as_tensor(list(positions))] = blank_id
    with torch.no_grad():
        outs = readout(variants).double().cpu().numpy()
    return outs[0] - outs[1:]


def embedding_gradient(readout: _Readout, tokens: torch.Tensor) -> torch.Tensor:
    """∂out/∂e `[pos, d_model]` for one prompt `tokens [pos]`: the gradient with respect to a
    zero vector added to the embeddings (the `embed` site)."""
    shift = torch.zeros(1, tokens.shape[-1], readout.model.cfg.d_model, device=readout.model.device,
                        requires_grad=True)
    out = readout(tokens[None], [Add(sites.embed(), value=shift)]).sum()
    return torch.autograd.grad(out, shift)[0][0]


def gradient_importance(readout: _Readout, tokens: torch.Tensor, positions: Sequence[int],
                        gradient: str = "sum") -> np.ndarray:
    """Per position p of `positions`: |Σ_d ∂out/∂e_{p,d}| (`gradient="sum"`, the paper's) or
    ‖∂out/∂e_p‖ (`"norm"`)."""
    grad = embedding_gradient(readout, tokens)[list(positions)]
    value = grad.sum(dim=-1).abs() if gradient == "sum" else grad.norm(dim=-1)
    return value.double().cpu().numpy()


def _check_gradient(model: HookedModel, gradient: str) -> None:
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
    if gradient == "sum" and model.cfg.pre_ln and model.arch.norm == "layernorm":
        raise ValueError(f"{model.cfg.name} is a pre-LayerNorm model: its output does not change when a constant is "
                         f"added to every dim of an embedding, so the summed input gradient (gradient='sum') is 0 up "
                         f"to rounding. Use gradient='norm' (CLI: --gradient norm)")


def attribution_compare(
    model: HookedModel,
    texts: Sequence[str] | None = None,
    targets: str | Sequence[str] | None = None,
    *,
    blank_id: int | None = None,
    blank_out: str = AttributionCompareConfig.blank_out,
    gradient: str = AttributionCompareConfig.gradient,
    scale: int = AttributionCompareConfig.scale,
    batch_size: int = AttributionCompareConfig.batch_size,
    progress: bool = True,
) -> AttributionComparison:
    """Per-layer Spearman ρ of raw attention, rollout and flow with blank-out and
    input-gradient importance, averaged over prompts (see the module docstring).

    Args:
        texts: prompts; default the project's 120 topic sentences (`topic_prompts`).
        targets: encoders only: the text whose embedding the pooled output is compared with,
            one for all prompts or one per prompt; default each topic sentence's topic.
        blank_id: token that replaces a blanked-out token; default [UNK] (else padding).
        blank_out: "drop" (signed out(x) - out(blanked)) or "abs" (its absolute value).
        gradient: "sum" (the paper's |Σ_d ∂out/∂e_{t,d}|; refused for pre-LayerNorm models, where
            it is 0) or "norm" (‖∂out/∂e_t‖).
        scale: integer scaling of flow capacities (see `analyses.flow`).
    """
    if texts is None:
        if targets is not None:
            raise ValueError("targets go with your own texts; the default texts bring their topics")
        texts, targets = topic_prompts()
        targets = None if model.cfg.is_causal else targets
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError(f"texts must be a non-empty list of strings, got {texts!r}")
    targets = _check_targets(model, texts, targets)
    config = AttributionCompareConfig(blank_out=blank_out, gradient=gradient, scale=scale, batch_size=batch_size)
    _check_gradient(model, gradient)
    tok = model.tokenizer
    blank_id = next((i for i in (blank_id, tok.unk_token_id, tok.pad_token_id) if i is not None), None)
    if blank_id is None:
        raise ValueError(f"{model.cfg.name}'s tokenizer has no [UNK] or padding token; pass blank_id")

    attention = attention_patterns(model, texts, batch_size=batch_size)
    real = attention.mask
    raw = attention.patterns.double().mean(dim=2) * (real[:, :, None] & real[:, None, :])
    rollout = attention_rollout(attention).maps
    lengths = real.sum(dim=1)
    queries = sorted(set((lengths - 1).tolist())) if model.cfg.is_causal else None
    flow = attention_flow(attention, queries=queries, scale=scale, progress=progress).maps
    special = set(tok.all_special_ids)
    cached: dict[str, torch.Tensor] = {}

    def embedded(target: str) -> torch.Tensor:
        if target not in cached:
            cached[target] = model.encode([target])[0]
        return cached[target]

    rows = []
    for b in tqdm(range(len(texts)), desc="importance", disable=not progress):
        n = int(lengths[b])
        tokens = attention.tokens[b, :n].to(model.device)
        content = [p for p in range(n) if int(tokens[p]) not in special]
        if len(content) < 3:
            continue
        readout = _Readout(model, tokens, None if targets is None else embedded(targets[b]))
        drop = blank_out_importance(readout, tokens, content, blank_id)
        importance = {"blank-out": np.abs(drop) if blank_out == "abs" else drop,
                      "gradient": gradient_importance(readout, tokens, content, gradient)}
        for name, maps in (("raw", raw), ("rollout", rollout), ("flow", flow)):
            # The explained output's row: the last position's, or the mean over the pooled ones.
            rows_b = maps[:, b, n - 1, :n] if model.cfg.is_causal else maps[:, b, :n, :n].mean(dim=1)
            scores = rows_b.numpy()[:, content]  # [layer, content]
            for layer, row in enumerate(scores):
                for kind, values in importance.items():
                    rho = spearmanr(row, values).statistic
                    rows.append({"prompt": b, "layer": layer, "method": name, "importance": kind,
                                 "spearman": float(rho), "n_tokens": len(content)})
    if not rows:
        raise ValueError("no prompt has 3 or more content tokens to rank; give longer texts")
    per_prompt = pd.DataFrame(rows)
    return AttributionComparison(per_prompt=per_prompt, model_name=model.cfg.name,
                                 parameters={**config.as_parameters(), "n_texts": len(texts), "blank_id": int(blank_id),
                                             "readout": "last-position logit" if model.cfg.is_causal
                                             else "cosine(pooled embedding, target)"})


def run(model: HookedModel, config: AttributionCompareConfig, task: Task | None = None, *,
        progress: bool = True) -> "AttributionComparison":
    """The registered analysis "attribution-compare" (`analyses.specs`): on the project's
    topic sentences, or on a task's clean prompts."""
    texts = None
    if task is not None:
        if not task.clean_prompts:
            raise ValueError(f"task {task.name!r} has no prompt texts; attribution-compare ranks the tokens of texts")
        texts = task.clean_prompts
    result = attribution_compare(model, texts, **config.as_kwargs(), progress=progress)
    result.task_name = None if task is None else task.name
    return result


def _check_targets(model: HookedModel, texts: Sequence[str], targets) -> list[str] | None:
    if model.cfg.is_causal:
        if targets is not None:
            raise ValueError("targets are for encoders; a causal model's output is its own predicted logit")
        return None
    if targets is None:
        raise ValueError("an encoder's output is the similarity of its pooled embedding to a target text; "
                         "pass targets (one string, or one per text)")
    targets = [targets] * len(texts) if isinstance(targets, str) else list(targets)
    if len(targets) != len(texts):
        raise ValueError(f"targets must be one string or one per text: {len(texts)} texts, {len(targets)} targets")
    return targets


@dataclass
class AttributionComparison(Result):
    """Spearman ρ between attention-based maps and importance scores.

    `per_prompt`: one row per (prompt, layer, method, importance) with `spearman` (NaN when
    a ranking is constant) and `n_tokens`. `to_frame()` averages over prompts.
    """

    spec: ClassVar[Analysis] = ATTRIBUTION_COMPARE
    per_prompt: pd.DataFrame
    model_name: str
    parameters: dict = field(default_factory=dict)
    task_name: str | None = None

    def to_frame(self) -> pd.DataFrame:
        """Mean (and standard error) of ρ over prompts per (layer, method, importance), with
        the paper's last-layer value for reference."""
        grouped = self.per_prompt.groupby(["layer", "method", "importance"], sort=False)["spearman"]
        frame = grouped.agg(spearman="mean", sem="sem", n_prompts="count").reset_index()
        frame["paper_last_layer"] = [PAPER_TABLE_1[i][m] for m, i in zip(frame["method"], frame["importance"])]
        return frame

    def table(self, layer: int | None = None) -> pd.DataFrame:
        """Table 1's shape for one layer (default the last): rows methods, columns importances,
        with the paper's numbers beside ours."""
        frame = self.to_frame()
        layer = int(frame["layer"].max()) if layer is None else layer
        ours = frame[frame["layer"] == layer].pivot(index="method", columns="importance", values="spearman")
        paper = pd.DataFrame(PAPER_TABLE_1)
        out = pd.concat({"ours": ours, "paper": paper}, axis=1).reindex(list(METHODS))
        out.columns = [f"{who} {kind}" for who, kind in out.columns]
        return out

    def meta(self) -> Meta:
        return Meta(model=self.model_name, task=self.task_name, parameters=self.parameters,
                    extra={"paper_table_1": PAPER_TABLE_1})

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"summary": self.to_frame(), "per_prompt": self.per_prompt}
