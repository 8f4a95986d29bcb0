"""Each architecture recovers known features (Sharkey et al., 2022): activations are sparse
non-negative combinations of 32 random unit directions in 16 dimensions, and the trained
decoder must contain each direction (mean max cosine similarity, MMCS, >= 0.9)."""

import pytest
import torch

from analyses.sae import make_sae
from analyses.sae.synthetic import SyntheticData, mmcs
from analyses.sae.train import TrainConfig, train_saes

CONFIGS = {
    "topk": dict(k=2),
    "batchtopk": dict(k=2),
    "standard": dict(l1_coefficient=0.3),
    "jumprelu": dict(l0_coefficient=0.03, jumprelu_init_threshold=0.05, jumprelu_bandwidth=0.1),
}


@pytest.fixture(autouse=True)
def _one_thread():
    # hundreds of tiny steps: thread hand-offs would cost more than they save
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_sae_recovers_ground_truth_features(arch):
    data = SyntheticData(16, 32, p_active=0.06, seed=0)
    sae = make_sae(arch, d_in=16, d_sae=96, seed=0, **CONFIGS[arch])
    untrained = mmcs(data.directions, sae.W_dec)
    result = train_saes(sae, data.batches(256), TrainConfig(total_training_steps=400, lr=1e-2, dead_feature_window=5120),
                        progress=False)
    score = mmcs(data.directions, sae.W_dec)
    print(f"{arch}: MMCS {untrained:.3f} -> {score:.3f}, L0 {result.history[-1]['l0']:.2f}")
    assert untrained < 0.8
    assert score >= 0.9


def test_mmcs_by_hand():
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    W_dec = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, -3.0]])
    # direction 1: max(1, 1/sqrt2, 0) = 1; direction 2: max(0, 1/sqrt2, -1) = 1/sqrt2
    assert mmcs(directions, W_dec) == pytest.approx((1 + 2 ** -0.5) / 2)


def test_synthetic_data_is_what_it_says():
    data = SyntheticData(8, 20, p_active=0.1, seed=1)
    assert torch.allclose(data.directions.norm(dim=1), torch.ones(20))
    x = data.sample(4000)
    coeffs = torch.linalg.lstsq(data.directions.T, x.T).solution  # not unique; only shapes and sparsity here
    assert x.shape == (4000, 8) and coeffs.shape == (20, 4000)
    with pytest.raises(ValueError, match="n_features > d_in"):
        SyntheticData(8, 8)
