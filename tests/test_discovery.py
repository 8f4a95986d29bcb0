"""Information-flow routes and sparse attention decomposition against hand computations from
the model layer's cached activations, on GPT-2, grouped-query Llama and GPT-NeoX (partial
rotary, parallel blocks)."""

import pytest
import torch

from circuits.discovery.routes import routes_scores, token_routes
from circuits.discovery.sad import _Forms, _normalise, sad_scores, score_shares
from interp import load_model
from interp.models import sites
from interp.patching.edges import EdgeLayout
from interp.patching.engine import Engine
from tests.helpers import random_model, random_task

SHAPES = {"gpt2": dict(n_layers=2, n_heads=2, d_model=24, seed=51),
          "llama": dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=52),
          "gpt_neox": dict(n_layers=2, n_heads=2, d_model=32, seed=53)}


@pytest.fixture(scope="module", params=list(SHAPES))
def model(request, tmp_path_factory):
    return random_model(tmp_path_factory.mktemp(request.param), request.param, **SHAPES[request.param])


def outputs(model, cache, name):
    if name == "input":
        return cache[sites.resid_pre(0)]
    if name.startswith("m"):
        return cache[sites.mlp_out(int(name[1:]))]
    layer, head = (int(x) for x in name[1:].split(".h"))
    return cache[sites.head_out(layer, head)]


def test_routes_scores_weight_proximities_by_the_route_to_the_prediction(model):
    """On one prompt, the logits edges' scores are the normalised proximities of each sender's
    output to the final residual at the answer position (the prediction's own input, weight 1)."""
    task = random_task(model, seed=1, batch=1, n_pos=5)
    layout, scores = routes_scores(model, task)
    with torch.no_grad():
        _, cache = model.run_with_cache(task.clean, sites=model.all_sites() + [sites.head_out(l) for l in range(2)])
    r = layout.receivers.index("logits")
    t = int(task.answer_pos[0])
    read = cache[sites.resid_post(1)][0, t].double()
    prox = torch.stack([(read.abs().sum() - (read - outputs(model, cache, name)[0, t].double()).abs().sum()).clamp(min=0)
                        for name in layout.senders])
    assert torch.allclose(scores[:, r].double(), prox / prox.sum(), atol=1e-5)
    assert torch.isnan(scores[~layout.exists]).all()
    assert (scores[layout.exists] >= 0).all()


def test_token_routes_follow_the_induction_head_on_zoo_induction():
    from interp.zoo import get_embedded

    model = load_model("zoo/induction-2l", device="cpu")
    card = get_embedded("zoo/induction-2l").card()
    gen = torch.Generator().manual_seed(3)
    words = torch.randint(3, model.cfg.d_vocab, (10,), generator=gen)
    tokens = torch.cat([torch.tensor([model.tokenizer.bos_token_id]), words, words[:4]])
    routes = token_routes(model, tokens, threshold=0.04)
    last = len(tokens) - 1
    into_final = routes[(routes.layer == 1) & (routes.to_pos == last) & (routes.via == "head")]
    best = into_final.iloc[0]
    assert [1, int(best["head"])] in card["induction_heads"]
    assert best["from_pos"] == 5, "it reads the token after the earlier occurrence of the current token"
    assert (routes.importance > 0.04).all() and routes.importance.max() <= 1
    with pytest.raises(ValueError, match="threshold must be a number in"):
        token_routes(model, tokens, threshold=1.5)


def test_sad_decomposes_each_score_and_its_shares_add_up(model):
    task = random_task(model, seed=2, batch=1, n_pos=6)
    engine = Engine(model)
    with torch.no_grad():
        run = engine.run(task.clean)
        _, cache = model.run_with_cache(task.clean, sites=model.all_sites() + [sites.head_out(l) for l in range(2)])
    layout = EdgeLayout.for_model(model)
    forms = _Forms(model)
    layer, i, j = 1, 5, 2
    x = cache[sites.resid_pre(layer)][0].double()
    x_tilde, scale = _normalise(model, x)
    x_tilde = torch.cat([x_tilde, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    upstream = [s for s in range(len(layout.senders)) if layout.exists[s, layout.receivers.index("a1.h0<q>")]]
    outs = torch.stack([outputs(model, cache, layout.senders[s])[0] for s in upstream]).double()
    rest = x - outs.sum(0)  # biases: not a sender
    for head in range(model.cfg.n_heads):
        kv = model.cfg.kv_head(head)
        score = float((run.q[layer][0, i, head] @ run.k[layer][0, j, kv]) * model.arch.attn_scale[layer])
        total, q_share, k_share = score_shares(model, forms, torch.cat([outs, rest[None]]), x_tilde, scale,
                                               layer, head, i, j)
        assert float(total) == pytest.approx(score, abs=1e-6 * max(1, abs(score)))
        u, sigma, v = forms.svd(layer, head, j - i)
        ones_q = float((sigma * u[-1] * (x_tilde[j] @ v)).sum())  # the 1 appended to x_i
        ones_k = float((sigma * (x_tilde[i] @ u) * v[-1]).sum())
        assert float(q_share.sum()) + ones_q == pytest.approx(score, abs=1e-6 * max(1, abs(score)))
        assert float(k_share.sum()) + ones_k == pytest.approx(score, abs=1e-6 * max(1, abs(score)))


def test_sad_scores_only_the_edges_it_traces(model):
    task = random_task(model, seed=3, batch=2, n_pos=6)
    layout, scores = sad_scores(model, task, start=0.5)
    kinds = [r[-2] if r.endswith(">") else r for r in layout.receivers]
    for r, kind in enumerate(kinds):
        column = scores[layout.exists[:, r], r]
        if kind in ("q", "k") or kind == "logits":
            assert not torch.isnan(column).any()
        else:
            assert torch.isnan(column).all(), "values and MLP inputs are not part of the method"
    assert scores[:, layout.receivers.index("logits")].abs().max() > 0
    with pytest.raises(ValueError, match="coverage must be in"):
        sad_scores(model, task, coverage=0)


def test_discovery_refuses_bad_input_with_the_reason(model, tmp_path):
    from circuits.discovery import evaluate, find_circuit
    from circuits.graph import Graph
    from interp.patching import Task

    task = random_task(model, seed=4, batch=2, n_pos=6)
    with torch.no_grad():
        clean_logits = model(task.clean)[torch.arange(2), task.answer_pos]

    def kl_to_clean(logits, t):  # flat at the clean run: its gradient there is zero
        p = torch.log_softmax(clean_logits, -1)
        return (p.exp() * (p - torch.log_softmax(logits, -1))).sum(-1)
    kl_task = Task(task.clean, task.corrupt, task.answer, task.wrong, metric=kl_to_clean)
    with pytest.raises(ValueError, match="needs a metric with a gradient at the clean run.*logit difference"):
        find_circuit(model, kl_task, "eap", progress=False)
    # integrated gradients average along the path, where KL's gradient is not zero
    assert torch.nansum(find_circuit(model, kl_task, "eap-ig", progress=False).scores.abs()) > 0
    with pytest.raises(ValueError, match="unknown method 'magic'; methods: exact, eap"):
        find_circuit(model, task, "magic")
    with pytest.raises(ValueError, match="threshold must be a number >= 0"):
        find_circuit(model, task, "acdc", threshold=-0.1, progress=False)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        find_circuit(model, task, "eap-ig", steps=0)
    with pytest.raises(ValueError, match="start must be in"):
        find_circuit(model, task, "sad", start=2.0)
    other = Graph.for_model(model.cfg.n_layers + 1, model.cfg.n_heads, parallel_attn_mlp=model.cfg.parallel,
                            d_model=model.cfg.d_model)
    other = other.with_scores(torch.where(other.exists, 1.0, float("nan")))
    with pytest.raises(ValueError, match=r"the graph is for a model of shape .*'n_layers': 3"):
        evaluate(model, task, other)
