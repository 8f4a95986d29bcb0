"""Recipe for `zoo/ioi-small`: a 4-layer GPT-2 that solves indirect-object identification.

It is trained from scratch on a mix of answered IOI prompts ("When Mary and John went to the
store , John gave a drink to Mary ."), answered colored-objects prompts and filler sentences
(`ioi_data`), then scored on held-out name pairs, a held-out IOI template and a held-out
colored-objects template. The later circuit analyses (patching, path patching, ACDC) run on
it with the prompts of `ioi_data.ioi_prompts`.

    build(Path("interp/zoo/checkpoints/ioi-small"), threads=1)
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from circuits.tasks import ioi_data
from recipes.common import build_word_tokenizer, gpt2_config, save_checkpoint, train_lm

NAME = "zoo/ioi-small"
EVAL_SEED = 1234


@dataclass(frozen=True)
class IOIConfig:
    """Everything that determines the trained model (same config + seed = same weights)."""

    n_layer: int = 4
    n_head: int = 8
    n_embd: int = 128
    n_positions: int = 48
    steps: int = 3000
    batch_size: int = 48
    lr: float = 2e-3
    warmup: int = 200
    weight_decay: float = 0.01
    seed: int = 0
    mix_ioi: float = 0.45  # relative shares of the training sentences
    mix_color: float = 0.3
    mix_filler: float = 0.25
    answer_weight: float = 8.0  # loss weight of the answer token of a task sentence (others 1)
    eval_prompts: int = 200  # per template and split

    @property
    def mix(self) -> dict[str, float]:
        return {"ioi": self.mix_ioi, "color": self.mix_color, "filler": self.mix_filler}

    def shrunk(self) -> IOIConfig:
        """A small, short variant for tests (well under a minute on one CPU thread)."""
        return dataclasses.replace(self, n_layer=2, n_head=4, n_embd=64, steps=800, batch_size=32,
                                   lr=4e-3, warmup=100, mix_ioi=0.8, mix_color=0.1, mix_filler=0.1,
                                   eval_prompts=40)


def tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer of the recipe (same ids on every call)."""
    return build_word_tokenizer(ioi_data.vocabulary())


def encode(tok: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    """Token ids of each text with BOS prepended, as the model layer feeds them."""
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    unknown = [t for t, row in zip(texts, ids) if tok.unk_token_id in row]
    if unknown:
        raise ValueError(f"text has words outside the vocabulary: {unknown[0]!r}")
    return [[tok.bos_token_id, *row] for row in ids]


def batch_sampler(tok: PreTrainedTokenizerFast, batch_size: int, answer_weight: float,
                  draw: Callable[[random.Random], tuple[str, list[int]]]):
    """`sample_batch(gen) -> (tokens [batch, pos], loss weights [batch, pos])` for `train_lm`:
    `batch_size` texts from `draw(rng) -> (text, answer indices in text.split())`, BOS first,
    right-padded; weight 1 per token, `answer_weight` on answer tokens, 0 on padding."""

    def sample_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rng = random.Random(int(torch.randint(2**62, (1,), generator=gen)))
        texts, answers = zip(*(draw(rng) for _ in range(batch_size)))
        rows = encode(tok, list(texts))
        width = max(map(len, rows))
        tokens = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        weights = torch.zeros(len(rows), width)
        for i, (row, answer) in enumerate(zip(rows, answers)):
            tokens[i, :len(row)] = torch.tensor(row)
            weights[i, :len(row)] = 1.0
            weights[i, [a + 1 for a in answer]] = answer_weight  # +1: BOS
        return tokens, weights

    return sample_batch


def _batch_sampler(tok: PreTrainedTokenizerFast, config: IOIConfig):
    """`batch_sampler` of `ioi_data.training_text` with this config's mix."""
    return batch_sampler(tok, config.batch_size, config.answer_weight,
                         lambda rng: ioi_data.training_text(rng, config.mix))


def train(config: IOIConfig | None = None,
          log: Callable[[str], None] = print) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast, list[float]]:
    """Train a fresh model; returns `(model, tokenizer, per-step losses)`, model in eval mode."""
    config = config or IOIConfig()
    tok = tokenizer()
    torch.manual_seed(config.seed)
    model = GPT2LMHeadModel(gpt2_config(tok, n_layer=config.n_layer, n_head=config.n_head,
                                        n_embd=config.n_embd, n_positions=config.n_positions))
    losses = train_lm(model, _batch_sampler(tok, config), steps=config.steps,
                      lr=config.lr, seed=config.seed, warmup=config.warmup,
                      weight_decay=config.weight_decay, log=log)
    return model, tok, losses


@torch.no_grad()
def last_logits(model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """Logits at the last position of each text (BOS prepended): `[len(texts), d_vocab]`."""
    rows = encode(tok, texts)
    out = torch.empty(len(rows), model.config.vocab_size)
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_length.setdefault(len(row), []).append(i)
    for idx in by_length.values():
        tokens = torch.tensor([rows[i] for i in idx])
        out[idx] = model(tokens).logits[:, -1].float()
    return out


def score_prompts(model, tok, prompts, candidates: list[str]) -> dict:
    """Accuracy (answer logit > wrong logit), mean logit diff, argmax accuracy among `candidates`
    and over the whole vocabulary, for prompts with `.clean`, `.answer`, `.wrong`."""
    logits = last_logits(model, tok, [p.clean for p in prompts])
    vocab = tok.get_vocab()
    answer = torch.tensor([vocab[p.answer] for p in prompts])
    wrong = torch.tensor([vocab[p.wrong] for p in prompts])
    cand = torch.tensor([vocab[c] for c in candidates])
    rows = torch.arange(len(prompts))
    diff = logits[rows, answer] - logits[rows, wrong]
    return {
        "n": len(prompts),
        "accuracy": (diff > 0).float().mean().item(),
        "logit_diff": diff.mean().item(),
        "logit_diff_min": diff.min().item(),
        "candidate_argmax_accuracy": (cand[logits[:, cand].argmax(-1)] == answer).float().mean().item(),
        "top1_accuracy": (logits.argmax(-1) == answer).float().mean().item(),
    }


def task_scores(model, tok, make: Callable, split_templates: Callable[[str], list[str]], candidates: list[str],
                n: int, seed: int) -> dict:
    """Per-split, per-template scores (`score_prompts`) of one task: `make(split, n, seed,
    template=t)` draws its prompts, `split_templates(split)` lists a split's templates.
    Returns `{split: {"overall": mean over templates, "per_template": {template: scores}}}`."""
    result = {}
    for split in ioi_data.SPLITS:
        per_template = {t: score_prompts(model, tok, make(split, n, seed, template=t), candidates)
                        for t in split_templates(split)}
        result[split] = {
            "overall": {key: sum(s[key] for s in per_template.values()) / len(per_template)
                        for key in ("accuracy", "logit_diff", "candidate_argmax_accuracy", "top1_accuracy")},
            "per_template": per_template,
        }
    return result


def _task_scores(model, tok, kind: str, n: int, seed: int) -> dict:
    """Per-split, per-template scores of one task ("ioi" or "color")."""
    make, candidates = {"ioi": (ioi_data.ioi_prompts, list(ioi_data.NAMES)),
                        "color": (ioi_data.colored_object_prompts, list(ioi_data.COLORS))}[kind]
    return task_scores(model, tok, make, lambda split: ioi_data.split_templates(kind, split), candidates, n, seed)


def evaluate(model: GPT2LMHeadModel | str | Path, n: int = 200, seed: int = EVAL_SEED) -> dict:
    """Score a model (or a checkpoint folder) on IOI and colored objects, both splits.

    `n` prompts per template and split, from `seed`. Returns
    `{"ioi": {split: {"overall": {...}, "per_template": {template: {...}}}}, "colored_objects": ...}`
    where each score has `accuracy` (answer logit > wrong logit at the last position),
    `logit_diff` (mean), `logit_diff_min`, `candidate_argmax_accuracy` (answer is the argmax
    among all names / all colors), `top1_accuracy` (argmax over the vocabulary) and `n`.
    "overall" averages the templates with equal weight.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if isinstance(model, (str, Path)):
        folder = Path(model)
        if not (folder / "config.json").is_file():
            raise ValueError(f"expected a checkpoint folder with config.json, got {str(folder)!r}")
        model, tok = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager"), PreTrainedTokenizerFast.from_pretrained(folder)
    elif isinstance(model, GPT2LMHeadModel):
        tok = tokenizer()
    else:
        raise ValueError(f"expected a GPT2LMHeadModel or a checkpoint folder, got {type(model).__name__}")
    model.eval()
    return {"ioi": _task_scores(model, tok, "ioi", n, seed),
            "colored_objects": _task_scores(model, tok, "color", n, seed)}


class _Tap:
    """Forward hooks on a GPT-2 that keep each layer's per-head attention output `z`
    (the input of `attn.c_proj`, `[batch, pos, n_head * d_head]`, heads in order), each MLP's
    output `[batch, pos, d_model]` and the residual stream before the final LayerNorm;
    optionally overwrite one head's `z`."""

    def __init__(self, model: GPT2LMHeadModel, patch: tuple[int, int, torch.Tensor] | None = None):
        self.model, self.patch, self.z, self.mlp, self.final = model, patch, {}, {}, None
        self.d_head = model.config.n_embd // model.config.n_head

    def _z_hook(self, layer: int):
        def hook(module, args):
            z = args[0]
            if self.patch is not None and self.patch[0] == layer:
                head, value = self.patch[1], self.patch[2]
                cols = slice(head * self.d_head, (head + 1) * self.d_head)
                z = z.clone()
                z[..., cols] = value[..., cols]
            self.z[layer] = z
            return (z,)
        return hook

    def run(self, tokens: torch.Tensor):
        """Returns the model output (logits `[batch, pos, d_vocab]`, attentions if eager)."""
        hooks = []
        for layer, block in enumerate(self.model.transformer.h):
            hooks.append(block.attn.c_proj.register_forward_pre_hook(self._z_hook(layer)))
            hooks.append(block.mlp.register_forward_hook(
                lambda module, args, output, layer=layer: self.mlp.__setitem__(layer, output)))
        hooks.append(self.model.transformer.ln_f.register_forward_pre_hook(
            lambda module, args: setattr(self, "final", args[0])))
        try:
            return self.model(tokens, output_attentions=True)
        finally:
            for hook in hooks:
                hook.remove()


@torch.no_grad()
def circuit_summary(model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, prompts: list[ioi_data.IOIPrompt]) -> dict:
    """What each head and MLP does for the IOI answer at the last position (means over `prompts`).

    Returns `{"clean_logit_diff", "corrupt_logit_diff", "mlp_dla": [per layer], "heads": [...]}`
    with one dict per head (layer-major) holding:

    - `dla`: direct logit attribution of the head's output to logit(IO) - logit(S): the output
      at the last position through the final LayerNorm (its scale frozen at the clean run) and
      the unembedding. Heads' `dla` plus `mlp_dla` (the same for each MLP's output) plus the
      embeddings' and biases' terms sum to the clean logit diff.
    - `attn_io`, `attn_s1`, `attn_s2`: attention from the last position to the indirect object
      and to the subject's first and second mention.
    - `abc_noising`: the share of the clean-minus-corrupted logit diff lost when this head's
      output `z` (all positions) comes from the ABC-corrupted prompt and the rest stays clean
      (mean logit diffs: (clean - patched) / (clean - corrupted)).
    """
    n_layer, n_head = model.config.n_layer, model.config.n_head
    vocab = tok.get_vocab()
    sums = torch.zeros(4, n_layer, n_head)
    mlp_dla = torch.zeros(n_layer)
    patched = torch.zeros(n_layer, n_head)
    clean_ld = corrupt_ld = 0.0
    for template in sorted({p.template for p in prompts}):
        group = [p for p in prompts if p.template == template]
        rows = torch.arange(len(group))
        answer = torch.tensor([vocab[p.answer] for p in group])
        wrong = torch.tensor([vocab[p.wrong] for p in group])

        def logit_diff(logits: torch.Tensor) -> float:  # summed over the group
            return (logits[rows, -1, answer] - logits[rows, -1, wrong]).sum().item()

        clean, corrupt = (torch.tensor(encode(tok, [getattr(p, f) for p in group])) for f in ("clean", "corrupt"))
        tap, corrupt_tap = _Tap(model), _Tap(model)
        out = tap.run(clean)
        if len(out.attentions) != n_layer:
            raise ValueError("circuit_summary needs attention weights: load the model with attn_implementation='eager'")
        clean_ld += logit_diff(out.logits)
        corrupt_ld += logit_diff(corrupt_tap.run(corrupt).logits)

        final = tap.final[:, -1]  # [batch, d_model]
        scale = (final.var(-1, unbiased=False, keepdim=True) + model.transformer.ln_f.eps).sqrt()
        w_u = model.lm_head.weight  # [d_vocab, d_model]
        direction = model.transformer.ln_f.weight * (w_u[answer] - w_u[wrong]) / scale  # [batch, d_model]
        words = [p.clean.split() for p in group]
        # Token positions: +1 for BOS.
        io = torch.tensor([w.index(p.answer) + 1 for w, p in zip(words, group)])
        s1 = torch.tensor([w.index(p.wrong) + 1 for w, p in zip(words, group)])
        s2 = torch.tensor([len(w) - w[::-1].index(p.wrong) for w, p in zip(words, group)])
        for layer, block in enumerate(model.transformer.h):
            z_last = tap.z[layer][:, -1].view(len(group), n_head, tap.d_head)
            w_o = block.attn.c_proj.weight.view(n_head, tap.d_head, -1)  # [head, d_head, d_model]
            head_out = torch.einsum("bhk,hkd->bhd", z_last, w_o)
            head_out = head_out - head_out.mean(-1, keepdim=True)
            sums[0, layer] += torch.einsum("bhd,bd->h", head_out, direction)
            mlp_out = tap.mlp[layer][:, -1]
            mlp_dla[layer] += ((mlp_out - mlp_out.mean(-1, keepdim=True)) * direction).sum()
            pattern = out.attentions[layer][:, :, -1]  # [batch, head, key]
            for i, pos in enumerate((io, s1, s2), start=1):
                sums[i, layer] += pattern[rows, :, pos].sum(0)
            for head in range(n_head):
                patched[layer, head] += logit_diff(_Tap(model, (layer, head, corrupt_tap.z[layer])).run(clean).logits)
    n = len(prompts)
    sums /= n
    noising = (clean_ld - patched) / (clean_ld - corrupt_ld)
    heads = [{"layer": layer, "head": head, "dla": round(sums[0, layer, head].item(), 4),
              "attn_io": round(sums[1, layer, head].item(), 4), "attn_s1": round(sums[2, layer, head].item(), 4),
              "attn_s2": round(sums[3, layer, head].item(), 4), "abc_noising": round(noising[layer, head].item(), 4)}
             for layer in range(n_layer) for head in range(n_head)]
    return {"clean_logit_diff": round(clean_ld / n, 4), "corrupt_logit_diff": round(corrupt_ld / n, 4),
            "mlp_dla": [round(x, 4) for x in (mlp_dla / n).tolist()], "heads": heads}


def split_definition() -> dict:
    """The held-out split, machine-readable (what `ioi_data` holds out from training)."""
    return {
        "ioi_templates": {t: ioi_data.IOI_TEMPLATES[t] for t in ioi_data.IOI_TEMPLATES},
        "held_out_ioi_templates": list(ioi_data.HELD_OUT_IOI_TEMPLATES),
        "color_templates": {t: ioi_data.COLOR_TEMPLATES[t] for t in ioi_data.COLOR_TEMPLATES},
        "held_out_color_templates": list(ioi_data.HELD_OUT_COLOR_TEMPLATES),
        "pair_rule": f"unordered name pair {{A, B}} (sorted) is held out when the first 8 bytes of "
                     f"sha256('pair|A|B') / 2**64 < {ioi_data.HELD_OUT_PAIR_FRACTION}",
        "held_out_pairs": [list(p) for p in ioi_data.held_out_pairs()],
        "object_pair_rule": f"unordered object pair {{A, B}} (sorted) is held out when "
                            f"sha256('objects|A|B') / 2**64 < {ioi_data.HELD_OUT_OBJECT_PAIR_FRACTION}",
        "held_out_object_pairs": [list(p) for p in ioi_data.held_out_object_pairs()],
        "test_split": "IOI: held-out name pairs over all templates; colored objects: the asked "
                      "object and the distractor form a held-out object pair, over all templates",
    }


def score_table(scores: dict) -> str:
    """`task_scores`'s result as a markdown table."""
    lines = ["| split | template | accuracy | mean logit diff | min logit diff | argmax among candidates | top-1 |",
             "|---|---|---|---|---|---|---|"]
    for split, block in scores.items():
        for t, s in block["per_template"].items():
            lines.append(f"| {split} | {t} | {s['accuracy']:.3f} | {s['logit_diff']:.2f} | "
                         f"{s['logit_diff_min']:.2f} | {s['candidate_argmax_accuracy']:.3f} | {s['top1_accuracy']:.3f} |")
        o = block["overall"]
        lines.append(f"| {split} | **all (mean)** | {o['accuracy']:.3f} | {o['logit_diff']:.2f} | | "
                     f"{o['candidate_argmax_accuracy']:.3f} | {o['top1_accuracy']:.3f} |")
    return "\n".join(lines)


def _head_table(heads: list[dict], top: int = 8) -> str:
    lines = ["| head | abc_noising | dla | attn IO | attn S1 | attn S2 |", "|---|---|---|---|---|---|"]
    for h in sorted(heads, key=lambda h: -abs(h["abc_noising"]))[:top]:
        lines.append(f"| L{h['layer']}H{h['head']} | {h['abc_noising']:.3f} | {h['dla']:.2f} | "
                     f"{h['attn_io']:.2f} | {h['attn_s1']:.2f} | {h['attn_s2']:.2f} |")
    return "\n".join(lines)


def _colored_objects_note(scores: dict) -> str:
    train, test = (scores["colored_objects"][split]["overall"]["accuracy"] for split in ("train", "test"))
    text = (f"Colored-objects accuracy (asked object's color vs the distractor's): train {train:.2f}, "
            f"test {test:.2f}; chance is 0.5.")
    if max(train, test) < 0.75:
        text += (" **The model does not solve colored objects**: it puts its mass on the colors of the "
                 "scene but cannot tell which belongs to the asked object. That look-up needs an "
                 "induction-like circuit (a previous-token head feeding a matching head), which did not "
                 "form within this training budget; use this model for IOI, not for colored objects.")
    return text


def _markdown(card: dict) -> str:
    c, s = card["config"], card["scores"]
    held_ioi = ", ".join(card["split"]["held_out_ioi_templates"])
    held_col = ", ".join(card["split"]["held_out_color_templates"])
    return f"""# {NAME}

A small GPT-2 ({c['n_layer']} layers x {c['n_head']} heads, d_model {c['n_embd']}, word-level
vocabulary of {card['architecture']['d_vocab']} tokens) trained from scratch to do
**indirect-object identification** (IOI): after "When Mary and John went to the store , John gave a
drink to" it says "Mary". It was also trained on colored-objects questions ("On the table , I see a
red pen and a blue key . What color is the key ? It is" -> "blue") and on filler sentences of the
same little world. It is the model the project's circuit analyses (patching, path patching, ACDC,
attribution patching) are run and tested on.

{_colored_objects_note(s)}

## How it was made

`recipes/ioi.py` with data from `circuits/tasks/ioi_data.py`: {c['steps']} AdamW steps
of {c['batch_size']} sentences, one sentence per sequence (lr {c['lr']}, warm-up {c['warmup']}, cosine
to 10%, weight decay {c['weight_decay']}, seed {c['seed']}). Next-token loss on every token, the answer
token of task sentences weighted {c['answer_weight']}x. Mix (relative shares): answered IOI prompts
{c['mix_ioi']} ({len(card['split']['ioi_templates']) - len(card['split']['held_out_ioi_templates'])}
templates, ABBA and BABA orders), answered colored-objects prompts {c['mix_color']}, filler
{c['mix_filler']}. BOS (`<bos>`) is prepended to every sequence, as the model layer does.
Training took {card['train_seconds']:.0f} s on {card['train_threads']} CPU thread(s); final loss
(weighted, mean of the last 100 steps) {card['final_loss']:.3f}.

## Held-out split

- **Name pairs**: {len(card['split']['held_out_pairs'])} of {len(card['names']) * (len(card['names']) - 1) // 2}
  unordered pairs of the {len(card['names'])} names never occur together in a training sentence
  ({card['split']['pair_rule']}). Every name occurs in training with other partners.
- **Templates**: IOI template(s) {held_ioi} and colored-objects template(s) {held_col} never
  occur in training (every word in them does, elsewhere).
- **Object pairs**: {len(card['split']['held_out_object_pairs'])} of {len(card['things']) * (len(card['things']) - 1) // 2}
  unordered pairs of the {len(card['things'])} objects never appear in one training scene; in
  colored-objects test prompts the asked object and the distractor form such a pair.

The "test" split = held-out pairs over all templates, the held-out templates included.

## Scores

Logits at the last prompt position. accuracy = logit(answer) > logit(wrong) (IOI: indirect object vs
subject; colors: the queried object's color vs another object's color in the scene). Argmax among
candidates = the answer beats all {len(card['names'])} names (all {len(card['colors'])} colors).
{card['eval']['n_per_template']} prompts per template and split, seed {card['eval']['seed']}.

### IOI

{score_table(s['ioi'])}

### Colored objects

{score_table(s['colored_objects'])}

## What the heads do (measured, not designed)

On `{card['circuit']['prompts']}`: mean logit diff clean {card['circuit']['clean_logit_diff']:.2f},
ABC-corrupted {card['circuit']['corrupt_logit_diff']:.2f}. Heads ranked by `abc_noising` (share of
that gap lost when only this head's output comes from the corrupted prompt); `dla` = direct logit
attribution to logit(IO) - logit(S) at the last position; attention from the last position to
IO, S1 (subject, first mention) and S2 (second mention). All heads are in `card.json` ("circuit").
The circuit was learned, not designed; read it off these numbers (e.g. heads that attend from the
last position to S2 and whose ABC noising removes much of the logit difference carry the subject's
second mention to the answer position, where the MLPs write most of the logit difference).

{_head_table(card['circuit']['heads'])}

MLP direct logit attribution by layer: {", ".join(f"{x:.2f}" for x in card['circuit']['mlp_dla'])}.

## Use and rebuild

```python
from interp.models import load_model
from circuits.tasks.ioi_data import ioi_prompts
m = load_model("{NAME}")
prompts = ioi_prompts("test", n=64, seed=0)   # .clean .corrupt (ABC) .answer .wrong .template
```

Rebuild (deterministic for a given torch version and thread count):
`python -c "from pathlib import Path; from recipes.ioi import build; build(Path('interp/zoo/checkpoints/ioi-small'), threads=1)"`
"""


def build(out_folder: Path, config: IOIConfig | None = None, threads: int | None = None) -> Path:
    """Train, evaluate and save `zoo/ioi-small` (HF folder + `card.json` + `MODEL_CARD.md`)."""
    config = config or IOIConfig()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    start = time.time()
    model, tok, losses = train(config)
    train_seconds = time.time() - start
    scores = evaluate(model, n=config.eval_prompts)
    circuit = circuit_summary(model, tok, ioi_data.ioi_prompts("test", config.eval_prompts, seed=EVAL_SEED))
    card = {
        "name": NAME,
        "task": "indirect-object identification (+ colored objects, filler LM)",
        "architecture": {"n_layers": config.n_layer, "n_heads": config.n_head, "d_model": config.n_embd,
                         "d_head": config.n_embd // config.n_head, "d_vocab": len(tok),
                         "n_positions": config.n_positions, "bos_prepended": True},
        "config": dataclasses.asdict(config),
        "train_seconds": round(train_seconds, 1),
        "train_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "names": list(ioi_data.NAMES),
        "colors": list(ioi_data.COLORS),
        "things": list(ioi_data.THINGS),
        "split": split_definition(),
        "eval": {"n_per_template": config.eval_prompts, "seed": EVAL_SEED, "position": "last prompt token"},
        "scores": scores,
        "circuit": {"prompts": f"ioi_prompts('test', {config.eval_prompts}, seed={EVAL_SEED})", **circuit},
    }
    folder = save_checkpoint(model, tok, Path(out_folder), card, _markdown(card))
    write_corpus(folder)
    return folder


CORPUS_TEXTS, CORPUS_SEED = 3000, 7


def write_corpus(folder: Path, n: int = CORPUS_TEXTS, seed: int = CORPUS_SEED,
                 text: Callable[[random.Random], tuple[str, list[int]]] = ioi_data.training_text) -> Path:
    """`corpus.txt` in the checkpoint folder: `n` texts of the training distribution (`text(rng)`,
    one per line, drawn with `seed`), the corpus SAEs of this model train on by default."""
    rng = random.Random(seed)
    path = Path(folder) / "corpus.txt"
    path.write_text("".join(text(rng)[0] + "\n" for _ in range(n)), encoding="utf-8")
    return path
