"""Bad input is refused with a clear error naming what was expected (issue 11): a sweep over
every option of every registered analysis, the model kinds and tasks each one takes, layer and
head indices against the model, and the cases a review found answered silently or with a deep
traceback."""

import dataclasses
import math

import pytest
import torch

from analyses.flow import attention_flow
from analyses.head_removal import load_pruned, remove_heads
from analyses.maps import maps_scores
from analyses.pruning import head_importance
from analyses.sentence_pairs import sentence_pair_task
from analyses.sinks import find_massive, sink_analysis, sink_rates
from app.registry import analyses
from circuits.tasks import induction_task, ioi_task
from interp import load_model
from interp.results.config import field_specs
from interp.results.registry import run_analysis
from tests.helpers import random_model

SWEEP = [(analysis, spec, bad) for analysis in analyses() for spec in field_specs(analysis.config)
         for bad in spec.out_of_domain()]


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm", device="cpu")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return random_model(tmp_path_factory.mktemp("gpt2"), "gpt2", n_layers=2, n_heads=2, d_model=16, seed=3)


def test_the_sweep_covers_every_option_of_every_analysis():
    covered = {(a.name, spec.name) for a, spec, _ in SWEEP}
    every = {(a.name, spec.name) for a in analyses() for spec in field_specs(a.config)}
    assert covered == every and len(SWEEP) > 150


@pytest.mark.parametrize("analysis,spec,bad", SWEEP,
                         ids=[f"{a.name}-{s.name}-{b!r}"[:80] for a, s, b in SWEEP])
def test_every_option_refuses_values_outside_its_domain(analysis, spec, bad):
    with pytest.raises((TypeError, ValueError)) as error:
        analysis.config(**{spec.name: bad})
    message = str(error.value)
    offending = [repr(bad)] + ([repr(item) for item in bad] if isinstance(bad, tuple) else [])
    assert message.startswith(f"{spec.name} ({spec.flag}) must be ") and any(f"got {r[:20]}" in message
                                                                             for r in offending), message


INDEXED = [(analysis, spec) for analysis in analyses() for spec in field_specs(analysis.config) if spec.index]


@pytest.mark.parametrize("analysis,spec", INDEXED, ids=[f"{a.name}-{s.name}" for a, s in INDEXED])
def test_layer_and_head_options_are_checked_against_the_model(gpt2, analysis, spec):
    if analysis.requires == "encoder":
        pytest.skip("no registered encoder-only analysis has index options")
    outside = {("head", "layer"): (2, 0), ("head", "head"): (0, 2), ("layer", "layer"): 2}
    for (base, kind), value in outside.items():
        if (spec.base == "head") != (base == "head") or (spec.base != "head" and spec.index != kind):
            continue
        config = analysis.config(**{spec.name: (value,) if spec.many else value})
        with pytest.raises(IndexError, match=rf"{spec.name} \({spec.flag}\) names .* outside this model: layers 0..1, "
                                             r"heads 0..1"):
            run_analysis(analysis, gpt2, config, task=None)


def test_causal_analyses_refuse_encoders_and_tasks_are_checked(minilm, gpt2):
    causal = [a for a in analyses() if a.requires == "causal"]
    assert {"patch", "circuit"} <= {a.name for a in causal}
    for analysis in causal:
        with pytest.raises(ValueError, match=f"{analysis.name} needs a causal language model with an LM head; minilm "
                                             "is an encoder"):
            run_analysis(analysis, minilm)
    by_name = {a.name: a for a in analyses()}
    with pytest.raises(ValueError, match="heads takes no task"):
        run_analysis("heads", gpt2, task=induction_task(gpt2, n=2, span=3))
    with pytest.raises(ValueError, match=r"patch needs a task \(e.g. ioi\)"):
        run_analysis(by_name["patch"], gpt2)
    with pytest.raises(ValueError, match="patch needs a task with clean/corrupted token pairs; task 'sentence-pairs'"):
        run_analysis(by_name["patch"], gpt2, task=dataclasses.replace(sentence_pair_task(minilm), name="sentence-pairs"))
    with pytest.raises(TypeError, match="heads takes a HeadsConfig, got SinksConfig"):
        run_analysis("heads", gpt2, by_name["sinks"].config())
    with pytest.raises(KeyError, match="no analysis 'prune' is registered"):
        run_analysis("prune", gpt2)


# ---------------------------------------------------------------- the review's cases, each named


def test_cases_once_answered_silently_are_refused(minilm, gpt2):
    tokens = minilm.to_tokens(["The cat sat on the mat.", "A dog ran."])
    cache = minilm.run_with_cache(tokens, sites=[f"pattern({l})" for l in range(6)])[1]
    patterns = torch.stack([cache[f"pattern({l})"] for l in range(6)])
    with pytest.raises(ValueError, match="is_causal=True but the patterns attend to later keys"):
        sink_rates(patterns, is_causal=True)
    with pytest.raises(ValueError, match=r"tokens must have shape \[batch, pos\] .* got \(1, 2, 5\)"):
        gpt2.tokenize(torch.ones(1, 2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match=r"head must be an int in \[0, 1\], got 1.7"):
        remove_heads(gpt2, [(0, 1.7)])
    sinks = sink_analysis(gpt2, ["w1 w2 w3 w4"])
    with pytest.raises(TypeError, match="position must be an int .* got 2.5"):
        sinks.rate_at(2.5)
    with pytest.raises(ValueError, match="hidden holds NaN or infinite values"):
        find_massive(torch.full((2, 1, 4, 8), math.nan))
    with pytest.raises(ValueError, match=r"layers \(--layers\) must be a list of one or more values"):
        maps_scores(minilm, ["general_copying"], layers=[], progress=False)
    with pytest.raises(ValueError, match=r"min_pairs \(--min-pairs\) must be an int >= 1, got 0"):
        maps_scores(minilm, ["general_copying"], min_pairs=0, progress=False)
    with pytest.raises(ValueError, match=r"scale must be an int in \[2\*\*20, 2\*\*30\]"):
        attention_flow(gpt2, ["w1 w2 w3"], scale=1, progress=False)
    with pytest.raises(ValueError, match="task 'ioi-test' is a next-token task for causal language models; minilm is "
                                         "an encoder"):
        ioi_task(minilm, n=2)


def test_cases_once_ending_in_deep_tracebacks_are_refused(minilm, gpt2, tmp_path):
    task = induction_task(gpt2, n=2, span=3)
    vector = dataclasses.replace(task, loss=lambda model, interventions: iter([torch.ones(3, requires_grad=True)]))
    with pytest.raises(ValueError, match=r"its loss must yield one scalar tensor per batch .* got \(3,\)"):
        head_importance(gpt2, vector)
    with pytest.raises(FileNotFoundError, match="is not a folder written by save_pruned"):
        load_pruned(tmp_path / "no-such-folder")
    with pytest.raises(ValueError, match=r"top-k is 1000000, but .* vocabulary has only \d+ tokens"):
        maps_scores(gpt2, {"copy": [(f"w{i}", f"w{i}") for i in range(40)]}, k=10**6, min_pairs=1, progress=False)
    on_minilm = dataclasses.replace(task, clean=task.clean % 100, corrupt=task.corrupt % 100,
                                    answer=task.answer % 100, wrong=task.wrong % 100)
    with pytest.raises(ValueError, match="is scored on next-token logits, but minilm has no LM head"):
        head_importance(minilm, on_minilm)
