"""`CircuitState`, which reruns only what a change of one receiver's edges reaches, against
whole masked runs of the model (`CircuitRunner.final`, itself checked against one run per
edge and hand-written splices in test_edges.py), and ACDC against a plain ACDC loop written
here."""

import dataclasses

import pytest
import torch

from interp.patching.circuit_state import CircuitState
from interp.patching.edges import CircuitRunner
from tests.helpers import random_model, random_task

SHAPES = {"gpt2": dict(n_layers=3, n_heads=3, d_model=24, seed=51),
          "llama": dict(n_layers=3, n_heads=4, n_kv_heads=2, d_model=32, seed=52),
          "gpt_neox": dict(n_layers=3, n_heads=2, d_model=32, seed=53)}


@pytest.fixture(scope="module", params=list(SHAPES))
def model(request, tmp_path_factory):
    return random_model(tmp_path_factory.mktemp(request.param), request.param, **SHAPES[request.param])


def task_for(model, seed):
    # answers read at different positions, corrupted prompts differing from position 2
    task = random_task(model, seed=seed, batch=3, n_pos=7, corrupted=slice(2, 4))
    return dataclasses.replace(task, answer_pos=torch.tensor([6, 4, 5]))


@pytest.mark.parametrize("ablation", ["patching", "mean"])
def test_variants_equal_whole_masked_runs_of_a_random_circuit(model, ablation):
    runner = CircuitRunner(model, task_for(model, 61), ablation=ablation)
    state, layout = CircuitState(runner), runner.layout
    gen = torch.Generator().manual_seed(62)
    target = layout.exists & (torch.rand(layout.exists.shape, generator=gen) < 0.4)
    scale = float(runner.final(layout.exists[None]).abs().max())
    checked = 0
    # walk the receivers from the logits back, as ACDC does, moving the state to `target` one
    # receiver at a time; every variant is compared with the whole masked run of its mask
    for r in range(len(layout.receivers) - 1, -1, -1):
        senders = layout.exists[:, r].nonzero()[:, 0]
        columns = state.mask[:, r].unsqueeze(0).repeat(3, 1)
        columns[0] = target[:, r]
        columns[1, senders[torch.randperm(len(senders), generator=gen)[: len(senders) // 2]]] = False
        columns[2] = False
        variants = state.try_receiver(r, columns)
        masks = state.mask.unsqueeze(0).repeat(3, 1, 1)
        masks[:, :, r] = columns
        expected = runner.final(masks)
        assert torch.allclose(variants.final, expected, atol=2e-5 * scale), (layout.receivers[r],
                                                                           float((variants.final - expected).abs().max()))
        checked += 1
        state.accept(variants, 0)
        assert torch.equal(state.mask[:, r], target[:, r])
    assert checked == len(layout.receivers)
    assert torch.equal(state.mask, target)
    final = model.functional().final(state.final_in)
    assert torch.allclose(final, runner.final(target[None])[0], atol=2e-5 * scale)


def plain_acdc(runner, threshold):
    """Conmy et al.'s loop with no shortcut: every edge tried with a whole masked run,
    receivers from the logits back, senders last first."""
    layout = runner.layout
    current = layout.exists.clone()
    loss_now = float(runner.kl(current[None]).mean())
    for r in range(len(layout.receivers) - 1, -1, -1):
        for s in range(len(layout.senders) - 1, -1, -1):
            if not current[s, r]:
                continue
            current[s, r] = False
            loss = float(runner.kl(current[None]).mean())
            if loss - loss_now < threshold:
                loss_now = loss
            else:
                current[s, r] = True
    return current


def test_acdc_keeps_the_circuit_of_the_plain_loop(model):
    from circuits.discovery import acdc

    task = task_for(model, 63)
    runner = CircuitRunner(model, task)
    expected = plain_acdc(runner, 0.02)
    _, got, scores = acdc(model, task, 0.02, progress=False, runner=runner)
    assert torch.equal(got, expected)
    assert 0 < int(got.sum()) < runner.layout.n_edges, "a non-trivial circuit"
    untried = runner.layout.exists & (scores == 0)
    assert untried.any(), "some receivers were skipped as disconnected"


def test_a_sender_kept_at_the_answer_only_cannot_be_read_everywhere_again(model):
    runner = CircuitRunner(model, task_for(model, 64))
    state, layout = CircuitState(runner), runner.layout
    m0, k_input = layout.senders.index("m0"), layout.receivers.index("a2.h0<k>")
    target = layout.exists.clone()
    target[m0] = False
    target[m0, -1] = True  # m0 feeds the logits alone: read at the answer positions only
    target[:, layout.receivers.index("m0")] = False  # m0 then changes
    for r in range(len(layout.receivers) - 1, -1, -1):
        if not torch.equal(state.mask[:, r], target[:, r]):
            state.accept(state.try_receiver(r, target[:, r][None]), 0)
    columns = state.mask[:, k_input].clone()
    columns[m0] = True
    with pytest.raises(ValueError, match="answer positions only"):
        state.try_receiver(k_input, columns[None])


def test_bad_variants_are_refused(model):
    runner = CircuitRunner(model, task_for(model, 65))
    state, layout = CircuitState(runner), runner.layout
    r = layout.receivers.index("a1.h0<q>")
    good = state.mask[:, r][None]
    with pytest.raises(ValueError, match="receiver index"):
        state.try_receiver(len(layout.receivers), good)
    with pytest.raises(ValueError, match="bool tensor"):
        state.try_receiver(r, good.float())
    with pytest.raises(ValueError, match="bool tensor"):
        state.try_receiver(r, good[:, :-1])
    downstream = good.clone()
    downstream[0, layout.senders.index("m1")] = True
    with pytest.raises(ValueError, match="not upstream"):
        state.try_receiver(r, downstream)
