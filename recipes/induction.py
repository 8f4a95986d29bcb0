"""Recipe for `zoo/induction-2l`: a 2-layer GPT-2 with a clean induction circuit.

Training sequences are BOS followed by random plain tokens ("t0" .. "tN") into which copies of
earlier stretches of the same sequence are written. A copy's tokens after its first are
predictable, and only by looking up "what followed this token last time"; the loss counts
exactly those tokens (the rest are uniform noise that no model can predict, and counting them
slows the circuit down).

Three choices decide whether the *textbook* circuit forms (a previous-token head in layer 0
whose output an induction head in layer 1 reads through its keys), each found by trial:

- Copies vary in length (`min_span`..`max_span`), in where they start and in how far back
  their source lies. With a fixed repeat offset a single layer-0 head learns "attend N back".
- Untied input and output embeddings. With tied ones the model has to cancel each token's own
  embedding (which would otherwise predict the token itself) and instead builds a shifted
  circuit: layer-0 heads looking 2-4 tokens back feed both keys and values of layer-1 heads
  that attend 1-3 tokens past the right key. The copies are predicted just as well, but no head
  has an induction score above ~0.2.
- The loss counts the copied tokens only; trained on every token, the same model again builds
  the shifted circuit.

    build(Path("interp/zoo/checkpoints/induction-2l"), threads=1)
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from recipes.common import build_word_tokenizer, gpt2_config, save_checkpoint, train_lm

NAME = "zoo/induction-2l"
INDUCTION_HEAD_SCORE = 0.5  # a head attending at least this much to the induction target counts as one


@dataclass(frozen=True)
class InductionConfig:
    """Everything that determines the trained model (same config + seed = same weights)."""

    n_head: int = 4
    n_embd: int = 64
    n_positions: int = 48
    vocab_size: int = 64  # plain tokens t0 .. t{vocab_size - 1}
    steps: int = 4000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    copy_prob: float = 0.7  # chance that the next segment is a copy rather than random filler
    min_span: int = 2  # copy lengths, in tokens
    max_span: int = 6
    max_filler: int = 3  # random filler segments are 1..max_filler tokens
    # Ground-truth measurement: fresh probes BOS + span + span (a seed the training never used).
    eval_sequences: int = 200
    eval_span: int = 20
    eval_seed: int = 1000

    def shrunk(self) -> InductionConfig:
        """A small, short variant for tests (well under a minute on one CPU thread)."""
        return dataclasses.replace(self, n_positions=32, steps=1000, batch_size=32,
                                   eval_sequences=40, eval_span=12)


def words(config: InductionConfig) -> list[str]:
    return [f"t{i}" for i in range(config.vocab_size)]


def tokenizer(config: InductionConfig) -> PreTrainedTokenizerFast:
    """The word-level tokenizer of the recipe (same ids on every call)."""
    return build_word_tokenizer(words(config))


def sample_sequence(rng: random.Random, config: InductionConfig, first_id: int, bos_id: int) -> tuple[list[int], list[bool]]:
    """One training sequence of `config.n_positions` token ids and its loss mask.

    `mask[i]` is True where token i is predictable from the context: it continues a copy
    whose previous token was copied from an earlier stretch of the sequence.
    """
    length = config.n_positions
    tokens, mask = [bos_id], [False]
    while len(tokens) < length:
        span = rng.randint(config.min_span, config.max_span)
        if len(tokens) - 1 >= span and rng.random() < config.copy_prob:
            start = rng.randint(1, len(tokens) - span)
            tokens += tokens[start:start + span]
            mask += [False] + [True] * (span - 1)
        else:
            n = rng.randint(1, config.max_filler)
            tokens += [first_id + rng.randrange(config.vocab_size) for _ in range(n)]
            mask += [False] * n
    return tokens[:length], mask[:length]


def batch_sampler(config: InductionConfig, tok: PreTrainedTokenizerFast):
    """`sample_batch(gen) -> (tokens [batch, pos], loss_mask [batch, pos])` for `train_lm`."""
    first_id = tok.convert_tokens_to_ids(words(config)[0])

    def sample_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rng = random.Random(int(torch.randint(2**62, (1,), generator=gen)))
        rows = [sample_sequence(rng, config, first_id, tok.bos_token_id) for _ in range(config.batch_size)]
        return (torch.tensor([r[0] for r in rows], dtype=torch.long),
                torch.tensor([r[1] for r in rows], dtype=torch.bool))

    return sample_batch


def train(config: InductionConfig | None = None, threads: int | None = None,
          log=print) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast, dict]:
    """Train the model from scratch. Returns `(model, tokenizer, log)` where log holds the
    per-step losses and the training time in seconds."""
    config = config or InductionConfig()
    if threads is not None:
        torch.set_num_threads(threads)
    tok = tokenizer(config)
    torch.manual_seed(config.seed)
    model = GPT2LMHeadModel(gpt2_config(tok, n_layer=2, n_head=config.n_head, n_embd=config.n_embd,
                                        n_positions=config.n_positions, tie_word_embeddings=False))
    start = time.time()
    losses = train_lm(model, batch_sampler(config, tok), steps=config.steps, lr=config.lr, seed=config.seed,
                      warmup=config.warmup, weight_decay=config.weight_decay, log=log)
    return model, tok, {"losses": losses, "train_seconds": round(time.time() - start, 1),
                        "threads": torch.get_num_threads()}


def measure_ground_truth(model_or_folder, config: InductionConfig | None = None) -> dict:
    """Measure the circuit through the model layer (`load_model` on the saved folder) and the
    head detectors, on fresh probes BOS + span + span drawn with `config.eval_seed`.

    Returns a JSON-ready dict: the top previous-token and induction heads, every head scoring
    at least `INDUCTION_HEAD_SCORE` as an induction head (best first), every head's scores, the
    in-context loss on the first and on the repeated half of the probes, and the effect on the
    top induction head of zeroing each layer-0 head's z (`interp.models.ablation`).
    """
    # analyses sits above interp; this build-time measurement is the one place a recipe
    # needs it, so it is imported here and never when interp is imported.
    from analyses.heads import detect_heads, make_probe
    from interp.models import HookedModel, load_model
    from interp.models.ablation import ablation

    config = config or InductionConfig()
    model = model_or_folder if isinstance(model_or_folder, HookedModel) else load_model(model_or_folder, device="cpu")
    probe_args = {"n_sequences": config.eval_sequences, "span": config.eval_span, "seed": config.eval_seed}
    scores = detect_heads(model, **probe_args, progress=False)
    prev = [int(v) for v in scores.top("previous_token").iloc[0][["layer", "head"]]]
    ind = [int(v) for v in scores.top("induction").iloc[0][["layer", "head"]]]
    probe = make_probe(model, **probe_args)
    with torch.no_grad():
        first, repeated = in_context_losses(model(probe.tokens), probe.tokens, probe.start, probe.span)

    zeroing = {}
    for head in range(model.cfg.n_heads):
        zeroed = ablation(model, [(0, head)])
        after = detect_heads(model, **probe_args, kinds=["induction"], interventions=zeroed, progress=False)
        with torch.no_grad():
            logits = model.run(probe.tokens, interventions=zeroed)[0]
        _, rep_after = in_context_losses(logits, probe.tokens, probe.start, probe.span)
        zeroing[f"L0H{head}"] = {"induction_score": round(float(after["induction"][ind[0], ind[1]]), 4),
                                 "induction_scores_layer1": [round(float(v), 4) for v in after["induction"][1]],
                                 "loss_repeated_half": round(rep_after, 4)}
    induction_heads = [[int(row["layer"]), int(row["head"])]
                       for _, row in scores.top("induction", k=scores["induction"].numel()).iterrows()
                       if row["score"] >= INDUCTION_HEAD_SCORE]
    return {
        "previous_token_head": prev,
        "induction_head": ind,
        "induction_heads": induction_heads,
        "scores": {kind: [[round(float(v), 4) for v in row] for row in score]
                   for kind, score in scores.scores.items()},
        "loss_first_half": round(first, 4),
        "loss_repeated_half": round(repeated, 4),
        "ablation": {
            "intervention": "Zero z(0, h): one layer-0 head's z zeroed (interp.models.ablation)",
            "induction_score_before": round(float(scores["induction"][ind[0], ind[1]]), 4),
            "previous_token_head_zeroed": zeroing[f"L0H{prev[1]}"] if prev[0] == 0 else None,
            "each_layer0_head": zeroing,
        },
        "probe": {**probe_args, "layout": "BOS + span + span, span tokens distinct"},
    }


def in_context_losses(logits: torch.Tensor, tokens: torch.Tensor, start: int, span: int) -> tuple[float, float]:
    """Mean next-token loss, from `logits [batch, pos, vocab]` on `tokens [batch, pos]` whose
    span starts at `start`, over the span's first occurrence and over its repeat, leaving out
    the repeat's first token, which nothing predicts."""
    # loss[:, t] is the loss of predicting token t + 1.
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:].to(logits.device),
                                             reduction="none")
    first = loss[:, start - 1:start + span - 1].mean().item()
    repeated = loss[:, start + span:start + 2 * span - 1].mean().item()
    return first, repeated


def check_ground_truth(truth: dict) -> list[str]:
    """What is wrong with a measured circuit, as readable lines (empty when all holds)."""
    problems = []
    prev, ind = truth["previous_token_head"], truth["induction_head"]
    if prev[0] != 0:
        problems.append(f"the top previous-token head is L{prev[0]}H{prev[1]}, not in layer 0")
    if ind[0] != 1:
        problems.append(f"the top induction head is L{ind[0]}H{ind[1]}, not in layer 1")
    before = truth["ablation"]["induction_score_before"]
    if before < 0.8:
        problems.append(f"the induction head's score is {before:.3f} (< 0.8)")
    zeroed = truth["ablation"]["previous_token_head_zeroed"]
    if zeroed is not None and zeroed["induction_score"] > 0.5 * before:
        problems.append(f"zeroing the previous-token head leaves the induction score at "
                        f"{zeroed['induction_score']:.3f} of {before:.3f}")
    if truth["loss_repeated_half"] > 0.5 * truth["loss_first_half"]:
        problems.append(f"loss on the repeated half {truth['loss_repeated_half']:.3f} is not well below "
                        f"the first half's {truth['loss_first_half']:.3f}")
    return problems


def model_card(truth: dict, config: InductionConfig, train_log: dict) -> tuple[dict, str]:
    """`card.json` (ground truth as data) and `MODEL_CARD.md` (the same, for people)."""
    prev, ind = truth["previous_token_head"], truth["induction_head"]
    card = {
        "name": NAME,
        "description": "2-layer GPT-2 trained on random tokens with short copies of earlier stretches; "
                       "a previous-token head in layer 0 feeds an induction head in layer 1",
        "architecture": {"n_layer": 2, "n_head": config.n_head, "d_model": config.n_embd,
                         "d_head": config.n_embd // config.n_head, "n_positions": config.n_positions,
                         "vocab": f"<bos> <pad> <unk> t0 .. t{config.vocab_size - 1}"},
        **truth,
        "final_train_loss": round(sum(train_log["losses"][-100:]) / len(train_log["losses"][-100:]), 4),
        "recipe": dataclasses.asdict(config),
        "train_seconds": train_log["train_seconds"],
        "train_threads": train_log["threads"],
        "torch_version": torch.__version__,
    }
    zeroed = truth["ablation"]["previous_token_head_zeroed"] or {}
    heads = ", ".join(f"L{layer}H{head}" for layer, head in truth["induction_heads"])
    rows = "\n".join(f"| {h} | {v['induction_score']:.3f} | "
                     f"{', '.join(f'{x:.3f}' for x in v['induction_scores_layer1'])} | {v['loss_repeated_half']:.3f} |"
                     for h, v in truth["ablation"]["each_layer0_head"].items())
    score_rows = "\n".join(
        f"| L{layer}H{head} | " + " | ".join(f"{truth['scores'][k][layer][head]:.3f}" for k in truth["scores"]) + " |"
        for layer in range(2) for head in range(config.n_head))
    markdown = f"""# {NAME}

A 2-layer, {config.n_head}-head GPT-2 (d_model {config.n_embd}, {config.n_positions} positions, word-level
vocabulary `t0` .. `t{config.vocab_size - 1}` plus `<bos>`), trained from scratch by
`recipes/induction.py`. Its known circuit: **L{prev[0]}H{prev[1]} is a previous-token head, and
{heads} {"are induction heads" if len(truth["induction_heads"]) > 1 else "is an induction head"}** (strongest: L{ind[0]}H{ind[1]}): each finds "the token after the earlier
occurrence of the current token" through the previous-token head's output (K-composition), so
zeroing L{prev[0]}H{prev[1]} takes them all down. The layer-1 heads share the copying work nearly evenly,
so which of them ranks first can change from one probe set to another.

## How it was made

Each training sequence is `<bos>` followed by {config.n_positions - 1} tokens: random filler
(1..{config.max_filler} uniform random tokens) and, with probability {config.copy_prob} per segment, a copy
of {config.min_span}..{config.max_span} tokens of an earlier stretch of the same sequence (random source
start, so a random distance back: no fixed offset to learn). The loss counts only the copy
tokens after the first, the only predictable ones; input and output embeddings are untied
(tied ones, or a loss on every token, give a shifted circuit instead: see the recipe's
docstring). {config.steps} steps of batch {config.batch_size}, AdamW lr {config.lr} (warm-up {config.warmup},
cosine to 10%), weight decay {config.weight_decay}, seed {config.seed}: {train_log['train_seconds']:.0f} s on
{train_log['threads']} CPU thread(s); final training loss {card['final_train_loss']:.3f} nats on the copied tokens.
Since unpredictable tokens never entered the loss, the model is confidently wrong on them (see
the first-half loss below): it is a language model of the predictable tokens only.

## Ground truth

Measured through `interp.load_model` and `analyses.heads.detect_heads` on {truth['probe']['n_sequences']} fresh
probes `<bos> + span + span` (span {truth['probe']['span']} distinct random tokens, seed {truth['probe']['seed']}):

| head | previous-token | induction | duplicate-token |
|------|---|---|---|
{score_rows}

- In-context loss: first half {truth['loss_first_half']:.3f} nats, repeated half {truth['loss_repeated_half']:.3f} nats
  (the repeat's first token left out; uniform guessing is {torch.log(torch.tensor(float(config.vocab_size))):.3f}).
- Zeroing L{prev[0]}H{prev[1]}'s z (`interp.models.ablation`) takes the induction head's score from
  {truth['ablation']['induction_score_before']:.3f} to {zeroed.get('induction_score', float('nan')):.3f}. Each layer-0 head zeroed in turn:

| zeroed | induction score of L{ind[0]}H{ind[1]} | induction scores of L1H0..L1H{config.n_head - 1} | loss on repeated half |
|---|---|---|---|
{rows}

## Use and rebuild

```python
from interp import load_model
m = load_model("{NAME}")
```

Rebuild (same settings, same seed): `python -m recipes.train induction-2l --threads 1`.
`card.json` holds all of the above as data; tests read head indices from it.
"""
    return card, markdown


def build(out_folder: Path, config: InductionConfig | None = None, threads: int | None = None) -> Path:
    """Train, measure the ground truth through the model layer, and save the checkpoint with
    `card.json` and `MODEL_CARD.md`. Raises RuntimeError (saving nothing) if the trained model
    lacks the circuit."""
    config = config or InductionConfig()
    model, tok, train_log = train(config, threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        truth = measure_ground_truth(tmp, config)
    problems = check_ground_truth(truth)
    if problems:
        raise RuntimeError("the trained model lacks the induction circuit: " + "; ".join(problems))
    card, markdown = model_card(truth, config, train_log)
    return save_checkpoint(model, tok, Path(out_folder), card, markdown)
