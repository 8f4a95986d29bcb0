"""The engine's memory handling in sweeps: head-major keys and values, projections, sublayer
outputs and the residual stream in reused buffers, which must not change a number; and the
two kernels behind `Functional.linear` (oneDNN on a CPU in fp32 without gradients, else
`F.linear`, whose outputs can go into buffers)."""

import pytest
import torch

from interp.models import functional
from interp.patching.engine import Engine
from tests.helpers import FAMILIES, random_gpt2, random_model


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return Engine(random_gpt2(tmp_path_factory.mktemp("gpt2")))


def test_with_prefix_equals_the_cached_prefix_before_the_new_rows_and_is_head_major(engine):
    gen = torch.Generator().manual_seed(3)
    cached = torch.randn(2, 3, 4, 5, generator=gen)  # [B, p0, H_kv, d_head]
    new = torch.randn(6, 2, 7, 4, 5, generator=gen)  # [N, B, P, H_kv, d_head]
    expected = torch.cat([cached.expand(6, -1, -1, -1, -1), new], dim=2)
    outside = engine.with_prefix("keys", cached, new)
    with engine.sweeping():
        inside = engine.with_prefix("keys", cached, new)
        assert torch.equal(inside, expected)
        assert inside.transpose(-3, -2).is_contiguous(), "head-major underneath: attend's products copy nothing"
        buffer = inside.data_ptr()
        again = engine.with_prefix("keys", cached[:, :1], new[:, :, :2])  # smaller: the same buffer
        assert again.data_ptr() == buffer
        assert torch.equal(again, torch.cat([cached[:, :1].expand(6, -1, -1, -1, -1), new[:, :, :2]], dim=2))
    assert torch.equal(outside, expected)


def test_scratch_buffers_are_fresh_under_gradients_and_released_after_the_sweep(engine):
    f = engine.f
    assert f.scratch("keys", (2, 3)).shape == (2, 3)
    with torch.no_grad(), f.reusing_buffers():
        a = f.scratch("values", (4, 5))
        assert f.scratch("values", (2, 2)).data_ptr() == a.data_ptr()
        assert f.scratch("keys", (4, 5)).data_ptr() != a.data_ptr(), "each name has its own buffer"
        with torch.enable_grad():
            assert f.scratch("values", (4, 5)).data_ptr() != a.data_ptr()
    assert f._scratch.buffers is None


@pytest.fixture(scope="module", params=FAMILIES)
def family_engine(request, tmp_path_factory):
    return Engine(random_model(tmp_path_factory.mktemp(request.param), request.param, n_layers=4))


@pytest.fixture(params=["onednn", "F.linear"])
def kernel(request, monkeypatch):
    """Each test that takes it runs with both kernels of `Functional.linear`."""
    if request.param == "onednn" and not functional._ONEDNN:
        pytest.skip("this torch has no oneDNN linear")
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", request.param == "onednn")
    # the small test models' products are below the sizes oneDNN serves: serve them all
    monkeypatch.setattr(functional, "_ONEDNN_MIN_MACS", 0)
    monkeypatch.setattr(functional, "_ONEDNN_MIN_WIDTH", 0)
    return request.param


def _suffix_inputs(engine, n=3, batch=2, n_pos=6, p0=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cfg = engine.cfg
    tokens = torch.randint(0, cfg.d_vocab, (batch, n_pos), generator=gen)
    with torch.no_grad():
        base = engine.run(tokens)
    x = base.resid_post[0][:, p0:] + 3 * torch.randn(n, batch, n_pos - p0, cfg.d_model, generator=gen)
    return base, x, torch.full((batch,), n_pos - 1)


def test_block_output_into_a_buffer_equals_fresh_outputs_and_updates_in_place(family_engine, kernel):
    engine, f = family_engine, family_engine.f
    base, x, _ = _suffix_inputs(family_engine)
    attn = 2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    pre = x[0]  # [B, P, d]: broadcast against the variants' attention outputs, as edge patching does
    with torch.no_grad():
        expected = [engine.block_output(1, x, attn), engine.block_output(1, pre, attn)]
        with engine.sweeping():
            first = engine.block_output(1, x, attn, into="resid")
            assert torch.equal(first, expected[0]), "the same additions in the same order: bitwise equal"
            buffer = first.data_ptr()
            again = engine.block_output(1, first, attn, into="resid")  # the buffer as its own input
            assert again.data_ptr() == buffer
            assert torch.equal(again, engine.block_output(1, expected[0], attn))
            assert torch.equal(engine.block_output(1, pre, attn, into="resid"), expected[1])
            if kernel == "F.linear":  # oneDNN writes its products into fresh tensors
                assert f._scratch.buffers["mlp_out"].numel() >= x.numel()


def test_suffix_runs_equal_inside_and_outside_a_sweep(family_engine, kernel):
    engine = family_engine
    base, x, answer = _suffix_inputs(family_engine, seed=2)
    with torch.no_grad():
        # (one variant alone is compared with itself alone: a matrix product may round differently
        # for a different number of rows)
        expected, one = engine.suffix(base, 0, "post", x, 2, answer), engine.suffix(base, 0, "post", x[:1], 2, answer)
        with engine.sweeping():
            got = engine.suffix(base, 0, "post", x.clone(), 2, answer)
            buffered = {"resid"} | ({"attn_out", "mlp_out", "q", "k", "v"} if kernel == "F.linear" else set())
            assert buffered <= set(engine.f._scratch.buffers)
            again = engine.suffix(base, 0, "post", x[:1].clone(), 2, answer)  # a smaller run reuses them
    assert torch.equal(got, expected)
    assert torch.equal(again, one)


def test_linear_into_a_buffer_equals_f_linear_and_needs_a_sweep(engine, monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # F.linear's path
    f = engine.f
    w = f.weights.layers[0]
    x = torch.randn(2, 5, engine.cfg.d_model, generator=torch.Generator().manual_seed(4))
    expected = torch.nn.functional.linear(x, w.w_q, w.b_q)
    assert torch.equal(f.linear(x, w.w_q, w.b_q, "q"), expected)  # outside a sweep: a fresh tensor
    with engine.sweeping():
        got = f.linear(x, w.w_q, w.b_q, "q")
        assert torch.equal(got, expected)
        assert got.data_ptr() == f._scratch.buffers["q"].data_ptr()
        strided = x.transpose(0, 1)  # not contiguous: F.linear itself, no buffer
        assert torch.equal(f.linear(strided, w.w_q, w.b_q, "k"), torch.nn.functional.linear(strided, w.w_q, w.b_q))
        assert "k" not in f._scratch.buffers


@pytest.mark.skipif(not functional._ONEDNN, reason="this torch has no oneDNN linear")
def test_onednn_linear_is_f_linear_up_to_rounding_and_independent_of_rows_and_layout(engine):
    f = engine.f
    gen = torch.Generator().manual_seed(5)
    d = 768
    x = 3 * torch.randn(8, 2, 16, d, generator=gen)
    fused = torch.randn(d, 3 * d, generator=gen) / d ** 0.5  # GPT-2's Conv1D [in, out]: slices are strided
    weights = {"contiguous": fused.T[:d].contiguous(), "transposed": fused[:, :d].contiguous().T,
               "strided": fused.T[:d]}
    bias = torch.randn(d, generator=gen)
    exact = torch.nn.functional.linear(x.double(), weights["contiguous"].double(), bias.double())
    rows = x[2:6, :, 3:]  # 104 rows: still a product oneDNN serves
    with torch.no_grad():
        assert functional._onednn_serves(x, weights["strided"]) and functional._onednn_serves(rows, weights["contiguous"])
        assert not functional._onednn_serves(x[:1, :1, :4], weights["contiguous"]), "small products stay on F.linear"
        outs = {name: f.linear(x, w, bias) for name, w in weights.items()}
        assert torch.allclose(outs["contiguous"].double(), exact, rtol=1e-5, atol=1e-4)
        assert torch.equal(outs["transposed"], outs["contiguous"]) and torch.equal(outs["strided"], outs["contiguous"])
        assert torch.equal(f.linear(rows, weights["contiguous"], bias), outs["contiguous"][2:6, :, 3:]), \
            "a row's result must not depend on the rows computed with it"
        with f.reusing_buffers():
            copy = f._dense(weights["strided"])
            assert copy.is_contiguous() and f._dense(weights["strided"]) is copy, "copied once per sweep"
            assert f._dense(weights["transposed"]) is weights["transposed"], "read in place"
        assert f._scratch.dense is None
    assert not functional._onednn_serves(x, weights["contiguous"]), "under gradients: F.linear"
    x.requires_grad_(True)
    f.linear(x, weights["contiguous"], bias).sum().backward()
    assert torch.allclose(x.grad, weights["contiguous"].sum(0).expand_as(x), atol=1e-5)
