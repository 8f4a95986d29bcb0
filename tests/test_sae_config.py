"""Configs and inference-time input checks refuse what they cannot handle, with clear errors."""

import pytest
import torch

from analyses.sae import architectures, make_sae, sae_class


def test_registry_uses_saelens_names():
    assert architectures() == ["batchtopk", "jumprelu", "standard", "topk"]
    for name in architectures():
        assert sae_class(name).config_class.architecture == name


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("k", [0, -1, 16, 17, 0.5])
def test_k_out_of_range(arch, k):
    with pytest.raises(ValueError, match=r"1 <= k < d_sae=16"):
        make_sae(arch, d_in=4, d_sae=16, k=k)


def test_topk_k_must_be_an_integer():
    with pytest.raises(ValueError, match="integer"):
        make_sae("topk", d_in=4, d_sae=16, k=2.5)
    assert make_sae("batchtopk", d_in=4, d_sae=16, k=2.5).cfg.k == 2.5  # an average: may be fractional


@pytest.mark.parametrize("arch,field", [("standard", "l1_coefficient"), ("jumprelu", "l0_coefficient"),
                                        ("topk", "aux_loss_coefficient"), ("batchtopk", "aux_loss_coefficient")])
def test_negative_sparsity_coefficient(arch, field):
    kwargs = {"k": 2} if "topk" in arch else {}
    with pytest.raises(ValueError, match=f"{field} must be a finite number >= 0, got -0.1"):
        make_sae(arch, d_in=4, d_sae=16, **kwargs, **{field: -0.1})


@pytest.mark.parametrize("bad", [dict(d_in=0), dict(d_sae=-3), dict(dtype="int8"), dict(jumprelu_bandwidth=0.0),
                                 dict(l0_warm_up_steps=-1)])
def test_other_bad_configs(bad):
    with pytest.raises(ValueError):
        make_sae("jumprelu", **{"d_in": 4, "d_sae": 16, **bad})


def test_encode_refuses_wrong_width_nan_and_integers():
    sae = make_sae("topk", d_in=8, d_sae=16, k=2)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., d_in=8\], got \[3, 7\]"):
        sae.encode(torch.randn(3, 7))
    with pytest.raises(ValueError, match="NaN or inf"):
        sae.encode(torch.full((2, 8), float("nan")))
    with pytest.raises(TypeError, match="floating point"):
        sae.encode(torch.ones(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"d_sae=16"):
        sae.decode(torch.randn(3, 8))


def test_encode_decode_shapes():
    sae = make_sae("jumprelu", d_in=8, d_sae=16)
    x = torch.randn(2, 5, 8)
    assert sae.encode(x).shape == (2, 5, 16) and sae(x).shape == (2, 5, 8)
