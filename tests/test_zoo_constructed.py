"""`zoo/constructed`, the model whose circuit is known by construction. Every fact its card
states is checked here against a computation written in this file: a plain float64 forward
from the checkpoint's tensors that feeds each receiver (a head's q, k and v separately, an MLP,
the logits) its own sum of sender outputs, a slow one-edge-at-a-time exact edge patching on
it, and Hugging Face's own logits and attention weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel

from circuits.tasks import TASKS, constructed_task
from interp import load_model
from recipes import constructed
from interp.zoo.registry import get_embedded
from tests.helpers import random_gpt2

SEEDS = (11, 12, 13)  # none is the card's measurement seed
N_WORDS = (3, 8, 14)  # one prompt length per seed
BATCH = 16


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Hundreds of tiny forwards: one thread is ~7x faster than two on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def card() -> dict:
    card = get_embedded("zoo/constructed").card()
    assert card["measured"]["seed"] not in SEEDS
    return card


@pytest.fixture(scope="module")
def hf() -> GPT2LMHeadModel:
    return GPT2LMHeadModel.from_pretrained(get_embedded("zoo/constructed").folder, attn_implementation="eager").eval()


class EdgeForward:
    """A float64 GPT-2 forward over the graph of nodes (input, each head, each MLP) in which
    each receiver (`a{l}.h{h}<q|k|v>`, `m{l}`, `logits`) reads the sum of its senders' outputs,
    and any chosen edge can carry the sender's output from another run instead."""

    def __init__(self, model: GPT2LMHeadModel, dtype: torch.dtype = torch.float64):
        sd = {k: v.to(dtype) for k, v in model.state_dict().items()}
        c = model.config
        self.n_layers, self.n_heads, self.d_model = c.n_layer, c.n_head, c.n_embd
        self.d_head, self.eps = c.n_embd // c.n_head, c.layer_norm_epsilon
        assert c.activation_function == "relu" and c.scale_attn_weights and not c.scale_attn_by_inverse_layer_idx
        self.sd = sd
        self.w_u = sd["lm_head.weight"]
        self.edges: list[str] = []  # filled by the first run, in the order the forward meets them

    def ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (self.d_model,), self.sd[f"{name}.weight"], self.sd[f"{name}.bias"], self.eps)

    def run(self, tokens: torch.Tensor, patched: frozenset[str] = frozenset(), source: dict | None = None):
        """Logits at the last position `[batch, d_vocab]`, every node's output `[batch, pos, d_model]`,
        and every head's pattern `[batch, q, k]`. An edge in `patched` feeds its receiver the
        sender's output from `source` (another run's node outputs) instead of this run's."""
        sd, d, dh = self.sd, self.d_model, self.d_head
        n_pos = tokens.shape[1]
        out = {"input": sd["transformer.wte.weight"][tokens] + sd["transformer.wpe.weight"][:n_pos]}
        resid = out["input"].clone()  # every sender so far, plus b_O and b_out (which belong to no node)
        record = not self.edges
        senders = ["input"]

        def receive(receiver: str) -> torch.Tensor:
            total = resid
            for s in senders:
                edge = f"{s}->{receiver}"
                if record:
                    self.edges.append(edge)
                if edge in patched:
                    total = total + (source[s] - out[s])
            return total

        patterns = {}
        causal = torch.ones(n_pos, n_pos, dtype=torch.bool).tril()
        for layer in range(self.n_layers):
            p = f"transformer.h.{layer}"
            w_qkv, b_qkv = sd[f"{p}.attn.c_attn.weight"], sd[f"{p}.attn.c_attn.bias"]
            w_o = sd[f"{p}.attn.c_proj.weight"]
            heads = {}
            for h in range(self.n_heads):
                name = f"a{layer}.h{h}"
                cols = [slice(i * d + h * dh, i * d + (h + 1) * dh) for i in range(3)]  # this head's q, k, v
                q, k, v = (self.ln(receive(f"{name}<{x}>"), f"{p}.ln_1") @ w_qkv[:, c] + b_qkv[c]
                           for x, c in zip("qkv", cols))
                scores = (q @ k.transpose(1, 2) / math.sqrt(dh)).masked_fill(~causal, -math.inf)
                patterns[name] = scores.softmax(-1)
                heads[name] = patterns[name] @ v @ w_o[h * dh:(h + 1) * dh]
            out.update(heads)
            senders += list(heads)
            resid = resid + sum(heads.values()) + sd[f"{p}.attn.c_proj.bias"]
            name = f"m{layer}"
            pre = self.ln(receive(name), f"{p}.ln_2") @ sd[f"{p}.mlp.c_fc.weight"] + sd[f"{p}.mlp.c_fc.bias"]
            hidden = torch.relu(pre)
            out[name] = hidden @ sd[f"{p}.mlp.c_proj.weight"]
            senders.append(name)
            resid = resid + out[name] + sd[f"{p}.mlp.c_proj.bias"]
        logits = self.ln(receive("logits"), "transformer.ln_f")[:, -1] @ self.w_u.T
        return logits, out, patterns


@pytest.fixture(scope="module")
def plain(hf) -> EdgeForward:
    return EdgeForward(hf)


@pytest.fixture(scope="module")
def runs(plain):
    """Per seed: the prompts, the clean and corrupted runs and their metrics `[batch]`."""
    result = []
    for seed, n_words in zip(SEEDS, N_WORDS):
        prompts = constructed.task_prompts(BATCH, n_words, seed)
        clean_logits, clean, patterns = plain.run(prompts.clean)
        corrupt_logits, corrupt, _ = plain.run(prompts.corrupt)
        result.append({"prompts": prompts, "clean": clean, "corrupt": corrupt, "patterns": patterns,
                       "clean_logits": clean_logits,
                       "m_clean": _metric(clean_logits, prompts), "m_corrupt": _metric(corrupt_logits, prompts)})
    return result


def _metric(logits: torch.Tensor, prompts) -> torch.Tensor:
    rows = torch.arange(logits.shape[0])
    return logits[rows, prompts.answer] - logits[rows, prompts.wrong]


@pytest.fixture(scope="module")
def edge_effects(plain, runs) -> dict[str, list[torch.Tensor]]:
    """Every edge's effect, patched alone: per seed, the metric with the edge carrying the
    corrupted sender output minus the clean metric, `[batch]` per prompt."""
    effects = {}
    for edge in plain.edges:
        effects[edge] = [_metric(plain.run(r["prompts"].clean, frozenset([edge]), r["corrupt"])[0], r["prompts"])
                         - r["m_clean"] for r in runs]
    return effects


# ------------------------------------------------------------------ the forward itself

def test_plain_forward_equals_hugging_face(hf, runs):
    for r in runs:
        with torch.no_grad():
            expected = hf(r["prompts"].clean).logits[:, -1].double()
        torch.testing.assert_close(r["clean_logits"], expected, atol=1e-4, rtol=0)


def test_graph_has_the_card_edges(plain, runs, card):
    """The forward meets exactly the card's edges: input, 12 heads, 3 MLPs, logits; 262 edges."""
    assert len(plain.edges) == len(set(plain.edges)) == card["n_edges"] == 262
    assert set(plain.edges) == set(card["graph"]["edges"])
    nodes = {"input", "logits"} | {e.split("->")[0] for e in plain.edges}
    assert nodes == set(card["graph"]["nodes"]) and len(nodes) == card["n_nodes"] == 17


# ------------------------------------------------------------------ behaviour

def test_task_is_solved_on_fresh_prompts(runs):
    for r in runs:
        prompts = r["prompts"]
        logits = r["clean_logits"]
        assert torch.equal(logits.argmax(-1), prompts.answer)
        # The design's logit difference: 5 x (2 - code(answer) . code(wrong)), so 5, 10 or 15.
        table = constructed.codes()
        dots = (table[prompts.answer - 3] * table[prompts.wrong - 3]).sum(-1)
        torch.testing.assert_close(r["m_clean"], 5 * (2 - dots), atol=1e-6, rtol=0)
        assert r["m_clean"].min() >= 5 - 1e-6
        # The corrupted prompts are solved too: their own answer (the wrong token) wins.
        torch.testing.assert_close(r["m_corrupt"], -r["m_clean"], atol=1e-6, rtol=0)


def test_task_through_the_model_layer():
    model = load_model("zoo/constructed", device="cpu")
    assert model.to_str_tokens("cat dog egg dog") == ["<bos>", "cat", "dog", "egg", "dog"]
    for seed in SEEDS:
        task = TASKS["constructed"](model, n=BATCH, n_words=6, seed=seed)
        assert task.clean.shape == task.corrupt.shape == (BATCH, 8)
        assert torch.equal(model.to_tokens(task.clean_prompts), task.clean)
        with torch.no_grad():
            logits = model(task.clean)[:, -1]
        rows = torch.arange(BATCH)
        assert torch.equal(logits.argmax(-1), task.answer)
        assert (logits[rows, task.answer] - logits[rows, task.wrong]).min() >= 5 - 1e-4


def test_attention_in_hugging_face_is_the_design(hf, card):
    """Every head attends, at the answer position, exactly where its role says (HF's weights)."""
    prompts = constructed.task_prompts(64, 8, seed=21)
    with torch.no_grad():
        attn = hf(prompts.clean, output_attentions=True).attentions
    last = prompts.clean.shape[1] - 1
    k = prompts.repeat_pos
    rows = torch.arange(64)
    roles = {h["name"]: h for h in card["heads"]}
    expected = {  # target position at the last query, from each role's description
        "a0.h0": last - 1, "a0.h1": last - 2, "a0.h2": last, "a0.h3": last - 3,
        "a1.h0": k + 1, "a1.h1": torch.clamp(k + 2, max=last), "a1.h2": last - 1, "a1.h3": last - 1,
        "a2.h0": k + 1, "a2.h1": k + 2, "a2.h2": k + 1, "a2.h3": last,
    }
    for name, target in expected.items():
        layer, head = int(name[1]), int(name.split(".h")[1])
        target = torch.as_tensor(target).expand(64)
        weight = attn[layer][rows, head, last, target]
        assert weight.min() > 1 - 1e-6, (name, roles[name]["role"])
    # The positional heads do the same at every position (from i - offset, clipped at 0).
    pos = torch.arange(prompts.clean.shape[1])
    for h in card["heads"]:
        if h["offset"] is not None:
            pattern = attn[h["layer"]][:, h["head"]]
            assert pattern[:, pos, torch.clamp(pos - h["offset"], min=0)].min() > 1 - 1e-6


# ------------------------------------------------------------------ the reference circuit

def _normalised(effect: torch.Tensor, r) -> torch.Tensor:
    return effect / (r["m_clean"] - r["m_corrupt"])


def test_each_reference_edge_has_its_designed_effect(edge_effects, runs, card):
    ref = card["reference"]["expected_effects"]
    assert len(ref) == 9 and set(ref) <= set(edge_effects)
    for edge, expected in ref.items():
        for r, effect in zip(runs, edge_effects[edge]):
            # prompt by prompt, not only on average
            torch.testing.assert_close(_normalised(effect, r), torch.full_like(effect, expected), atol=1e-9, rtol=0)


def test_every_other_edge_has_zero_effect(edge_effects, runs, card):
    ref = set(card["reference"]["edges"])
    worst = max(float((effect.abs() / r["m_clean"]).max())
                for edge, effects in edge_effects.items() if edge not in ref for r, effect in zip(runs, effects))
    assert worst < 1e-6
    smallest_ref = min(float((effect.abs() / r["m_clean"]).min())
                       for edge in ref for r, effect in zip(runs, edge_effects[edge]))
    assert smallest_ref >= 1 - 1e-9  # at least the full logit difference, on every prompt
    # Exact patching therefore ranks the reference perfectly: every reference edge above every other.
    mean_abs = {e: sum(float(x.abs().mean()) for x in v) for e, v in edge_effects.items()}
    assert min(mean_abs[e] for e in ref) > 1e5 * max(v for e, v in mean_abs.items() if e not in ref)


def test_a_leak_into_a_read_slot_would_show(hf, runs):
    """The zero check has teeth: a copy of the model whose distractor a2.h2 also writes 1% of
    its word into `output` (read by the unembedding) gives its edges clearly non-zero effects."""
    leaky = GPT2LMHeadModel.from_pretrained(get_embedded("zoo/constructed").folder, attn_implementation="eager").eval()
    dh, (start, _) = leaky.config.n_embd // leaky.config.n_head, constructed.SLOTS["output"]
    with torch.no_grad():
        w_o = leaky.transformer.h[2].attn.c_proj.weight
        w_o[2 * dh:2 * dh + 8, start:start + 8] += 0.01 * torch.eye(8)
    forward, r = EdgeForward(leaky), runs[1]
    _, corrupt, _ = forward.run(r["prompts"].corrupt)
    for edge in ("a2.h2->logits", "input->a2.h2<v>", "a1.h0->a2.h2<q>"):
        before = _metric(forward.run(r["prompts"].clean)[0], r["prompts"])
        after = _metric(forward.run(r["prompts"].clean, frozenset([edge]), corrupt)[0], r["prompts"])
        assert float((after - before).abs().mean() / before.abs().mean()) > 1e-3, edge


def test_float32_effects_off_the_reference_are_zero_too(hf, card):
    """In the checkpoint's own float32 every non-reference edge has zero effect (var + eps
    rounds to eps, so LayerNorm is exactly affine), as exact methods in float32 will see it."""
    forward, ref = EdgeForward(hf, torch.float32), set(card["reference"]["edges"])
    prompts = constructed.task_prompts(BATCH, 8, seed=SEEDS[0])
    clean_logits, _, _ = forward.run(prompts.clean)
    _, corrupt, _ = forward.run(prompts.corrupt)
    m_clean = _metric(clean_logits, prompts)
    for edge in forward.edges:
        effect = _metric(forward.run(prompts.clean, frozenset([edge]), corrupt)[0], prompts) - m_clean
        if edge in ref:
            assert float((effect.abs() / m_clean).min()) >= 1 - 1e-5, edge
        else:
            assert float((effect.abs() / m_clean).max()) < 1e-6, edge


def test_structural_edges_carry_only_what_the_corruption_keeps(edge_effects, runs, card):
    """The positional and <bos> edges the mechanism uses have zero effect: the input's change
    under corruption lies in the token slot, which those receivers do not read."""
    for edge in card["reference"]["structural_edges"]:
        assert edge not in card["reference"]["edges"]
        assert all(float(e.abs().max()) < 1e-9 for e in edge_effects[edge])
    token = slice(*card["slots"]["token"])
    for r in runs:
        change = r["corrupt"]["input"] - r["clean"]["input"]
        assert change[..., token].abs().max() > 0.5
        change[..., token] = 0
        assert change.abs().max() == 0


def _faithfulness(plain, r, patched: frozenset[str]) -> torch.Tensor:
    m = _metric(plain.run(r["prompts"].clean, patched, r["corrupt"])[0], r["prompts"])
    return (m - r["m_corrupt"]) / (r["m_clean"] - r["m_corrupt"])


def test_circuit_alone_is_faithful_and_its_complement_removes_the_behaviour(plain, runs, card):
    ref = frozenset(card["reference"]["edges"])
    everything = frozenset(plain.edges)
    for r in runs:
        # Ablating every edge is the corrupted run, ablating none the clean one.
        torch.testing.assert_close(_faithfulness(plain, r, everything), torch.zeros(BATCH, dtype=torch.float64),
                                   atol=1e-9, rtol=0)
        assert _faithfulness(plain, r, everything - ref).min() >= 0.99
        assert _faithfulness(plain, r, ref).abs().max() <= 0.01


# ------------------------------------------------------------------ distractors

def test_distractors_are_active(runs, card):
    """At the answer position the distractor heads write as much as the circuit heads, attend
    as sharply, and to content tokens, not <bos>; the distractor MLPs write as much as m1.
    Several read circuit slots, so their outputs change under corruption."""
    circuit = [f"a{l}.h{h}" for l, h in card["circuit_heads"]]
    distractors = [f"a{l}.h{h}" for l, h in card["distractor_heads"]]
    assert len(distractors) == 9 and len(circuit) == 3
    for r in runs[1:]:  # prompts of 8 and 14 words (with 3, the three-back head reaches <bos>)
        norm = {n: r["clean"][n][:, -1].norm(dim=-1) for n in circuit + distractors + ["m0", "m1", "m2"]}
        pattern = {n: r["patterns"][n][:, -1] for n in circuit + distractors}
        entropy = {n: -(p * p.clamp_min(1e-300).log()).sum(-1) for n, p in pattern.items()}
        smallest_circuit_norm = min(float(norm[n].min()) for n in circuit)
        assert smallest_circuit_norm > 1
        for n in distractors:
            assert float(norm[n].min()) >= 0.5 * smallest_circuit_norm, n
            assert float(pattern[n][:, 0].max()) < 1e-6, n  # not resting on <bos>
            assert float(entropy[n].max()) <= max(float(entropy[c].max()) for c in circuit) + 1e-6, n
        assert min(float(norm[m].min()) for m in ("m0", "m2")) >= 0.5 * float(norm["m1"].min())
        # Distractors that read circuit slots see their inputs change and change their outputs.
        for n in ("a1.h2", "a1.h3", "a2.h1", "a2.h2", "a2.h3", "m2"):
            change = (r["corrupt"][n][:, -1] - r["clean"][n][:, -1]).norm(dim=-1)
            assert float(change.min()) > 0.5, n


def test_weights_read_and_write_only_their_slots(hf, card):
    """The design table in the card is what the weights do: each head's q/k/v read only its
    slots (plus the <bos> marker for content keys) with directions summing to zero, and it
    writes only its slot; nothing in the circuit nor the unembedding reads `two_back` or `junk`."""
    d, dh = hf.config.n_embd, hf.config.n_embd // hf.config.n_head
    slots = {k: set(range(*v)) for k, v in card["slots"].items()}
    for h in card["heads"]:
        attn = hf.transformer.h[h["layer"]].attn
        w = attn.c_attn.weight.detach()
        reads = {"q": {h["query"]}, "k": {h["key"]} | ({"bos"} if h["offset"] is None else set()), "v": {h["value"]}}
        for i, x in enumerate("qkv"):
            block = w[:, i * d + h["head"] * dh: i * d + (h["head"] + 1) * dh]
            used = set(block.abs().sum(1).nonzero().flatten().tolist())
            allowed = set().union(*(slots[s] for s in reads[x]))
            assert used and used <= allowed, (h["name"], x)
            assert block.sum(0).abs().max() < 1e-3 * block.abs().max(), (h["name"], x)
            if h["in_circuit"]:
                assert not used & (slots["two_back"] | slots["junk"])
        w_o = attn.c_proj.weight.detach()[h["head"] * dh:(h["head"] + 1) * dh]
        assert set(w_o.abs().sum(0).nonzero().flatten().tolist()) <= slots[h["writes"]], h["name"]
    for m in card["mlps"]:
        mlp = hf.transformer.h[m["layer"]].mlp
        assert set(mlp.c_fc.weight.detach().abs().sum(1).nonzero().flatten().tolist()) <= slots[m["reads"]]
        assert set(mlp.c_proj.weight.detach().abs().sum(0).nonzero().flatten().tolist()) <= slots[m["writes"]]
    unembed = hf.lm_head.weight.detach()
    assert set(unembed.abs().sum(0).nonzero().flatten().tolist()) == slots["output"]


# ------------------------------------------------------------------ recipe and task builder

def test_recipe_rebuilds_the_shipped_weights(tmp_path, card):
    folder = constructed.build(tmp_path / "constructed")
    shipped = load_file(get_embedded("zoo/constructed").folder / "model.safetensors")
    rebuilt = load_file(folder / "model.safetensors")
    assert shipped.keys() == rebuilt.keys()
    assert all(torch.equal(shipped[k], rebuilt[k]) for k in shipped)
    import json
    fresh = json.loads((folder / "card.json").read_text())
    assert fresh["reference"] == card["reference"] and fresh["graph"] == card["graph"]
    assert fresh["measured"] == card["measured"]


def test_task_prompts_layout():
    p = constructed.task_prompts(50, 6, seed=5)
    assert p.clean.shape == p.corrupt.shape == (50, 8) and (p.clean[:, 0] == 0).all()
    rows = torch.arange(50)
    for tokens, answer in ((p.clean, p.answer), (p.corrupt, p.wrong)):
        words = tokens[:, 1:-1]
        assert all(len(set(r)) == 6 for r in words.tolist())
        assert torch.equal(tokens[:, -1], tokens[rows, p.repeat_pos])
        assert torch.equal(answer, tokens[rows, p.repeat_pos + 1])
    assert all(not set(a) & set(b) for a, b in zip(p.clean[:, 1:].tolist(), p.corrupt[:, 1:].tolist()))
    assert ((p.repeat_pos >= 1) & (p.repeat_pos <= 5)).all() and len(set(p.repeat_pos.tolist())) == 5
    assert torch.equal(constructed.task_prompts(50, 6, seed=5).clean, p.clean)


def test_task_prompts_bad_input():
    with pytest.raises(ValueError, match="n >= 1"):
        constructed.task_prompts(0)
    with pytest.raises(ValueError, match=r"2 <= n_words <= 14 .*got n_words=15"):
        constructed.task_prompts(4, 15)
    with pytest.raises(ValueError, match="got n_words=1"):
        constructed.task_prompts(4, 1)
    with pytest.raises(TypeError, match="n_words must be an integer, got 2.5"):
        constructed.task_prompts(4, 2.5)
    with pytest.raises(TypeError, match="n must be an integer, got True"):
        constructed.task_prompts(True)


def test_task_builder_refuses_another_vocabulary(tmp_path):
    other = random_gpt2(tmp_path, n_layer=1, n_head=2, n_embd=16)
    with pytest.raises(ValueError, match=r"needs zoo/constructed's vocabulary .* 28 of the words elsewhere or missing"):
        constructed_task(other, n=2)
