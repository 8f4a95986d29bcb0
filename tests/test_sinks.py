"""Attention sinks against hand-computed answers: planted sink heads, causal averaging over
visible queries on 3 tokens, a planted massive activation, redistribution by hand and inside
a real model (the patched pattern is the one the model uses), and [CLS] sinks in minilm."""

import pytest
import torch

from analyses.sinks import (
    find_massive,
    redistribute,
    redistribution,
    reference_frame,
    sink_analysis,
    sink_rates,
    sink_scores,
    sink_token_scores,
)
from interp import load_model
from interp.models import sites
from interp.results import read_bundle

SENTENCES = [
    "The cat sat on the mat.", "It rained all day in the city.", "She plays the violin every evening.",
    "Our train was late again this morning.", "The museum opens at nine on Sundays.",
    "He forgot his keys at the office.", "Bread rises faster in a warm kitchen.",
    "The river froze during the long winter.", "They painted the fence bright green.",
    "A small dog barked at the mail carrier.", "We watched the stars from the hill.",
    "The committee approved the new budget.", "Fresh snow covered the quiet village.",
    "My sister is learning to speak Japanese.", "The old bridge was closed for repairs.",
    "Children built a castle out of sand.", "The coffee shop sells homemade pastries.",
    "Lightning struck the tall oak tree.", "He reads the newspaper before breakfast.",
    "The orchestra tuned their instruments slowly.",
]


def _encoder_heads(n: int = 4) -> torch.Tensor:
    """[layer=1, batch=1, head=3, n, n]: head 0 puts 0.9 on key 0, head 1 is uniform, head 2
    puts 0.45 on the first and 0.45 on the last key."""
    sink = torch.full((n, n), 0.1 / (n - 1))
    sink[:, 0] = 0.9
    uniform = torch.full((n, n), 1 / n)
    ends = torch.full((n, n), 0.1 / (n - 2))
    ends[:, 0] = ends[:, -1] = 0.45
    return torch.stack([sink, uniform, ends])[None, None]


def test_planted_sink_head_and_uniform_head():
    result = sink_rates(_encoder_heads(), is_causal=False)
    assert result.has_sink[0, 0, 0].tolist() == [True, False, False, False]
    assert not result.has_sink[0, 0, 1].any()
    assert result.has_sink[0, 0, 2].tolist() == [True, False, False, True]
    assert result.rate.tolist() == pytest.approx([200 / 3, 0, 0, 100 / 3])
    assert result.head_frames() == [["centralized", "none", "bidirectional"]]
    assert result.model_frame == "bidirectional"


def test_causal_average_over_visible_queries_on_three_tokens():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.5, 0.1, 0.4]])
    causal = sink_scores(a[None, None, None], is_causal=True)[0, 0, 0]
    assert causal.tolist() == pytest.approx([(1 + 0.2 + 0.5) / 3, (0.8 + 0.1) / 2, 0.4])
    encoder = sink_scores(a[None, None, None], is_causal=False)[0, 0, 0]
    assert encoder.tolist() == pytest.approx([1.7 / 3, 0.9 / 3, 0.4 / 3])
    # The same prompt right-padded to 5 positions in a batch gives the same α, NaN at padding.
    padded = torch.zeros(1, 2, 1, 5, 5)
    padded[0, 0, 0, :3, :3] = a
    padded[0, 0, 0, 3:, 0] = 1.0
    padded[0, 1, 0] = torch.eye(5)
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    alpha = sink_scores(padded, mask, is_causal=True)
    assert alpha[0, 0, 0, :3].tolist() == pytest.approx(causal.tolist())
    assert torch.isnan(alpha[0, 0, 0, 3:]).all()
    result = sink_rates(padded, mask, is_causal=True, epsilon=0.5)
    # Prompt 0 has a sink at key 0 (0.567 > 0.5); prompt 1 (identity) has α = 1/(5-k) at k.
    assert result.rate_at(0) == pytest.approx(50.0)
    assert result.rate_at(-1) == pytest.approx(50.0)  # key 2 of prompt 0 (0.4), key 4 of prompt 1 (1.0)


def test_reference_frame_rule():
    assert reference_frame([], 5) == "none"
    assert reference_frame([0], 5) == "centralized"
    assert reference_frame([2], 5) == "centralized"
    assert reference_frame([0, 2], 5) == "distributed"
    assert reference_frame([0, 4], 5) == "bidirectional"
    assert reference_frame([0, 2, 4], 5) == "bidirectional"


def test_planted_massive_activation_is_found_exactly():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 2, 6, 1024, generator=gen)  # φ <= sqrt(d_model): d_model > 400 to reach 20
    hidden[1, 0, 3, 17] = -500.0
    hidden[2, 1, 5, 9] = 800.0  # on a padded position: must be ignored
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 5] = False
    tokens = [[f"t{p}" for p in range(6)], [f"u{p}" for p in range(5)]]
    frame = find_massive(hidden, mask, abs_threshold=100, ratio=100, str_tokens=tokens)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert (row.layer, row.batch, row.position, row.token, row.dim) == (1, 0, 3, "t3", 17)
    assert row.value == -500.0
    assert row.ratio == pytest.approx(500 / float(hidden[1, 0, 3].abs().median()), rel=1e-5)
    assert find_massive(hidden, mask, abs_threshold=600, ratio=1).empty
    phi = sink_token_scores(hidden, [17])
    x = hidden[1, 0, 3]
    assert phi[1, 0, 3] == pytest.approx(500 / float(x.pow(2).mean().sqrt()), rel=1e-5)
    assert (phi > 20).nonzero().tolist() == [[1, 0, 3]]
    assert (sink_token_scores(hidden, [17, 9]) > 20).nonzero().tolist() == [[1, 0, 3], [2, 1, 5]]


def test_redistribution_by_hand():
    pattern = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.3, 0.2], [0.4, 0.6, 0.0]])[None, None]
    sink = torch.tensor([[True, False, False]])
    out = redistribute(pattern, sink, p=0.6)[0, 0]
    expected = torch.tensor([[1.0, 0.0, 0.0],               # nothing else to give to: unchanged
                             [0.3, 0.3 + 0.2 * 0.3 / 0.5, 0.2 + 0.2 * 0.2 / 0.5],
                             [0.24, 0.76, 0.0]])            # zero attention stays zero
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.sum(-1), torch.ones(3))


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from tests.helpers import random_model
    return random_model(tmp_path_factory.mktemp("sinks") / "gpt2", "gpt2", n_layers=2, n_heads=4, d_model=32, seed=61)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """Grouped-query attention: 4 query heads over 2 key/value heads."""
    from tests.helpers import random_model
    return random_model(tmp_path_factory.mktemp("sinks") / "llama", "llama", n_layers=2, n_heads=4, n_kv_heads=2,
                        d_model=32, seed=62)


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama"])
def test_redistribution_changes_what_the_model_computes(name, request):
    m = request.getfixturevalue(name)
    tokens = m.to_tokens(["w1 w2 w3 w4 w5 w6", "w7 w8 w9 w10 w11 w12"])
    base, cache = m.run_with_cache(tokens)
    edits = redistribution(m, heads=[(1, 2), (0, 1)], sink_positions=[0], p=0.6)
    with torch.no_grad():
        out, seen = m.run(tokens, interventions=edits, capture=[sites.v(1), sites.z(1)])
    # Layer 1's pattern does not depend on the edit in layer 1 but does on the one in layer 0,
    # so rebuild it from the values seen in the edited run: z must be the edited pattern @ v
    # (each query head reading its key/value head).
    v = seen.v(1).repeat_interleave(m.cfg.n_heads // m.cfg.n_kv_heads, dim=2)
    layer_0 = [edit for edit in edits if edit.site.layer == 0]
    with torch.no_grad():
        pattern_1 = m.run(tokens, interventions=layer_0, capture=[sites.pattern(1)])[1].pattern(1)
    moved = pattern_1.clone()
    sink = torch.zeros(tokens.shape, dtype=torch.bool)
    sink[:, 0] = True
    moved[:, 2:3] = redistribute(pattern_1[:, 2:3], sink, 0.6)
    torch.testing.assert_close(moved.sum(-1), torch.ones_like(moved.sum(-1)))
    assert (moved - pattern_1).abs().max() > 0.05  # so the check below tells edited from unedited
    torch.testing.assert_close(seen.z(1), torch.einsum("bhqk,bkhd->bqhd", moved, v), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(seen.z(1)[:, :, 2], cache.z(1)[:, :, 2], atol=1e-4)
    assert (out - base).abs().max() > 1e-2


def test_sink_analysis_on_causal_model_and_bundle(tiny_gpt2, tmp_path):
    prompts = [" ".join(f"w{(3 * i + j) % 50}" for j in range(8 + i)) for i in range(4)]
    result = sink_analysis(tiny_gpt2, prompts, abs_threshold=0.0, ratio=4.0)
    assert result.bos_prepended is True and result.is_causal
    assert result.alpha.shape == (4, 2, 4, 12)
    assert result.sink_dims == sorted(set(result.massive["dim"]))
    assert result.phi is not None and result.phi.shape == (2, 4, 12)
    frame = result.to_frame()
    assert len(frame) == 2 * 4 * 12 and set(frame["frame"]) <= {"none", "centralized", "distributed", "bidirectional"}
    bundle = read_bundle(result.save(tmp_path))
    assert bundle.meta["analysis"] == "sinks" and bundle.meta["parameters"]["bos_prepended"] is True


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm", device="cpu")


def test_minilm_sinks_on_cls(minilm):
    result = sink_analysis(minilm, SENTENCES)
    assert result.bos_prepended is True and not result.is_causal
    interior = torch.cat([result.prompt_rates()[b, 1:n - 1] for b, n in enumerate(result.n_real.tolist())])
    assert result.rate_at(0) > 50 > 5 > float(interior.mean())  # measured: 87.4% at [CLS], 0.7% inside
    # [SEP] is no anchor in this model: no head passes ε = 0.3 there in any prompt, and at
    # ε = 0.1 it is no more frequent than inner tokens (measured 12.3% vs 11.9%).
    assert all(tokens[-1] == "[SEP]" for tokens in result.str_tokens)
    assert result.rate_at(-1) < 5
    assert result.model_frame == "centralized"


def test_ioi_small_sinks_at_bos_on_its_own_prompts():
    """zoo/ioi-small on IOI prompts: BOS is where sinks gather (measured 22.3% of all heads;
    L1H2, L1H5 and L2H5 in every prompt), above every later key."""
    from circuits.tasks import ioi_task

    model = load_model("zoo/ioi-small", device="cpu")
    result = sink_analysis(model, ioi_task(model, n=32, seed=0).clean_prompts)
    assert result.bos_prepended is True and result.str_tokens[0][0] == "<bos>"
    later = torch.nanmean(result.prompt_rates()[:, 1:], dim=0)
    assert result.rate_at(0) > 15 and result.rate_at(0) > float(later.max()) + 5  # next highest: 11.8% at key 6
    always = result.head_rate_at(0) == 1.0
    assert always[1, 2] and always[1, 5] and always[2, 5]
    assert not result.head_rate_at(0)[0].any()  # layer 0 has no sink


def test_bad_input_is_rejected(minilm, tiny_gpt2):
    good = _encoder_heads()
    with pytest.raises(ValueError, match="row-stochastic"):
        sink_rates(good * 0.5, is_causal=False)
    with pytest.raises(ValueError, match="mask must have shape"):
        sink_rates(good, torch.ones(1, 3, dtype=torch.bool), is_causal=False)
    with pytest.raises(ValueError, match=r"q == k"):
        sink_scores(good[..., :3])
    for epsilon in (0, 1, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"epsilon \(--epsilon\) must be a finite number > 0 and < 1"):
            sink_rates(good, epsilon=epsilon)
    with pytest.raises(ValueError, match="at least one text"):
        sink_analysis(minilm, [])
    with pytest.raises(ValueError, match="mask must have shape"):
        find_massive(torch.zeros(2, 1, 4, 8), torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="layer, batch, pos, d_model"):
        find_massive(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="sink_dims"):
        sink_token_scores(torch.zeros(1, 1, 2, 8), [8])
    with pytest.raises(ValueError, match="p must be"):
        redistribution(tiny_gpt2, [(0, 0)], [0], p=1.5)
    with pytest.raises(IndexError, match="layer 2 is out of range"):
        redistribution(tiny_gpt2, [(2, 0)], [0])
    edits = redistribution(tiny_gpt2, [(0, 0)], [40])
    with pytest.raises(ValueError, match="sink_positions must lie"):
        tiny_gpt2.run(tiny_gpt2.to_tokens("w1 w2"), interventions=edits)
    encoder_edits = redistribution(minilm, [(0, 0)], [0])
    with pytest.raises(ValueError, match="ignores edits of attention patterns"):  # the lens backend on encoders
        minilm.run(minilm.to_tokens("a cat"), interventions=encoder_edits)
