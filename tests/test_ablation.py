"""Per-head ablation and gates (interp.models.ablation) against Hugging Face models whose
output weights are edited by hand, a hand-written mean, and z times its gradient."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from interp import load_model
from interp.models import Add, sites
from interp.models.ablation import ablation, check_heads, head_gates, z_means
from tests.helpers import random_model_folder

SHAPES = {"gpt2": dict(n_layers=2, n_heads=4, d_model=32, seed=21),
          "gpt_neox": dict(n_layers=2, n_heads=4, d_model=32, seed=22),
          "llama": dict(n_layers=2, n_heads=6, n_kv_heads=2, d_model=48, seed=23)}


@pytest.fixture(scope="module", params=list(SHAPES))
def family(request, tmp_path_factory):
    """(family name, plain HF model, hooked model)."""
    folder = random_model_folder(tmp_path_factory.mktemp(request.param), request.param, **SHAPES[request.param])
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return request.param, hf, load_model(folder, device="cpu")


def _tokens(model, batch=3, n_pos=9, seed=0):
    return torch.randint(3, model.cfg.d_vocab, (batch, n_pos), generator=torch.Generator().manual_seed(seed))


def _output_weight(name, hf, layer):
    """W_O of `layer` in [d_model, head * d_head] layout (a view: editing it edits the model)."""
    if name == "gpt2":
        return hf.transformer.h[layer].attn.c_proj.weight.T  # Conv1D stores [in, out]
    if name == "gpt_neox":
        return hf.gpt_neox.layers[layer].attention.dense.weight
    return hf.model.layers[layer].self_attn.o_proj.weight


def test_zero_ablation_equals_hugging_face_with_the_heads_output_columns_zeroed(family):
    name, hf, model = family
    heads = [(0, 1), (1, 0), (1, model.cfg.n_heads - 1)]  # under GQA: query heads of both key/value heads
    tokens = _tokens(model)
    d_head = model.cfg.d_head
    with torch.no_grad():
        ours = model.run(tokens, interventions=ablation(model, heads))[0]
        for layer, head in heads:
            _output_weight(name, hf, layer)[:, head * d_head:(head + 1) * d_head] = 0
        expected = hf(tokens).logits
    assert (ours - model(tokens)).abs().max() > 0.1, "the ablation changes the output"
    torch.testing.assert_close(ours, expected, atol=2e-5 * expected.abs().max().item(), rtol=0)


def test_mean_ablation_sets_z_to_a_hand_computed_mean(family):
    _, _, model = family
    texts = ["w1 w2 w3 w4", "w5 w6", "w7 w8 w9"]
    tokens, mask = model.tokenize(texts)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, sites=[sites.z(1)], attention_mask=mask.long())
    z = cache.z(1)  # [batch, pos, head, d_head]
    per_position = torch.stack([z[mask[:, p], p].mean(0) for p in range(tokens.shape[1])])
    over_tokens = z[mask].mean(0)
    means = z_means(model, texts)
    torch.testing.assert_close(means[1], per_position, atol=1e-6, rtol=0)
    torch.testing.assert_close(z_means(model, texts, per_position=False)[1], over_tokens, atol=1e-6, rtol=0)
    _, ablated = model.run(tokens, interventions=ablation(model, [(1, 2)], kind="mean", means=means),
                           capture=[sites.z(1)], attention_mask=mask.long())
    torch.testing.assert_close(ablated.z(1)[:, :, 2], per_position[None, :, 2].expand(3, -1, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(ablated.z(1)[:, :, 1], z[:, :, 1], atol=1e-6, rtol=0)


def test_gate_gradients_equal_z_times_its_gradient(family):
    """d loss / d gate_h at gate 1 is the sum over positions of z_h . d loss / d z_h."""
    _, _, model = family
    tokens = _tokens(model, seed=1)
    gates = torch.ones(model.cfg.n_layers, model.cfg.n_heads, requires_grad=True)
    logits = model.run(tokens, interventions=head_gates(model, gates))[0]
    (grad,) = torch.autograd.grad(logits[:, -1].logsumexp(-1).sum(), gates)
    # Reference: a zero shift added to every layer's z; its gradient is d loss / d z.
    shifts = [torch.zeros(3, 9, model.cfg.n_heads, model.cfg.d_head, requires_grad=True)
              for _ in range(model.cfg.n_layers)]
    out, cache = model.run(tokens, interventions=[Add(sites.z(l), value=s) for l, s in enumerate(shifts)],
                           capture=[sites.z(l) for l in range(model.cfg.n_layers)])
    dz = torch.autograd.grad(out[:, -1].logsumexp(-1).sum(), shifts)
    reference = torch.stack([(cache.z(l).detach() * dz[l]).sum(dim=(0, 1, 3)) for l in range(model.cfg.n_layers)])
    assert reference.abs().max() > 1e-2
    torch.testing.assert_close(grad, reference, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        closed = torch.ones_like(gates)
        closed[0, 1] = 0
        torch.testing.assert_close(model.run(tokens, interventions=head_gates(model, closed))[0],
                                   model.run(tokens, interventions=ablation(model, [(0, 1)]))[0])


def test_bad_input_is_refused(family):
    _, _, model = family
    c = model.cfg
    assert check_heads(c, [(1, 0), (0, 2), (1, 0)]) == [(0, 2), (1, 0)]
    with pytest.raises(ValueError, match=r"named more than once: \[\(1, 0\)\]"):
        check_heads(c, [(1, 0), (0, 2), (1, 0)], distinct=True)
    with pytest.raises(ValueError, match="at least one"):
        check_heads(c, iter([]), allow_empty=False)
    assert ablation(model, []) == []
    with pytest.raises(IndexError, match=f"layer {c.n_layers} is out of range"):
        ablation(model, [(c.n_layers, 0)])
    with pytest.raises(IndexError, match=f"head {c.n_heads} is out of range"):
        ablation(model, [(0, c.n_heads)])
    with pytest.raises(TypeError, match="head must be an int"):
        ablation(model, [(0, 1.5)])
    with pytest.raises(ValueError, match=r"\(layer, head\) pairs"):
        ablation(model, [(0, 1, 2)])
    with pytest.raises(ValueError, match="kind must be one of"):
        ablation(model, [(0, 0)], kind="resample")
    with pytest.raises(TypeError, match="needs means"):
        ablation(model, [(0, 0)], kind="mean")
    with pytest.raises(ValueError, match="means must have shape"):
        ablation(model, [(0, 0)], kind="mean", means=torch.zeros(c.n_layers, c.n_heads + 1, c.d_head))
    with pytest.raises(ValueError, match="means go with kind='mean'"):
        ablation(model, [(0, 0)], means=torch.zeros(c.n_layers, c.n_heads, c.d_head))
    with pytest.raises(ValueError, match=r"gates must be a tensor \[layer, head\]"):
        head_gates(model, torch.ones(c.n_heads))
    tokens = _tokens(model, batch=2, n_pos=4)
    with pytest.raises(ValueError, match="no real"):
        z_means(model, tokens, attention_mask=torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]]))
