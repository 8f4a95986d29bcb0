"""Exact patching sweeps against TransformerLens's own `transformer_lens.patching` functions,
run on the same bridge and inputs."""

import dataclasses

import pytest
import torch
from transformer_lens import patching as tlp

from interp.models import Patch, sites
from interp.patching import COMPONENTS, Task, patch
from tests.helpers import random_model, random_task

TL_SWEEPS = [
    ("resid_pre", True, tlp.get_act_patch_resid_pre),
    ("resid_mid", True, tlp.get_act_patch_resid_mid),
    ("attn_out", True, tlp.get_act_patch_attn_out),
    ("mlp_out", True, tlp.get_act_patch_mlp_out),
    ("z", True, tlp.get_act_patch_attn_head_out_by_pos),
    ("q", True, tlp.get_act_patch_attn_head_q_by_pos),
    ("k", True, tlp.get_act_patch_attn_head_k_by_pos),
    ("v", True, tlp.get_act_patch_attn_head_v_by_pos),
    ("pattern", True, tlp.get_act_patch_attn_head_pattern_by_pos),
    ("pattern", "dest_src", tlp.get_act_patch_attn_head_pattern_dest_src_pos),
    ("z", False, tlp.get_act_patch_attn_head_out_all_pos),
    ("q", False, tlp.get_act_patch_attn_head_q_all_pos),
    ("k", False, tlp.get_act_patch_attn_head_k_all_pos),
    ("v", False, tlp.get_act_patch_attn_head_v_all_pos),
    ("pattern", False, tlp.get_act_patch_attn_head_pattern_all_pos),
]


# Shapes and seeds differ between families; weights are large enough for sizeable effects.
FAMILY_SHAPES = {
    "gpt2": dict(n_layers=3, n_heads=4, d_model=32, seed=21),
    "gpt_neox": dict(n_layers=2, n_heads=4, d_model=32, d_mlp=48, seed=22),
    "llama": dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=23),
    "qwen2": dict(n_layers=2, n_heads=6, n_kv_heads=3, d_model=48, seed=24),
    "gemma2": dict(n_layers=2, n_heads=4, n_kv_heads=1, d_model=32, d_head=16, seed=25),
    "mistral": dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=26),
}


def bridge(model):
    """TransformerLens's bridge under the lens backend: the reference these tests hold to."""
    return model._backend.bridge


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return random_model(tmp_path_factory.mktemp("gpt2"), "gpt2", **FAMILY_SHAPES["gpt2"])


@pytest.fixture(scope="module", params=list(FAMILY_SHAPES))
def family_model(request, tmp_path_factory):
    return random_model(tmp_path_factory.mktemp(request.param), request.param, **FAMILY_SHAPES[request.param])


def tl_sweep(tl_fn, model, task, clean_cache, metric, axes, shape, sample=40, seed=0):
    """TransformerLens's sweep on at most `sample` random patches of the grid (its own
    `index_df` option): returns (their indices [k, n_axes], its values [k]). Each of its
    patches is an independent forward pass, so a sample tests the same thing as the grid."""
    import pandas as pd

    grid = torch.cartesian_prod(*[torch.arange(n) for n in shape]).reshape(-1, len(shape))
    if len(grid) > sample:
        grid = grid[torch.randperm(len(grid), generator=torch.Generator().manual_seed(seed))[:sample]]
    index_df = pd.DataFrame(grid.numpy(), columns=list(axes))
    with torch.no_grad():
        values = tl_fn(bridge(model), task.corrupt, clean_cache, metric, index_df=index_df, index_axis_names=None)
    return grid, values


def tl_metric(task):
    rows = torch.arange(task.batch)

    def metric(logits):
        final = logits[rows, task.answer_pos]
        return (final[rows, task.answer] - final[rows, task.wrong]).mean()
    return metric


def test_every_transformer_lens_sweep_equals_ours_on_every_family(family_model):
    model = family_model
    task = random_task(model, batch=2, n_pos=6)
    _, clean_cache = bridge(model).run_with_cache(task.clean)
    checked = 0
    for component, per_position, tl_fn in TL_SWEEPS:
        if component == "resid_mid" and model.cfg.parallel:
            continue  # parallel blocks have no resid_mid (tested below)
        ours = patch(model, task, component, per_position=per_position, normalize=False, progress=False)
        index, expected = tl_sweep(tl_fn, model, task, clean_cache, tl_metric(task), ours.axes, ours.values.shape)
        label = f"{model.cfg.family} {component} per_position={per_position}"
        scale = max(1.0, abs(ours.clean_metric), abs(ours.corrupt_metric))
        got = torch.stack([ours.values[tuple(i)] for i in index])
        assert torch.allclose(got, expected, atol=1e-5 * scale, rtol=0), label
        checked += 1
    spread = (ours.values.max() - ours.values.min()).item()
    assert spread > 0.05 * scale, "the patches have sizeable effects"
    # Chunked into batches of a few variants by a small budget: the same numbers.
    tiny = patch(model, task, "z", per_position=True, normalize=False, progress=False, memory_budget=200_000)
    full = patch(model, task, "z", per_position=True, normalize=False, progress=False)
    assert torch.equal(tiny.values, full.values) or torch.allclose(tiny.values, full.values, atol=1e-6 * scale)
    assert checked >= 14


def test_mlp_in_patches_only_what_the_mlp_reads_on_every_family(family_model):
    """Held against the model layer's Patch intervention at mlp_in (tested against a
    reference forward in test_interventions): the residual stream that skips the MLP keeps
    its base value, unlike resid_mid."""
    model = family_model
    task = random_task(model, seed=7, batch=2, n_pos=6)
    _, clean = model.run_with_cache(task.clean, sites=[sites.mlp_in(l) for l in range(model.cfg.n_layers)])
    rows = torch.arange(task.batch)
    expected = torch.zeros(model.cfg.n_layers, task.n_pos)
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            for pos in range(task.n_pos):
                logits, _ = model.run(task.corrupt, [Patch(sites.mlp_in(layer), positions=pos, source=clean)])
                final = logits[rows, task.answer_pos]
                expected[layer, pos] = (final[rows, task.answer] - final[rows, task.wrong]).mean()
    ours = patch(model, task, "mlp_in", per_position=True, normalize=False, progress=False)
    scale = max(1.0, abs(ours.clean_metric))
    assert torch.allclose(ours.values, expected, atol=1e-5 * scale)
    if model.cfg.parallel:
        with pytest.raises(ValueError, match="no residual stream between them"):
            patch(model, task, "resid_mid", progress=False)
    else:
        resid_mid = patch(model, task, "resid_mid", per_position=True, normalize=False, progress=False)
        assert not torch.allclose(ours.values, resid_mid.values, atol=1e-3), "mlp_in and resid_mid differ"


def test_engine_refuses_when_its_logits_differ_from_the_models(family_model, monkeypatch):
    from interp.patching.engine import EngineMismatch

    model = family_model
    task = random_task(model, seed=8)
    scale = model.arch.attn_scale
    monkeypatch.setattr(model.functional(), "arch", dataclasses.replace(model.arch, attn_scale=tuple(2 * s for s in scale)))
    with pytest.raises(EngineMismatch, match=rf"differ from the model's by up to .* on .* \({model.cfg.family}\)"):
        patch(model, task, "z", progress=False)


def test_noising_equals_transformer_lens_with_roles_swapped(model):
    task = random_task(model, seed=1)
    _, corrupt_cache = bridge(model).run_with_cache(task.corrupt)
    with torch.no_grad():
        expected = tlp.get_act_patch_attn_head_out_by_pos(bridge(model), task.clean, corrupt_cache, tl_metric(task))
    ours = patch(model, task, "z", per_position=True, direction="noise", normalize=False, progress=False)
    assert torch.allclose(ours.values, expected, atol=1e-5, rtol=0)


def test_patching_everything_gives_the_other_run(model):
    task = random_task(model, seed=2)
    result = patch(model, task, "resid_pre", per_position=False, normalize=False, progress=False)
    # The whole clean residual stream at layer 0, patched into the corrupted run, is the clean run.
    assert result.values[0].item() == pytest.approx(result.clean_metric, abs=1e-5)
    per_pos = patch(model, task, "resid_pre", per_position=True, normalize=False, progress=False)
    # Position 0 is the same token in both prompts, so patching it changes nothing.
    assert torch.allclose(per_pos.values[:, 0], torch.full((3,), result.corrupt_metric), atol=1e-5)
    normalized = patch(model, task, "resid_pre", per_position=True, progress=False)
    expected = (per_pos.values - result.corrupt_metric) / (result.clean_metric - result.corrupt_metric)
    assert torch.allclose(normalized.values, expected, atol=1e-4)
    assert (per_pos.values[:, 1] - result.corrupt_metric).abs().max() > 0.1, "sizeable effects"


def test_answer_positions_before_the_end(model):
    task = random_task(model, seed=3)
    task = Task(task.clean, task.corrupt, task.answer, task.wrong, answer_pos=torch.tensor([3, 5, 4]))
    rows = torch.arange(3)
    _, clean_cache = bridge(model).run_with_cache(task.clean)

    def metric(logits):
        final = logits[rows, task.answer_pos]
        return (final[rows, task.answer] - final[rows, task.wrong]).mean()

    with torch.no_grad():
        expected = tlp.get_act_patch_attn_head_out_by_pos(bridge(model), task.corrupt, clean_cache, metric)
    ours = patch(model, task, "z", per_position=True, normalize=False, progress=False)
    assert torch.allclose(ours.values, expected, atol=1e-5, rtol=0)


def test_a_custom_metric_gets_full_logits(model):
    task = random_task(model, seed=4)
    log_prob = lambda logits, t: torch.log_softmax(logits, -1)[..., torch.arange(t.batch), t.answer]  # noqa: E731
    task = Task(task.clean, task.corrupt, task.answer, task.wrong, metric=log_prob)
    _, clean_cache = bridge(model).run_with_cache(task.clean)
    rows = torch.arange(task.batch)
    with torch.no_grad():
        expected = tlp.get_act_patch_mlp_out(
            bridge(model), task.corrupt, clean_cache,
            lambda logits: torch.log_softmax(logits[:, -1], -1)[rows, task.answer].mean())
    ours = patch(model, task, "mlp_out", per_position=True, normalize=False, progress=False)
    assert torch.allclose(ours.values, expected, atol=1e-5, rtol=0)


def test_bf16_model_gives_fp32_results_close_to_fp32(tmp_path):
    from interp import load_model
    from tests.helpers import random_model_folder

    folder = random_model_folder(tmp_path / "m", "llama", n_layers=2, n_heads=2, n_kv_heads=1, d_model=16, seed=9)
    full, half = load_model(folder, device="cpu"), load_model(folder, device="cpu", dtype=torch.bfloat16)
    task = random_task(full, seed=5)
    a = patch(full, task, "z", per_position=False, normalize=False, progress=False)
    b = patch(half, task, "z", per_position=False, normalize=False, progress=False)
    assert b.values.dtype == torch.float32
    assert torch.allclose(a.values, b.values, atol=0.05 * float(a.values.abs().max()) + 1e-3)


def test_result_frame_figure_and_bundle(model, tmp_path):
    from interp.results import read_bundle

    task = random_task(model, seed=6)
    result = patch(model, task, "z", per_position=True, progress=False)
    frame = result.to_frame()
    assert list(frame.columns[:4]) == ["layer", "pos", "head", "value"]
    assert len(frame) == 3 * 6 * 4
    row = frame[(frame["layer"] == 2) & (frame["pos"] == 4) & (frame["head"] == 1)]
    assert row["value"].item() == pytest.approx(result.values[2, 4, 1].item())
    fig = result.figure()
    assert fig.data[0].z.shape == (12, 6)
    bundle = read_bundle(result.save(tmp_path))
    assert bundle.meta["parameters"]["component"] == "z"
    assert torch.equal(bundle.tensor("values"), result.values)


# ---------------------------------------------------------------- bad input


def test_unknown_component_lists_the_known_ones(model):
    with pytest.raises(ValueError, match="unknown component 'attn'; known components: resid_pre, resid_mid"):
        patch(model, random_task(model), "attn", progress=False)
    assert set(COMPONENTS) >= {"z", "q", "k", "v", "pattern", "resid_pre", "mlp_out"}


def test_unequal_clean_and_corrupt_shapes():
    with pytest.raises(ValueError, match=r"same shape \[batch, pos\]: clean \(2, 5\), corrupt \(2, 6\)"):
        Task(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 6, dtype=torch.long),
             torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_answers_must_be_one_token_per_prompt():
    with pytest.raises(ValueError, match=r"one single-token answer per prompt.*got \(2, 2\)"):
        Task(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long),
             torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_metric_must_return_one_number_per_prompt(model):
    task = random_task(model)
    bad = Task(task.clean, task.corrupt, task.answer, task.wrong, metric=lambda logits, t: logits.mean())
    with pytest.raises(ValueError, match="one number per prompt"):
        patch(model, bad, "z", progress=False)


def test_memory_budget_below_one_patched_forward_says_what_is_needed(model):
    with pytest.raises(ValueError, match=r"memory_budget of 100 bytes is smaller than one patched forward, "
                                         r"which needs about [\d,]+ bytes"):
        patch(model, random_task(model), "z", memory_budget=100, progress=False)


def test_other_bad_arguments(model):
    task = random_task(model)
    with pytest.raises(ValueError, match="direction must be 'denoise' or 'noise'"):
        patch(model, task, "z", direction="sideways", progress=False)
    with pytest.raises(ValueError, match="dest_src' applies to component='pattern' only"):
        patch(model, task, "z", per_position="dest_src", progress=False)
    with pytest.raises(IndexError, match="layer 7 is out of range"):
        patch(model, task, "z", layers=[7], progress=False)
    with pytest.raises(ValueError, match="unknown metric 'precision'"):
        Task(task.clean, task.corrupt, task.answer, task.wrong, metric="precision")


@pytest.fixture(scope="module")
def ioi_model():
    from interp import load_model

    return load_model("zoo/ioi-small", device="cpu")


@pytest.mark.parametrize("component,per_position,tl_fn", [
    ("z", True, tlp.get_act_patch_attn_head_out_by_pos),
    ("resid_pre", True, tlp.get_act_patch_resid_pre),
    ("v", False, tlp.get_act_patch_attn_head_v_all_pos),
], ids=["z-by-pos", "resid_pre", "v-all"])
def test_zoo_ioi_sweeps_equal_transformer_lens(ioi_model, component, per_position, tl_fn):
    from circuits.tasks import ioi_task

    task = ioi_task(ioi_model, n=6, split="test", seed=3, template="when-went")
    _, clean_cache = bridge(ioi_model).run_with_cache(task.clean)
    ours = patch(ioi_model, task, component, per_position=per_position, normalize=False, progress=False)
    index, expected = tl_sweep(tl_fn, ioi_model, task, clean_cache, tl_metric(task), ours.axes, ours.values.shape,
                               sample=60)
    assert torch.allclose(torch.stack([ours.values[tuple(i)] for i in index]), expected, atol=1e-4, rtol=1e-5)
    assert ours.clean_metric > 5 and ours.corrupt_metric < 2, "the model solves IOI; ABC corruption removes it"


def test_zoo_induction_sweep_equals_transformer_lens():
    from circuits.tasks import induction_task
    from interp import load_model
    from interp.zoo import get_embedded

    model = load_model("zoo/induction-2l", device="cpu")
    task = induction_task(model, n=8, span=8, seed=5)
    _, clean_cache = bridge(model).run_with_cache(task.clean)
    with torch.no_grad():
        expected = tlp.get_act_patch_attn_head_out_by_pos(bridge(model), task.corrupt, clean_cache, tl_metric(task))
    ours = patch(model, task, "z", per_position=True, normalize=False, progress=False)
    assert torch.allclose(ours.values, expected, atol=1e-4, rtol=1e-5)
    # The induction task runs through the card's circuit: the head whose clean output (all
    # positions) restores the most is one of the card's induction heads.
    normalized = patch(model, task, "z", per_position=False, progress=False)
    best_layer, best_head = divmod(int(normalized.values.argmax()), model.cfg.n_heads)
    assert [best_layer, best_head] in get_embedded("zoo/induction-2l").card()["induction_heads"]


def test_bad_tasks_and_options_are_refused_with_the_reason(model, family_model):
    task = random_task(model)
    too_big = Task(task.clean, task.corrupt, task.answer.clone().fill_(model.cfg.d_vocab), task.wrong)
    with pytest.raises(ValueError, match=rf"Task.answer holds token ids outside this model's vocabulary \[0, {model.cfg.d_vocab - 1}\]"):
        patch(model, too_big, "z", progress=False)
    negative = Task(task.clean, task.corrupt, task.answer, torch.full_like(task.wrong, -1))
    with pytest.raises(ValueError, match=r"Task.wrong holds token ids outside .*\[-1, -1, -1\]"):
        patch(model, negative, "z", progress=False)
    with pytest.raises(ValueError, match="layers must name at least one layer"):
        patch(model, task, "z", layers=[], progress=False)
    with pytest.raises(ValueError, match=r"layers must be distinct, got \[1, 0, 1\]"):
        patch(model, task, "z", layers=[1, 0, 1], progress=False)
    with pytest.raises(ValueError, match="per_position must be True, False or 'dest_src', got 1"):
        patch(model, task, "z", per_position=1, progress=False)
    nan_metric = Task(task.clean, task.corrupt, task.answer, task.wrong,
                      metric=lambda logits, t: logits[..., 0] * float("nan"))  # e.g. a log of a negative number
    from interp.patching.edges import edge_patch
    for run in (lambda: patch(model, nan_metric, "z", normalize=False, progress=False),
                lambda: edge_patch(model, nan_metric, progress=False)):
        with pytest.raises(ValueError, match=r"the task metric returned non-finite values \(NaN or inf\)"):
            run()
    from circuits.tasks import from_prompt_pairs
    with pytest.raises(ValueError, match="answer 'zebra' is not in .* vocabulary: it tokenizes to the unknown token"):
        from_prompt_pairs(model, ["w1 w2"], ["w3 w2"], ["zebra"], ["w4"])
    same = Task(task.clean, task.clean.clone(), task.answer, task.wrong)
    with pytest.raises(ValueError, match="cannot normalise: the clean and corrupted runs give the same metric"):
        patch(model, same, "z", progress=False)
    assert torch.isfinite(patch(model, same, "z", normalize=False, progress=False).values).all()
    m = family_model
    if m.cfg.n_kv_heads < m.cfg.n_heads:
        with pytest.raises(IndexError, match=rf"head {m.cfg.n_heads} is out of range"):
            from interp.patching import path_patch
            path_patch(m, random_task(m), [(1, m.cfg.n_heads)], receiver_input="k", progress=False)
