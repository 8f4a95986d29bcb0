"""Recipe for `zoo/constructed`: a 3-layer GPT-2 whose circuit is known by construction.

Nothing is trained: every weight is set by hand (as tracr compiles programs into
transformers), so the edges that solve the task and the heads that are busy but irrelevant
are facts of the design, not findings. Circuit-discovery methods are held against it: exact
edge patching and ACDC must recover the reference edges perfectly, and approximations (EAP,
EAP-IG) can be measured.

**Task.** `<bos> x1 .. xn xk` (n distinct words, 1 <= k < n) continues with `x(k+1)`: the
word that followed the last word's earlier occurrence. The corrupted prompt has the same
layout with n other words (none of the clean prompt's), so it asks for another answer, the
`wrong` token of the logit difference.

**Mechanism.** The residual stream is cut into *slots*, disjoint blocks of dimensions
(`SLOTS`); each component reads some slots and writes one. A word is coded in 8 dimensions as
e_i - e_j for its pair i < j (`code`): two words' codes have dot product 2 when equal and at
most 1 otherwise.

- a0.h0, previous-token head: attends from i to i-1 (positions only) and writes the word
  there into `prev_token`.
- a1.h0, induction head: its query is the current word, its keys the previous words, so at
  the last position it attends to x(k+1); it copies that word into `induced`.
- m1, clean-up MLP: one ReLU unit per word fires when `induced` holds exactly that word and
  writes the word into `answer` (a blend of words, or nothing, fires no unit).
- a2.h0, mover head: its query is `answer`, its keys the words, so it attends to the earlier
  occurrence of the answer and copies that token into `output`, the only slot the
  unembedding reads.

Content heads fall back to `<bos>` (value zero) when no key matches exactly. Distractors (the
other 9 heads, m0 and m2) attend sharply to content tokens and write as much as the circuit
heads do, several of them read circuit slots, but they write only into `two_back` and
`junk`, which no circuit component and not the unembedding reads.

**Why every non-reference edge has exactly zero effect.** LayerNorm's epsilon (1e12) dwarfs
every variance, so each LayerNorm is the affine map (x - mean(x)) * w / sqrt(eps) with
w = sqrt(eps); every reading direction (W_Q, W_K, W_V, W_in columns, W_U rows) lies in one
slot and sums to zero, so the mean subtraction changes nothing it reads, and nothing leaks
from a slot into a reader of another. That, not sharpness, makes the off-reference effects
zero. Sharpness (attention score margins >= 150, ReLU margins >= 1) makes the intended
patterns one-hot to floating-point precision, so the reference edges' effects are round
numbers (`REFERENCE_EFFECTS`).

    build(Path("interp/zoo/checkpoints/constructed"))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from circuits.tasks.constructed import FIRST_WORD_ID, N_POSITIONS, NAME, WORDS, task_prompts
from recipes.common import build_word_tokenizer, gpt2_config, save_checkpoint

N_LAYER, N_HEAD, D_MODEL, D_MLP = 3, 4, 64, 32
D_HEAD = D_MODEL // N_HEAD
LAYER_NORM_EPS = 1e12

CODE_DIMS = 8
PAIRS = list(combinations(range(CODE_DIMS), 2))  # word w is coded by PAIRS[w]
assert len(PAIRS) == len(WORDS)

SLOTS = {
    "token": (0, 8),         # the word at this position (embedding)
    "position": (8, 12),     # (cos, sin, -cos, -sin) of THETA * position (embedding)
    "bos": (12, 14),         # (1, -1) at <bos> (embedding)
    "prev_token": (14, 22),  # a0.h0: the word one position back
    "induced": (22, 30),     # a1.h0: the word after the current word's earlier occurrence
    "answer": (30, 38),      # m1: the same word, cleaned up (zero unless exactly one word)
    "output": (38, 46),      # a2.h0: the answer token; the only slot the unembedding reads
    "two_back": (46, 54),    # a0.h1 (distractor): the word two positions back; read by a1.h1 only
    "junk": (54, 64),        # what the other distractors write; nothing reads it
}
CIRCUIT_SLOTS = ("token", "position", "bos", "prev_token", "induced", "answer", "output")

THETA = 2 * math.pi / N_POSITIONS
KAPPA = 300.0            # content score unit: exact match 2K, any other word <= K, <bos> fallback 1.5K
POSITION_MARGIN = 150.0  # positional heads: score of the target position minus that of any other
NU = POSITION_MARGIN / (1 - math.cos(THETA))
UNIT_GAIN, UNIT_THRESHOLD = 4.0, 1.75  # MLP unit for word w: ReLU(UNIT_GAIN * (code(w) . x - UNIT_THRESHOLD))
LOGIT_SCALE = 5.0        # logits = LOGIT_SCALE * code(w) . output: logit difference 5, 10 or 15

EVAL_SEED, EVAL_PROMPTS = 2024, 512


@dataclass(frozen=True)
class Head:
    """One attention head of the design. A positional head (`offset` set) attends from i to
    i - offset; a content head attends where its key's word code equals its query's, else to
    `<bos>`. `query`, `key`, `value` name the slots read, `writes` the slot written."""

    layer: int
    head: int
    role: str
    in_circuit: bool
    value: str
    writes: str
    query: str = "position"
    key: str = "position"
    offset: int | None = None
    junk_shift: int = 0  # where in `junk` the head's 8-dim code lands (0..2), and its sign
    junk_sign: float = 1.0

    @property
    def name(self) -> str:
        return f"a{self.layer}.h{self.head}"


@dataclass(frozen=True)
class Mlp:
    """One MLP of the design: a ReLU unit per word fires when slot `reads` holds exactly that
    word's code, and writes into `writes` that word's code (circuit) or another word's code
    (`junk_shift` words on, placed in `junk`)."""

    layer: int
    role: str
    in_circuit: bool
    reads: str
    writes: str
    junk_shift: int = 0

    @property
    def name(self) -> str:
        return f"m{self.layer}"


HEADS = [
    Head(0, 0, "previous-token", True, offset=1, value="token", writes="prev_token"),
    Head(0, 1, "two-back (distractor)", False, offset=2, value="token", writes="two_back"),
    Head(0, 2, "current-token (distractor)", False, offset=0, value="token", writes="junk", junk_shift=0),
    Head(0, 3, "three-back (distractor)", False, offset=3, value="token", writes="junk", junk_shift=2, junk_sign=-1),
    Head(1, 0, "induction", True, query="token", key="prev_token", value="token", writes="induced"),
    Head(1, 1, "shifted induction (distractor)", False, query="token", key="two_back", value="token",
         writes="junk", junk_shift=1),
    Head(1, 2, "previous-word finder (distractor)", False, query="prev_token", key="token", value="prev_token",
         writes="junk", junk_shift=2),
    Head(1, 3, "previous-token, layer 1 (distractor)", False, offset=1, value="prev_token", writes="junk",
         junk_shift=0, junk_sign=-1),
    Head(2, 0, "mover", True, query="answer", key="token", value="token", writes="output"),
    Head(2, 1, "shifted mover (distractor)", False, query="answer", key="prev_token", value="token",
         writes="junk", junk_shift=1, junk_sign=-1),
    Head(2, 2, "copy reader (distractor)", False, query="induced", key="token", value="token", writes="junk",
         junk_shift=2),
    Head(2, 3, "answer echo (distractor)", False, offset=0, value="answer", writes="junk", junk_shift=1),
]
MLPS = [
    Mlp(0, "word detector (distractor)", False, reads="token", writes="junk", junk_shift=5),
    Mlp(1, "clean-up", True, reads="induced", writes="answer"),
    Mlp(2, "answer detector (distractor)", False, reads="answer", writes="junk", junk_shift=11),
]

# Edges whose corrupted patch changes the metric under the task's corruption, with the
# change in the normalised metric (clean = 1, corrupted = 0) that the design predicts.
# Seven edges send the run to "no match": every logit 0, the metric half-way (-0.5);
# the mover's value and output carry the corrupted answer itself (-1.0).
REFERENCE_EFFECTS = {
    "input->a0.h0<v>": -0.5,
    "a0.h0->a1.h0<k>": -0.5,
    "input->a1.h0<q>": -0.5,
    "input->a1.h0<v>": -0.5,
    "a1.h0->m1": -0.5,
    "m1->a2.h0<q>": -0.5,
    "input->a2.h0<k>": -0.5,
    "input->a2.h0<v>": -1.0,
    "a2.h0->logits": -1.0,
}
# Edges the mechanism uses that carry only what no corruption of words changes (positions, the
# <bos> marker): their patch has zero effect, so they are not in the reference.
STRUCTURAL_EDGES = ["input->a0.h0<q>", "input->a0.h0<k>", "input->a1.h0<k>"]


def code(word: int) -> torch.Tensor:
    """`[CODE_DIMS]` the code of word number `word`: e_i - e_j for its pair (i, j), i < j."""
    i, j = PAIRS[word]
    vec = torch.zeros(CODE_DIMS, dtype=torch.float64)
    vec[i], vec[j] = 1.0, -1.0
    return vec


def codes() -> torch.Tensor:
    """`[n_words, CODE_DIMS]` every word's code."""
    return torch.stack([code(w) for w in range(len(WORDS))])


def graph_edges(n_layers: int = N_LAYER, n_heads: int = N_HEAD) -> list[str]:
    """Every edge of a GPT-2's computational graph in the MIB / EAP-IG naming: from each
    upstream node (input, each head, each MLP) to each later input (a head's q, k, v; an MLP;
    the logits)."""
    upstream, edges = ["input"], []
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        edges += [f"{u}->{h}<{x}>" for h in heads for x in "qkv" for u in upstream]
        upstream += heads
        edges += [f"{u}->m{layer}" for u in upstream]
        upstream.append(f"m{layer}")
    return edges + [f"{u}->logits" for u in upstream]


def graph_nodes(n_layers: int = N_LAYER, n_heads: int = N_HEAD) -> list[str]:
    return (["input"] + [n for layer in range(n_layers)
                         for n in [f"a{layer}.h{h}" for h in range(n_heads)] + [f"m{layer}"]] + ["logits"])


# ----------------------------------------------------------------------------- weights

def _dims(slot: str) -> slice:
    return slice(*SLOTS[slot])


def _code_reader(slot: str) -> torch.Tensor:
    """`[d_model, CODE_DIMS]`: reads a code slot with directions centred within the slot, so
    they sum to zero (LayerNorm's mean subtraction cannot reach them) and see codes unchanged."""
    reader = torch.zeros(D_MODEL, CODE_DIMS, dtype=torch.float64)
    reader[_dims(slot)] = torch.eye(CODE_DIMS, dtype=torch.float64) - 1 / CODE_DIMS
    return reader


def _pair_reader(slot: str, first: int) -> torch.Tensor:
    """`[d_model]`: (e_a - e_b) / 2 for the `first`-th (+, -) pair of a slot laid out as
    (u, v, -u, -v) (position) or (1, -1) (bos): reads u (or v) back."""
    start, stop = SLOTS[slot]
    half = (stop - start) // 2
    reader = torch.zeros(D_MODEL, dtype=torch.float64)
    reader[start + first], reader[start + first + half] = 0.5, -0.5
    return reader


def _write(slot: str, shift: int = 0, sign: float = 1.0) -> torch.Tensor:
    """`[CODE_DIMS, d_model]`: places an 8-dim code into a slot (at `shift` within `junk`)."""
    out = torch.zeros(CODE_DIMS, D_MODEL, dtype=torch.float64)
    start = SLOTS[slot][0] + shift
    out[:, start:start + CODE_DIMS] = sign * torch.eye(CODE_DIMS, dtype=torch.float64)
    return out


def head_weights(spec: Head) -> dict[str, torch.Tensor]:
    """W_Q, W_K, W_V `[d_model, d_head]`, b_Q, b_K `[d_head]`, W_O `[d_head, d_model]` of one head.

    Scores are divided by sqrt(d_head) in GPT-2, hence the factor `sqrt(D_HEAD)` on W_Q.
    """
    w = {k: torch.zeros(D_MODEL, D_HEAD, dtype=torch.float64) for k in ("W_Q", "W_K", "W_V")}
    w["b_Q"] = torch.zeros(D_HEAD, dtype=torch.float64)
    w["b_K"] = torch.zeros(D_HEAD, dtype=torch.float64)
    scale = math.sqrt(D_HEAD)
    if spec.offset is not None:
        # q = NU * (cos, sin)(THETA (i - offset)), k = (cos, sin)(THETA j): score NU cos(THETA (i - offset - j)).
        cos, sin = _pair_reader("position", 0), _pair_reader("position", 1)
        turn = spec.offset * THETA
        w["W_Q"][:, 0] = scale * NU * (math.cos(turn) * cos + math.sin(turn) * sin)
        w["W_Q"][:, 1] = scale * NU * (-math.sin(turn) * cos + math.cos(turn) * sin)
        w["W_K"][:, 0], w["W_K"][:, 1] = cos, sin
    else:
        # score K * code(query word) . code(key word), plus 1.5 K at <bos>.
        w["W_Q"][:, :CODE_DIMS] = scale * KAPPA * _code_reader(spec.query)
        w["b_Q"][CODE_DIMS] = scale * 1.5 * KAPPA
        w["W_K"][:, :CODE_DIMS] = _code_reader(spec.key)
        w["W_K"][:, CODE_DIMS] = _pair_reader("bos", 0)
    w["W_V"][:, :CODE_DIMS] = _code_reader(spec.value)
    w["W_O"] = torch.zeros(D_HEAD, D_MODEL, dtype=torch.float64)
    w["W_O"][:CODE_DIMS] = _write(spec.writes, spec.junk_shift, spec.junk_sign)
    return w


def mlp_weights(spec: Mlp) -> dict[str, torch.Tensor]:
    """W_in `[d_model, d_mlp]`, b_in `[d_mlp]`, W_out `[d_mlp, d_model]`: unit w is a detector of word w."""
    n = len(WORDS)
    w_in = torch.zeros(D_MODEL, D_MLP, dtype=torch.float64)
    b_in = torch.zeros(D_MLP, dtype=torch.float64)
    w_out = torch.zeros(D_MLP, D_MODEL, dtype=torch.float64)
    table = codes()
    w_in[:, :n] = UNIT_GAIN * _code_reader(spec.reads) @ table.T
    b_in[:n] = -UNIT_GAIN * UNIT_THRESHOLD
    # A detected word gives activation UNIT_GAIN * (2 - UNIT_THRESHOLD) = 1.
    targets = table if spec.in_circuit else table[(torch.arange(n) + spec.junk_shift) % n]
    w_out[:n] = targets @ _write(spec.writes, 1 if spec.writes == "junk" else 0)
    return {"W_in": w_in, "b_in": b_in, "W_out": w_out}


def embeddings() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W_E `[d_vocab, d_model]`, W_pos `[n_positions, d_model]`, W_U `[d_vocab, d_model]`."""
    d_vocab = FIRST_WORD_ID + len(WORDS)
    w_e = torch.zeros(d_vocab, D_MODEL, dtype=torch.float64)
    w_u = torch.zeros(d_vocab, D_MODEL, dtype=torch.float64)
    table = codes()
    w_e[FIRST_WORD_ID:, _dims("token")] = table
    w_e[0, _dims("bos")] = torch.tensor([1.0, -1.0], dtype=torch.float64)
    w_u[FIRST_WORD_ID:, _dims("output")] = LOGIT_SCALE * table
    angle = THETA * torch.arange(N_POSITIONS, dtype=torch.float64)
    w_pos = torch.zeros(N_POSITIONS, D_MODEL, dtype=torch.float64)
    w_pos[:, _dims("position")] = torch.stack([angle.cos(), angle.sin(), -angle.cos(), -angle.sin()], dim=1)
    return w_e, w_pos, w_u


def tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer: `<bos> <pad> <unk>`, then `WORDS` in order."""
    return build_word_tokenizer(WORDS)


def construct() -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """The model with every weight set by the design (float32), and its tokenizer."""
    tok = tokenizer()
    config = gpt2_config(tok, n_layer=N_LAYER, n_head=N_HEAD, n_embd=D_MODEL, n_positions=N_POSITIONS,
                         tie_word_embeddings=False)
    config.n_inner = D_MLP
    config.activation_function = "relu"
    config.layer_norm_epsilon = LAYER_NORM_EPS
    model = GPT2LMHeadModel(config).eval()
    ln_scale = math.sqrt(LAYER_NORM_EPS)  # undoes LayerNorm's 1 / sqrt(eps)
    w_e, w_pos, w_u = embeddings()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        t = model.transformer
        t.wte.weight.copy_(w_e)
        t.wpe.weight.copy_(w_pos)
        model.lm_head.weight.copy_(w_u)
        for ln in [t.ln_f] + [m for block in t.h for m in (block.ln_1, block.ln_2)]:
            ln.weight.fill_(ln_scale)
        for spec in HEADS:
            w = head_weights(spec)
            attn = t.h[spec.layer].attn
            cols = slice(spec.head * D_HEAD, (spec.head + 1) * D_HEAD)
            for i, (weight, bias) in enumerate([("W_Q", "b_Q"), ("W_K", "b_K"), ("W_V", None)]):
                block = slice(i * D_MODEL + cols.start, i * D_MODEL + cols.stop)
                attn.c_attn.weight[:, block] = w[weight]
                if bias:
                    attn.c_attn.bias[block] = w[bias]
            attn.c_proj.weight[cols] = w["W_O"]
        for spec in MLPS:
            w = mlp_weights(spec)
            mlp = t.h[spec.layer].mlp
            mlp.c_fc.weight.copy_(w["W_in"])
            mlp.c_fc.bias.copy_(w["b_in"])
            mlp.c_proj.weight.copy_(w["W_out"])
    return model, tok


# ----------------------------------------------------------------------------- task

# ----------------------------------------------------------------------------- card

def measure(model: GPT2LMHeadModel, n: int = EVAL_PROMPTS, seed: int = EVAL_SEED) -> dict:
    """Accuracy and logit differences of the Hugging Face forward on fresh prompts of every
    length the card promises (n_words 2..14)."""
    results = {}
    for n_words in (2, 5, 8, 11, 14):
        prompts = task_prompts(n, n_words, seed + n_words)
        with torch.no_grad():
            clean = model(prompts.clean).logits[:, -1].double()
            corrupt = model(prompts.corrupt).logits[:, -1].double()
        rows = torch.arange(n)
        diff = lambda logits: logits[rows, prompts.answer] - logits[rows, prompts.wrong]  # noqa: E731
        results[str(n_words)] = {
            "accuracy": float((clean.argmax(-1) == prompts.answer).double().mean()),
            "corrupt_accuracy": float((corrupt.argmax(-1) == prompts.wrong).double().mean()),
            "logit_diff_mean": round(float(diff(clean).mean()), 4),
            "logit_diff_min": round(float(diff(clean).min()), 4),
            "corrupt_logit_diff_mean": round(float(diff(corrupt).mean()), 4),
        }
    return results


def reference_graph() -> dict:
    """The reference circuit in the MIB / EAP-IG graph format; an edge's score is the change
    of the normalised metric its corrupted patch causes by design (0 off the reference)."""
    ref_nodes = {n for e in REFERENCE_EFFECTS for n in (e.split("->")[0], e.split("->")[1].split("<")[0])}
    return {
        "cfg": {"n_layers": N_LAYER, "n_heads": N_HEAD, "parallel_attn_mlp": False, "d_model": D_MODEL},
        "nodes": {n: {"in_graph": n in ref_nodes} for n in graph_nodes()},
        "edges": {e: {"score": REFERENCE_EFFECTS.get(e, 0.0), "in_graph": e in REFERENCE_EFFECTS}
                  for e in graph_edges()},
    }


def model_card(measured: dict) -> tuple[dict, str]:
    """`card.json` (design and reference circuit as data) and `MODEL_CARD.md` (the same, in prose)."""
    graph = reference_graph()
    nodes = [n for n, v in graph["nodes"].items() if v["in_graph"]]
    card = {
        "name": NAME,
        "description": "3-layer x 4-head GPT-2 with hand-set weights: previous-token head -> induction head "
                       "-> clean-up MLP -> mover head; 9 distractor heads and 2 distractor MLPs",
        "architecture": {"n_layers": N_LAYER, "n_heads": N_HEAD, "d_model": D_MODEL, "d_head": D_HEAD,
                         "d_mlp": D_MLP, "d_vocab": FIRST_WORD_ID + len(WORDS), "n_positions": N_POSITIONS,
                         "activation": "relu", "layer_norm_epsilon": LAYER_NORM_EPS,
                         "tied_embeddings": False, "bos_prepended": True},
        "task": {
            "name": "constructed",
            "prompt": "<bos> x1 .. xn xk (distinct words, 1 <= k < n) -> x(k+1)",
            "corruption": "same layout (same k) with n other distinct words, none of the clean prompt's",
            "metric": "logit_diff: logit(clean answer) - logit(corrupted answer), at the last position",
            "builder": "circuits.tasks.constructed_task (prompts: recipes.constructed.task_prompts)",
            "n_words_range": [2, min(len(WORDS) // 2, N_POSITIONS - 2)],
        },
        "words": WORDS,
        "codes": {w: list(PAIRS[i]) for i, w in enumerate(WORDS)},
        "slots": {k: list(v) for k, v in SLOTS.items()},
        "circuit_slots": list(CIRCUIT_SLOTS),
        "heads": [{"name": h.name, **{k: v for k, v in asdict(h).items() if not k.startswith("junk")}}
                  for h in HEADS],
        "mlps": [{"name": m.name, **{k: v for k, v in asdict(m).items() if k != "junk_shift"}} for m in MLPS],
        "circuit_heads": [[h.layer, h.head] for h in HEADS if h.in_circuit],
        "distractor_heads": [[h.layer, h.head] for h in HEADS if not h.in_circuit],
        "reference": {"nodes": nodes, "edges": list(REFERENCE_EFFECTS),
                      "expected_effects": REFERENCE_EFFECTS,
                      "effect_units": "change of the normalised metric (clean = 1, corrupted = 0) when only that "
                                      "edge carries the corrupted activation; every other edge: 0",
                      "structural_edges": STRUCTURAL_EDGES},
        "graph": graph,
        "n_nodes": len(graph["nodes"]),
        "n_edges": len(graph["edges"]),
        "scales": {"kappa": KAPPA, "position_margin": POSITION_MARGIN, "theta": THETA, "nu": NU,
                   "unit_gain": UNIT_GAIN, "unit_threshold": UNIT_THRESHOLD, "logit_scale": LOGIT_SCALE},
        "measured": {"seed": EVAL_SEED, "prompts_per_length": EVAL_PROMPTS, "by_n_words": measured},
        "torch_version": torch.__version__,
    }
    return card, _markdown(card)


def _markdown(card: dict) -> str:
    slot_rows = "\n".join(f"| `{name}` | {a}..{b - 1} | {_SLOT_NOTES[name]} |" for name, (a, b) in SLOTS.items())

    def reads(h: Head) -> str:
        if h.offset is not None:
            return f"position (attends i-{h.offset})" if h.offset else "position (attends i)"
        return f"q `{h.query}`, k `{h.key}`"

    head_rows = "\n".join(f"| {h.name} | {h.role} | {reads(h)} | `{h.value}` | `{h.writes}` | "
                          f"{'yes' if h.in_circuit else 'no'} |" for h in HEADS)
    mlp_rows = "\n".join(f"| {m.name} | {m.role} | `{m.reads}` | `{m.writes}` | {'yes' if m.in_circuit else 'no'} |"
                         for m in MLPS)
    edge_rows = "\n".join(f"| `{e}` | {v:+.1f} |" for e, v in REFERENCE_EFFECTS.items())
    measured_rows = "\n".join(
        f"| {n} | {r['accuracy']:.3f} | {r['logit_diff_mean']:.2f} | {r['logit_diff_min']:.2f} | "
        f"{r['corrupt_logit_diff_mean']:.2f} |" for n, r in card["measured"]["by_n_words"].items())
    return f"""# {NAME}

A 3-layer, 4-head GPT-2 (d_model {D_MODEL}, d_head {D_HEAD}, ReLU MLPs of {D_MLP} units, {N_POSITIONS}
positions, untied embeddings, a vocabulary of {len(WORDS)} words plus `<bos> <pad> <unk>`) whose
weights are **set by hand** by `recipes/constructed.py`; nothing is trained. Its
circuit is known by construction, edge by edge, so circuit-discovery methods can be scored
against it: exact edge patching and ACDC must recover the reference perfectly (AUROC 1.0), and
approximations such as EAP and EAP-IG can be measured.

## Task

`<bos> x1 x2 .. xn xk` with n distinct words and 1 <= k < n; the answer is `x(k+1)`, the word
that followed the last word's earlier occurrence (`<bos> cat dog moon egg dog` -> `moon`). The
corrupted prompt has the same layout (same k) with n other distinct words, none of them in the
clean prompt; its answer is the `wrong` token. Metric: logit(answer) - logit(wrong) at the last
position. Build it with `circuits.tasks.constructed_task(model, n, n_words, seed)` (prompts from
`task_prompts` in the recipe). Any n_words from 2 to 14 works.

## How it works

The residual stream is cut into slots, disjoint blocks of dimensions; every component reads
some slots and writes exactly one. A word is coded in 8 dimensions as e_i - e_j for its own pair
i < j of the 8 (`codes` in card.json): a word's code has dot product 2 with itself and at most
1 with any other word's.

1. **a0.h0, previous-token head.** Query and key read only the position slot (a rotation:
   the query is the position turned back by one step, so the score peaks at i-1 with a margin
   of {POSITION_MARGIN:.0f}); its value reads the token slot. It writes the previous word into
   `prev_token`.
2. **a1.h0, induction head.** Query: the current word (`token`); keys: the previous word of
   each position (`prev_token`, written by a0.h0). At the last position `xk` matches exactly one
   key, at position k+1, and the head copies the word there, `x(k+1)`, into `induced`. Score:
   {KAPPA:.0f} x code.code, so an exact match scores {2 * KAPPA:.0f}, any other word at most {KAPPA:.0f}, and `<bos>` a
   fixed {1.5 * KAPPA:.0f}: a head that finds no exact match rests on `<bos>`, whose value is zero.
3. **m1, clean-up MLP.** One ReLU unit per word w: ReLU({UNIT_GAIN:g} (code(w).induced - {UNIT_THRESHOLD})). Exactly one
   unit fires (activation 1) when `induced` holds a single word; a blend of words or nothing
   fires none. The unit writes code(w) into `answer`.
4. **a2.h0, mover head.** Query: `answer`; keys: the words (`token`). It attends to the
   earlier occurrence of the answer word (position k+1) and copies that token into `output`.
5. **Unembedding** reads only `output`: logit(w) = {LOGIT_SCALE:g} code(w).output, so the answer's logit is
   {2 * LOGIT_SCALE:g} and every other word's at most {LOGIT_SCALE:g} (special tokens 0).

LayerNorm: epsilon {LAYER_NORM_EPS:g} dwarfs every variance (in float32 var + eps rounds to eps), so each
LayerNorm is (x - mean(x)) * w / sqrt(eps) with w = sqrt(eps) = {math.sqrt(LAYER_NORM_EPS):g}. Every reading direction
(W_Q, W_K, W_V, MLP input columns, unembedding rows) lies in one slot and sums to zero, so the
mean subtraction never reaches it and nothing written to one slot is seen by a reader of
another.

| slot | dims | content |
|---|---|---|
{slot_rows}

| head | role | q/k read | v reads | writes | circuit |
|---|---|---|---|---|---|
{head_rows}

| MLP | role | reads | writes | circuit |
|---|---|---|---|---|
{mlp_rows}

**Distractors** (nine heads, m0 and m2) are as busy as the circuit: at the answer position each
attends (one-hot) to a content token, none to `<bos>` (from 3 words on; with 2, the three-back
head reaches `<bos>`), and writes a word code of the same norm as the circuit heads' outputs.
Several read circuit slots (a1.h2 and a1.h3 read `prev_token`, a2.h1 and a2.h3 read `answer`,
a2.h2 reads `induced`; m2 reads `answer`), so their inputs change a lot under corruption.
a2.h2 attends exactly where the mover does and copies the same word; a1.h3 has the
previous-token head's pattern; a1.h1 is an induction head shifted by one. But they write
only into `two_back` and `junk`, which nothing in the circuit and not the unembedding reads
(`two_back` is read only by the distractor a1.h1).

## Reference circuit

Edges are named as in MIB / EAP-IG (`parent->child`, `<q>`/`<k>`/`<v>` for a head's inputs);
the model has {card['n_nodes']} nodes and {card['n_edges']} edges. The reference is the set of edges whose
corrupted patch (the receiver's input becomes in + a_corr - a_clean of that one sender, every
other input as in the clean run, LayerNorm recomputed) changes the metric. By design every
other edge changes it by exactly zero, and each reference edge by:

| edge | change of the normalised metric (clean 1, corrupted 0) |
|---|---|
{edge_rows}

Reference nodes: {', '.join(f'`{n}`' for n in card['reference']['nodes'])}. Seven edges leave the run with
no exact match somewhere (every logit 0, the metric half-way); the mover's value and its
output carry the corrupted answer itself. The mechanism also uses
{', '.join(f'`{e}`' for e in STRUCTURAL_EDGES)}
(positions and the `<bos>` marker), but the corruption never changes what they carry, so
their patch has zero effect and they are not in the reference; they would matter under mean
or zero ablation. The circuit alone (every other edge corrupted)
gives the clean metric (faithfulness 1); the complement gives the corrupted one.

The zero effects off the reference follow from which slots each component reads, not from
how sharp attention is; the sharpness (score margins >= 150) makes the reference effects the
round numbers above. It also saturates every softmax, so gradients at the clean run through
a head's query or key are zero to floating point: a gradient attribution such as EAP sees only
the two reference edges after the last softmax (`input->a2.h0<v>`, `a2.h0->logits`) and
scores the other seven like the non-reference edges, near zero. That is the weakness
EAP-IG's integration path is meant to reduce.

`card.json` holds all of this as data, including `graph`, the reference in the MIB/EAP-IG
graph format (`score` = the change above, 0 off the reference).

## Measured (Hugging Face forward, float32)

{card['measured']['prompts_per_length']} fresh prompts per length (seed {card['measured']['seed']} + n_words):

| n_words | accuracy | mean logit diff | min logit diff | mean logit diff, corrupted prompts |
|---|---|---|---|---|
{measured_rows}

The logit difference is {LOGIT_SCALE:g} x (2 - code(answer).code(wrong)): 5, 10 or 15.

## Use and rebuild

```python
from interp import load_model
from circuits.tasks import constructed_task
m = load_model("{NAME}")
task = constructed_task(m, n=32, n_words=8, seed=0)
```

Rebuild (deterministic, no training; about a second after imports): `python -m recipes.train constructed`.
"""


_SLOT_NOTES = {
    "token": "the word at this position, code(w) (embedding)",
    "position": "(cos, sin, -cos, -sin) of 2 pi p / 32 (position embedding)",
    "bos": "(1, -1) at `<bos>` (embedding)",
    "prev_token": "a0.h0: the word one position back",
    "induced": "a1.h0: the word after the current word's earlier occurrence",
    "answer": "m1: that word, cleaned up (zero unless exactly one word)",
    "output": "a2.h0: the answer; the only slot the unembedding reads",
    "two_back": "a0.h1 (distractor): the word two back; read only by a1.h1 (distractor)",
    "junk": "what the other distractors write; read by nothing",
}


def check_ground_truth(measured: dict) -> list[str]:
    """What is wrong with the measured behaviour, as readable lines (empty when all holds)."""
    problems = []
    for n_words, r in measured.items():
        if r["accuracy"] < 1.0 or r["corrupt_accuracy"] < 1.0:
            problems.append(f"n_words={n_words}: accuracy {r['accuracy']}, "
                            f"on corrupted prompts {r['corrupt_accuracy']}")
        if r["logit_diff_min"] < LOGIT_SCALE - 1e-3:
            problems.append(f"n_words={n_words}: smallest logit difference {r['logit_diff_min']} < {LOGIT_SCALE}")
    return problems


def build(out_folder: Path, threads: int | None = None) -> Path:
    """Construct the model, measure its task behaviour, and save the checkpoint with
    `card.json` and `MODEL_CARD.md`. Raises RuntimeError (saving nothing) if the behaviour is
    not what the design promises. `threads` only limits torch's CPU threads."""
    if threads is not None:
        torch.set_num_threads(threads)
    model, tok = construct()
    measured = measure(model)
    problems = check_ground_truth(measured)
    if problems:
        raise RuntimeError("the constructed model does not solve its task: " + "; ".join(problems))
    card, markdown = model_card(measured)
    return save_checkpoint(model, tok, Path(out_folder), card, markdown)
