"""The engine's memory handling in sweeps: head-major keys and values in reused buffers, which
must not change a number."""

import pytest
import torch

from interp.patching.engine import Engine
from tests.helpers import random_gpt2


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
