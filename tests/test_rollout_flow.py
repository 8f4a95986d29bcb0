"""Attention rollout and flow against independent references: a hand-computed 3-token
example, a networkx Edmonds–Karp max-flow on the same capacities, and padding invariance on
a real encoder."""

import networkx as nx
import numpy as np
import pytest
import torch
from networkx.algorithms.flow import edmonds_karp

from analyses.flow import FlowGraph, attention_flow
from analyses.rollout import attention_patterns, attention_rollout, residual_attention
from interp import load_model
from interp.models import Add, sites
from interp.results import read_bundle

# Two layers, two heads, three tokens. Block 0 heads average to [[1,0,0],[.5,0,.5],[.5,.5,0]];
# block 1's heads both shift attention one token to the right (cyclically).
HAND_PATTERNS = torch.tensor([
    [[[1, 0, 0], [1, 0, 0], [1, 0, 0]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]]],
    [[[0, 1, 0], [0, 0, 1], [1, 0, 0]], [[0, 1, 0], [0, 0, 1], [1, 0, 0]]],
], dtype=torch.float64)[:, None]  # [layer, batch, head, q, k]
HAND_A1 = [[1, 0, 0], [.25, .5, .25], [.25, .25, .5]]
HAND_A2 = [[.5, .5, 0], [0, .5, .5], [.5, 0, .5]]
# R^2 = Â^2 Â^1, worked out by hand.
HAND_ROLLOUT_2 = [[.625, .25, .125], [.25, .375, .375], [.625, .125, .25]]
# Max-flows from (2, u) to (0, v), by hand (e.g. u=0, v=0: min(.5, 1) + min(.5, .25) = .75),
# then normalised per row: [.75, .5, .25] / 1.5, [.5, .75, .75] / 2, [.75, .25, .5] / 1.5.
HAND_FLOW_2 = [[1 / 2, 1 / 3, 1 / 6], [.25, .375, .375], [1 / 2, 1 / 6, 1 / 3]]


def test_rollout_hand_example():
    result = attention_rollout(HAND_PATTERNS)
    expected = torch.tensor([HAND_A1, HAND_ROLLOUT_2], dtype=torch.float64)
    torch.testing.assert_close(result.maps[:, 0], expected, rtol=0, atol=1e-12)


def test_flow_hand_example_and_layer_one_equals_rollout():
    result = attention_flow(HAND_PATTERNS, progress=False)
    expected = torch.tensor([HAND_A1, HAND_FLOW_2], dtype=torch.float64)
    torch.testing.assert_close(result.maps[:, 0], expected, rtol=0, atol=1e-8)


def test_padding_removed_before_renormalising():
    # One head, three real tokens and a padded key holding attention mass: the mask must
    # drop it and renormalise rows of (Ā + I) explicitly, not take 0.5 Ā + 0.5 I.
    pattern = torch.tensor([[1, 0, 0, 0], [.2, .3, 0, .5], [0, 0, .6, .4], [.25, .25, .25, .25]],
                           dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    a_hat = residual_attention(pattern[None, None, None], mask)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0], [.2 / 1.5, 1.3 / 1.5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]],
                            dtype=torch.float64)
    torch.testing.assert_close(a_hat, expected, rtol=0, atol=1e-12)


def random_patterns(n_layers, batch, heads, n, seed, causal=False):
    gen = torch.Generator().manual_seed(seed)
    scores = 2 * torch.randn(n_layers, batch, heads, n, n, generator=gen, dtype=torch.float64)
    if causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1)


def reference_a_hat(patterns: np.ndarray) -> np.ndarray:
    """Â of one prompt `[layer, head, q, k]`, written out independently in numpy."""
    mean = patterns.mean(axis=1)
    augmented = mean + np.eye(mean.shape[-1])
    return augmented / augmented.sum(axis=-1, keepdims=True)


def networkx_flows(a_hat: np.ndarray, block: int, output: int) -> np.ndarray:
    """The paper's way: a networkx graph with float capacities, Edmonds–Karp per input."""
    n = a_hat.shape[-1]
    graph = nx.DiGraph()
    for layer in range(1, block + 2):
        for i in range(n):
            for j in range(n):
                if a_hat[layer - 1, i, j] > 0:
                    graph.add_edge((layer, i), (layer - 1, j), capacity=float(a_hat[layer - 1, i, j]))
    return np.array([nx.maximum_flow_value(graph, (block + 1, output), (0, v), flow_func=edmonds_karp)
                     for v in range(n)])


@pytest.mark.parametrize("causal", [False, True])
def test_flow_matches_networkx_12_layers_16_tokens(causal):
    patterns = random_patterns(12, 1, 4, 16, seed=1, causal=causal)
    output = 15 if causal else 3
    result = attention_flow(patterns, layers=[5, 11], queries=[output], progress=False)
    a_hat = reference_a_hat(patterns[:, 0].numpy())
    for slot, block in enumerate([5, 11]):
        flows = networkx_flows(a_hat, block, output)
        np.testing.assert_allclose(result.maps[slot, 0, output].numpy(), flows / flows.sum(), rtol=1e-6, atol=1e-12)
        # The unnormalised values too, straight from the graph.
        raw = FlowGraph(a_hat).flows_from(block, output)
        np.testing.assert_allclose(raw, flows, rtol=1e-6, atol=1e-12)
    assert torch.isnan(result.maps[:, 0, output - 1]).all()  # rows not asked for stay NaN


def test_rollout_matches_matrix_products_and_flow_layer_one():
    patterns = random_patterns(5, 3, 2, 7, seed=2)
    rollout = attention_rollout(patterns)
    flow = attention_flow(patterns, layers=[0], progress=False)
    for b in range(3):
        a_hat = reference_a_hat(patterns[:, b].numpy())
        expected = a_hat[0]
        for layer in range(1, 5):
            expected = a_hat[layer] @ expected
        np.testing.assert_allclose(rollout.maps[-1, b].numpy(), expected, rtol=1e-10)
        np.testing.assert_allclose(flow.maps[0, b].numpy(), rollout.maps[0, b].numpy(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(rollout.maps.sum(-1), torch.ones(5, 3, 7, dtype=torch.float64))


def test_padding_gives_the_same_maps_as_the_prompt_alone():
    alone = random_patterns(3, 1, 2, 5, seed=3)
    padded = random_patterns(3, 1, 2, 8, seed=4)
    padded[..., :5, 5:] = 0
    padded[..., :5, :5] = alone  # real queries put no mass on the three padded keys
    mask = torch.tensor([[True] * 5 + [False] * 3])
    for analysis in (attention_rollout, lambda *a, **k: attention_flow(*a, progress=False, **k)):
        ref, got = analysis(alone).maps, analysis(padded, mask=mask).maps
        torch.testing.assert_close(got[..., :5, :5], ref, rtol=1e-6, atol=1e-9)
        assert (got[..., 5:, :] == 0).all() and (got[..., :, 5:] == 0).all()


@pytest.fixture(scope="module")
def minilm():
    torch.set_num_threads(1)
    return load_model("minilm", device="cpu")


def test_model_prompts_padded_batch_equals_each_alone(minilm, tmp_path):
    texts = ["Cats sleep.", "The old fisherman walked slowly down to the harbour at dawn."]
    batch = attention_patterns(minilm, texts)
    assert batch.mask.sum(1).tolist() == [len(t) for t in batch.str_tokens]
    rollout = attention_rollout(batch)
    for b, text in enumerate(texts):
        alone = attention_rollout(minilm, [text])
        n = int(batch.mask[b].sum())
        torch.testing.assert_close(rollout.maps[:, b, :n, :n], alone.maps[:, 0], rtol=1e-4, atol=1e-5)
    flow = attention_flow(minilm, texts[:1], layers=[5], queries=[0], progress=False)
    assert flow.maps[0, 0, 0].sum().item() == pytest.approx(1.0)

    frame = rollout.to_frame()
    assert len(frame) == 6 * sum(n * n for n in batch.mask.sum(1).tolist())
    assert frame.query_token.iloc[0] == "[CLS]"
    fig = rollout.figure(prompt=1)  # after the last layer by default
    last = frame[(frame["prompt"] == 1) & (frame["layer"] == 5)].pivot(index="query", columns="key", values="value")
    assert len(fig.data) == 1
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), last.to_numpy(), rtol=1e-6)
    assert fig.data[0].x[0].endswith("[CLS]")
    bundle = read_bundle(rollout.save(tmp_path))
    assert bundle.meta["analysis"] == "rollout"


def test_bad_input_is_rejected(minilm):
    good = random_patterns(2, 1, 2, 4, seed=5)
    with pytest.raises(ValueError, match="row-stochastic"):
        attention_rollout(good * 0.8)
    with pytest.raises(ValueError, match="row-stochastic"):
        FlowGraph(np.full((2, 3, 3), 0.5))
    with pytest.raises(ValueError, match="shape"):
        attention_rollout(good[0])
    with pytest.raises(ValueError, match="q == k"):
        attention_flow(good[..., :3], progress=False)
    with pytest.raises(ValueError, match="mask must have shape"):
        attention_flow(good, mask=torch.ones(1, 5, dtype=torch.bool), progress=False)
    with pytest.raises(ValueError, match="at least one text"):
        attention_rollout(minilm, [])
    with pytest.raises(ValueError, match="at least one text"):
        attention_flow(minilm, [], progress=False)
    with pytest.raises(ValueError, match="layers"):
        attention_flow(good, layers=[2], progress=False)
    with pytest.raises(ValueError, match="scale"):
        FlowGraph(reference_a_hat(good[:, 0].numpy()), scale=2**31)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from tests.helpers import random_model

    return random_model(tmp_path_factory.mktemp("gpt2"), "gpt2", n_layers=3, n_heads=4, d_model=32, seed=51)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_importances_match_finite_differences_and_direct_blanking(family, tiny_gpt2, tmp_path):
    from analyses.attribution_compare import _Readout, blank_out_importance, embedding_gradient, gradient_importance
    from tests.helpers import random_model

    model = tiny_gpt2 if family == "gpt2" else random_model(tmp_path, "llama", n_layers=2, n_heads=4, n_kv_heads=2,
                                                            d_model=32, seed=52)
    tokens = model.to_tokens("w3 w7 w1 w9 w4")[0]
    readout = _Readout(model, tokens, None)
    positions = [1, 2, 3, 4, 5]
    grad = embedding_gradient(readout, tokens)  # [pos, d_model]
    gen = torch.Generator().manual_seed(0)
    eps = 1e-2  # float32 logits: a smaller step drowns in rounding; central differences are O(eps^2)
    for p in positions:
        for direction in (torch.ones(model.cfg.d_model), torch.randn(model.cfg.d_model, generator=gen)):
            def shifted(sign):
                step = torch.zeros(1, len(tokens), model.cfg.d_model)
                step[:, p] = sign * eps * direction
                with torch.no_grad():
                    return readout(tokens[None], [Add(sites.embed(), value=step)]).item()
            slope = (shifted(1) - shifted(-1)) / (2 * eps)
            assert float(grad[p] @ direction) == pytest.approx(slope, rel=1e-2, abs=1e-3)
    norms = gradient_importance(readout, tokens, positions, gradient="norm")
    sums = gradient_importance(readout, tokens, positions, gradient="sum")
    np.testing.assert_allclose(norms, grad[positions].norm(dim=-1).numpy(), rtol=1e-6)
    assert norms.min() > 1e-2
    if family == "gpt2":  # every read of the residual stream subtracts its mean: the summed gradient vanishes
        assert sums.max() < 1e-5 * norms.max()
    else:
        assert sums.min() > 1e-4
    drops = blank_out_importance(readout, tokens, positions, blank_id=2)
    with torch.no_grad():
        clean = model(tokens[None])[0, -1, readout.answer].item()
        blanked = tokens.clone()
        blanked[3] = 2
        assert drops[2] == pytest.approx(clean - model(blanked[None])[0, -1, readout.answer].item(), abs=1e-5)
    assert abs(drops).max() > 1e-2


def test_attribution_compare_runs_on_a_causal_model(tiny_gpt2, tmp_path):
    from analyses.attribution_compare import attribution_compare

    texts = ["w1 w2 w3 w4 w5 w6", "w9 w8 w7 w6", "w10 w11 w12 w13 w14", "w5"]
    with pytest.raises(ValueError, match="pre-LayerNorm model.*gradient='norm'"):
        attribution_compare(tiny_gpt2, texts, progress=False)
    result = attribution_compare(tiny_gpt2, texts, gradient="norm", progress=False)
    assert result.parameters["gradient"] == "norm"
    frame = result.to_frame()
    assert set(frame["method"]) == {"raw", "rollout", "flow"} and frame["n_prompts"].max() == 3  # "w5" is too short
    first = frame[frame["layer"] == 0].set_index(["method", "importance"])["spearman"]
    assert first["flow"].to_dict() == pytest.approx(first["rollout"].to_dict())  # equal maps after block 0
    assert read_bundle(result.save(tmp_path)).meta["analysis"] == "attribution-compare"
    with pytest.raises(ValueError, match="targets"):
        attribution_compare(tiny_gpt2, texts, targets="x", progress=False)
