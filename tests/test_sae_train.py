"""Training: seeds, resumable atomic checkpoints, several SAEs and sites, NaN handling, dead
latents counted in tokens, schedules, progress bar, CUDA."""

import itertools

import pytest
import torch

from analyses.sae import make_sae
from analyses.sae.saelens_io import load_sae
from analyses.sae.train import TrainConfig, checkpoints, coefficients_at, geometric_median, train_saes

D_IN, D_SAE = 12, 40
KWARGS = {"topk": dict(k=3), "batchtopk": dict(k=3), "standard": dict(l1_coefficient=0.5, l1_warm_up_steps=3),
          "jumprelu": dict(l0_coefficient=0.2, jumprelu_bandwidth=0.2)}


def stream(n, batch=16, seed=0, d_in=D_IN):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, d_in, generator=gen).relu() + 0.1 for _ in range(n)]


def params(sae):
    return {name: t.detach().clone() for name, t in itertools.chain(sae.named_parameters(), sae.named_buffers())}


def assert_same(a, b):
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name


def test_same_seed_same_weights_and_different_seed_different_weights():
    a, b, c = (make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3, seed=s) for s in (7, 7, 8))
    assert_same(a, b)
    assert not torch.equal(a.W_dec, c.W_dec)
    cfg = TrainConfig(total_training_steps=6, lr=1e-2, dead_feature_window=32)
    train_saes(a, stream(6), cfg, progress=False)
    torch.manual_seed(123)  # the global RNG plays no part
    train_saes(b, stream(6), cfg, progress=False)
    assert_same(a, b)
    assert not torch.equal(a.W_dec, make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3, seed=7).W_dec)


class Interrupt(Exception):
    pass


def interrupted(batches, at):
    for i, batch in enumerate(batches):
        if i == at:
            raise Interrupt
        yield batch


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "standard", "jumprelu"])
def test_interrupted_run_resumes_to_identical_weights(arch, tmp_path):
    cfg = TrainConfig(total_training_steps=12, lr=1e-2, lr_warm_up_steps=2, lr_decay_steps=3,
                      dead_feature_window=48, checkpoint_every_steps=4)
    data = stream(12)
    full = make_sae(arch, d_in=D_IN, d_sae=D_SAE, seed=1, **KWARGS[arch])
    expected = train_saes(full, data, cfg, checkpoint_dir=tmp_path / "full", progress=False)

    first = make_sae(arch, d_in=D_IN, d_sae=D_SAE, seed=1, **KWARGS[arch])
    with pytest.raises(Interrupt):
        train_saes(first, interrupted(data, 7), cfg, checkpoint_dir=tmp_path / "run", progress=False)
    assert [p.name for p in checkpoints(tmp_path / "run")] == ["step_000000004"]
    # a crash in the middle of writing the next checkpoint leaves only a temporary folder
    partial = tmp_path / "run" / ".step_000000008.tmp-crash"
    partial.mkdir()
    (partial / "trainer_state.pt").write_bytes(b"\x00" * 10)
    load_sae(tmp_path / "run" / "step_000000004" / "sae")  # the last checkpoint is readable

    again = make_sae(arch, d_in=D_IN, d_sae=D_SAE, seed=99, **KWARGS[arch])  # weights come from the checkpoint
    resumed = train_saes(again, data, cfg, checkpoint_dir=tmp_path / "run", progress=False)
    assert_same(again, full)
    assert resumed.steps == expected.steps == 12 and resumed.tokens == expected.tokens
    assert torch.equal(resumed.states["sae"].tokens_since_fired, expected.states["sae"].tokens_since_fired)
    assert resumed.history == expected.history[4:]
    assert [p.name for p in checkpoints(tmp_path / "run")] == ["step_000000008", "step_000000012"]  # keep_checkpoints=2


def test_resume_with_a_seekable_stream(tmp_path):
    cfg = TrainConfig(total_training_steps=6, lr=1e-2, checkpoint_every_steps=3, dead_feature_window=48)
    data = stream(6)
    full = make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3)
    train_saes(full, data, cfg, progress=False)
    part = make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3)
    with pytest.raises(Interrupt):
        train_saes(part, interrupted(data, 4), cfg, checkpoint_dir=tmp_path, progress=False)
    starts = []
    again = make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3)
    train_saes(again, lambda start: starts.append(start) or data[start:], cfg, checkpoint_dir=tmp_path, progress=False)
    assert starts == [3]
    assert_same(again, full)


def test_several_saes_on_several_sites_equal_separate_runs():
    gen = torch.Generator().manual_seed(0)
    batches = [{"resid": torch.randn(16, D_IN, generator=gen), "mlp": torch.randn(16, 2 * D_IN, generator=gen)}
               for _ in range(5)]
    cfg = TrainConfig(total_training_steps=5, lr=1e-2, dead_feature_window=32)
    saes = {"a": make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3, seed=1),
            "b": make_sae("standard", d_in=2 * D_IN, d_sae=D_SAE, seed=2),
            "c": make_sae("jumprelu", d_in=D_IN, d_sae=D_SAE, seed=3)}
    result = train_saes(saes, batches, cfg, sites={"a": "resid", "b": "mlp", "c": "resid"}, progress=False)
    assert result.steps == 5 and result.tokens == 80
    for name, site, arch, seed, d_in in (("a", "resid", "topk", 1, D_IN), ("b", "mlp", "standard", 2, 2 * D_IN),
                                         ("c", "resid", "jumprelu", 3, D_IN)):
        alone = make_sae(arch, d_in=d_in, d_sae=D_SAE, seed=seed, **({"k": 3} if arch == "topk" else {}))
        train_saes(alone, [b[site] for b in batches], cfg, progress=False)
        assert_same(saes[name], alone)


def test_nan_activations_stop_with_step_and_site_and_keep_last_checkpoint(tmp_path):
    data = stream(8)
    data[5] = data[5].clone()
    data[5][3, 2] = float("nan")
    sae = make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3)
    cfg = TrainConfig(total_training_steps=8, lr=1e-2, checkpoint_every_steps=2, dead_feature_window=48)
    with pytest.raises(FloatingPointError, match=r"step 5, site 'resid'.*NaN.*step_000000004"):
        train_saes({"resid": sae}, data, cfg, checkpoint_dir=tmp_path, progress=False)
    assert checkpoints(tmp_path)[-1].name == "step_000000004"
    saved = load_sae(checkpoints(tmp_path)[-1] / "resid")
    assert all(torch.isfinite(p).all() for p in saved.parameters())
    # the in-memory SAE is the one after step 4 too: the failing step changed nothing
    reference = make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3)
    train_saes(reference, data[:5], TrainConfig(total_training_steps=5, lr=1e-2, dead_feature_window=48), progress=False)
    assert_same(sae, reference)


def test_non_finite_loss_is_an_error_naming_step_and_site():
    data = stream(3)
    data[2] = data[2] * 1e25  # finite activations whose squared error overflows float32
    sae = make_sae("standard", d_in=D_IN, d_sae=D_SAE)
    with pytest.raises(FloatingPointError, match=r"step 2, site 'sae'.*loss is inf.*no checkpoint"):
        train_saes(sae, data, TrainConfig(total_training_steps=3), progress=False)


def test_dead_latents_are_counted_in_tokens():
    sae = make_sae("standard", d_in=D_IN, d_sae=D_SAE, l1_coefficient=0.0)
    with torch.no_grad():
        sae.b_enc[:10] = -1e4  # these latents can never fire
    cfg = TrainConfig(total_training_steps=4, lr=1e-6, dead_feature_window=100, b_dec_init="zeros")
    result = train_saes(sae, stream(4, batch=32), cfg, progress=False)
    since = result.states["sae"].tokens_since_fired
    assert since[:10].tolist() == [128] * 10
    dead = [row["dead_fraction"] for row in result.history]
    assert dead[:3] == [0.0, 0.0, 0.0]  # 32, 64, 96 tokens < 100
    assert dead[3] >= 10 / D_SAE  # 128 tokens >= 100


def test_schedules():
    cfg = TrainConfig(total_training_steps=8, lr_warm_up_steps=2, lr_decay_steps=4)
    assert [cfg.lr_factor(s) for s in range(8)] == [0.5, 1, 1, 1, 1, 0.75, 0.5, 0.25]
    sae = make_sae("standard", d_in=4, d_sae=8, l1_coefficient=2.0, l1_warm_up_steps=4)
    assert [coefficients_at(sae, s)["l1"] for s in (0, 1, 2, 4, 9)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert coefficients_at(make_sae("jumprelu", d_in=4, d_sae=8, l0_coefficient=3.0), 0) == {"l0": 3.0}


def test_the_learning_rate_reaches_adam():
    """Adam's first step moves every parameter by about lr (it normalises the gradient)."""
    sae = make_sae("standard", d_in=D_IN, d_sae=D_SAE)
    before = sae.b_enc.detach().clone()
    train_saes(sae, stream(1), TrainConfig(total_training_steps=1, lr=1e-3, lr_warm_up_steps=1, max_grad_norm=None),
               progress=False)
    moved = (sae.b_enc.detach() - before).abs()
    assert torch.allclose(moved[moved > 0], torch.full_like(moved[moved > 0], 1e-3), rtol=1e-2)


def test_geometric_median_initialises_b_dec():
    x = torch.randn(500, 3, dtype=torch.float64)
    x[:50] += 100.0  # outliers move the mean, barely the median
    median = geometric_median(x)
    # the geometric median minimises the sum of distances: no nearby point does better
    cost = lambda y: (x - y).norm(dim=1).sum()
    for delta in torch.eye(3, dtype=torch.float64) * 1e-3:
        assert cost(median) <= cost(median + delta) and cost(median) <= cost(median - delta)
    sae = make_sae("topk", d_in=3, d_sae=8, k=2)
    train_saes(sae, [x.float()], TrainConfig(total_training_steps=1, lr=1e-8), progress=False)
    assert torch.allclose(sae.b_dec.detach().double(), median, atol=1e-4)


def test_progress_bar_shows_l0_explained_variance_and_dead_fraction(capsys):
    sae = make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3)
    train_saes(sae, stream(10), TrainConfig(total_training_steps=10), progress=True)
    err = capsys.readouterr().err
    assert "L0 3.0" in err and "EV" in err and "dead" in err
    train_saes(sae, stream(10), TrainConfig(total_training_steps=10), progress=False)
    assert capsys.readouterr().err == ""


def test_bad_training_input():
    sae = make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3)
    cfg = TrainConfig(total_training_steps=2)
    with pytest.raises(ValueError, match=r"step 0, site 'sae'.*d_in=12.*\[16, 7\]"):
        train_saes(sae, [torch.randn(16, 7)], cfg, progress=False)
    with pytest.raises(KeyError, match="sites \\['mlp'\\].*'sae'"):
        train_saes(sae, [{"mlp": torch.randn(16, D_IN)}], cfg, progress=False)
    with pytest.raises(ValueError, match="stream ended after 1 steps"):
        train_saes(sae, stream(1), cfg, progress=False)
    for bad in (dict(total_training_steps=0), dict(total_training_steps=3, lr=-1.0),
                dict(total_training_steps=3, lr_warm_up_steps=2, lr_decay_steps=2),
                dict(total_training_steps=3, b_dec_init="median"), dict(total_training_steps=3, dead_feature_window=0)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_training_matches_cpu():
    cpu = make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3)
    gpu = make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3, device="cuda")
    cfg = TrainConfig(total_training_steps=5, lr=1e-2, dead_feature_window=32)
    train_saes(cpu, stream(5), cfg, progress=False)
    train_saes(gpu, stream(5), cfg, progress=False)  # CPU batches are moved to the SAE's device
    for (name, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters()):
        assert torch.allclose(a, b.cpu(), atol=1e-5), name
