"""Feature tables against hand computations: latents from the Hugging Face model's activations
(PyTorch hooks), densities, top contexts, histograms, logit effects from the HF weights, head
shares and top sources of attention SAEs, token F1 on a hand-built case, the "sae" bundle."""

import math

import pytest
import torch

from analyses.sae import make_sae
from analyses.sae.features import CorpusActivations, feature_tables, load_sae_from_bundle, sae_activations
from interp import load_model
from interp.models import Site
from interp.results import read_bundle, write_bundle
from tests.helpers import random_model_folder
from tests.sae_reference import blocks, hand_attention, hf_model, hf_run, random_prompts, random_sae


@pytest.fixture(scope="module", params=("gpt2", "llama"))
def models(request, tmp_path_factory):
    folder = random_model_folder(tmp_path_factory.mktemp(request.param), request.param, n_layers=2, n_heads=4,
                                 n_kv_heads=2, d_model=32, d_mlp=64)
    return load_model(folder, device="cpu"), hf_model(folder)


def hand_latents(model, hf, sae, texts, kind, layer):
    """(latents [n_used, d_sae], keep [b, p], tokens [b, p]) from the HF model's activations."""
    tokens, real = model.tokenize(texts)
    keep = real & ~torch.isin(tokens, torch.tensor(model.tokenizer.all_special_ids))
    _, x = hf_run(hf, tokens, real, kind, layer)
    with torch.no_grad():
        return sae.encode(x[keep]), keep, tokens


def hand_unembed(model, hf):
    """TransformerLens's processed W_U [d_model, d_vocab] from the HF weights: the final norm's
    scale folded in, centred over d_model (LayerNorm models) and over the vocabulary."""
    norm = hf.transformer.ln_f if hasattr(hf, "transformer") else hf.model.norm
    w = norm.weight.detach()[:, None] * hf.lm_head.weight.detach().T
    if hasattr(hf, "transformer"):
        w = w - w.mean(0, keepdim=True)
    return w - w.mean(1, keepdim=True)


def out_projection(hf, layer):
    """[head * d_head, d_model]: z (flat) -> attention output, from the HF weights."""
    block = blocks(hf)[layer]
    if hasattr(block, "attn"):
        return block.attn.c_proj.weight.detach()  # Conv1D stores [in, out]
    return block.self_attn.o_proj.weight.detach().T


@pytest.fixture(scope="module")
def residual_tables(models):
    model, hf = models
    sae = random_sae(model.cfg.d_model, seed=11)
    texts = random_prompts(12, seed=4)
    tables = feature_tables(model, sae, texts, site="resid_pre(1)", n_top_contexts=3, context_before=3,
                            context_after=1, n_bins=4, n_logit_tokens=3, prompts_per_forward=5, progress=False)
    return model, hf, sae, texts, tables


def test_latents_density_and_top_contexts_equal_a_hand_computation(residual_tables):
    model, hf, sae, texts, tables = residual_tables
    f, keep, tokens = hand_latents(model, hf, sae, texts, "resid_pre", 1)
    fired = (f > 0).sum(0)
    features = tables.features
    assert tables.n_tokens == len(f)
    assert torch.allclose(torch.tensor(features["density"].values), fired.double() / len(f))
    assert torch.allclose(torch.tensor(features["max_activation"].values, dtype=torch.float32), f.max(0).values, atol=1e-4)
    mean_active = f.sum(0) / fired.clamp_min(1)
    assert torch.allclose(torch.tensor(features["mean_activation"].values, dtype=torch.float32), mean_active, atol=1e-4)
    prompt_of, position_of = keep.nonzero(as_tuple=True)
    index_of = torch.full(keep.shape, -1)
    index_of[keep] = torch.arange(len(f))
    checked = 0
    for feature in fired.nonzero().flatten()[:6].tolist():
        rows = tables.top_contexts[tables.top_contexts["feature"] == feature].sort_values("rank")
        top = f[:, feature].topk(min(3, int(fired[feature])))
        assert torch.allclose(torch.tensor(rows["activation"].values, dtype=torch.float32), top.values, atol=1e-4)
        for (_, row), i in zip(rows.iterrows(), top.indices.tolist()):
            p, q = int(prompt_of[i]), int(position_of[i])
            if not math.isclose(row["activation"], f[i, feature].item(), abs_tol=1e-6):
                continue  # a tie: another token with the same value
            assert (row["prompt"], row["position"]) == (p, q)
            assert row["token"] == model.tokenizer.convert_ids_to_tokens(int(tokens[p, q]))
            lo = max(0, q - 3)
            assert row["context_start"] == lo and row["context_index"] == q - lo
            for j, (token, act) in enumerate(zip(row["context_tokens"], row["context_activations"])):
                pos = lo + j
                assert token == model.tokenizer.convert_ids_to_tokens(int(tokens[p, pos]))
                if index_of[p, pos] < 0:
                    assert math.isnan(act)  # BOS and other unused tokens
                else:
                    assert act == pytest.approx(f[index_of[p, pos], feature].item(), abs=1e-5)
            checked += 1
    assert checked >= 6


def test_histograms_top_tokens_and_logit_effects(residual_tables):
    model, hf, sae, texts, tables = residual_tables
    f, keep, tokens = hand_latents(model, hf, sae, texts, "resid_pre", 1)
    ids = tokens[keep]
    hist = tables.histograms
    for feature in (f > 0).any(0).nonzero().flatten()[:5].tolist():
        values = f[:, feature][f[:, feature] > 0]
        edges = torch.linspace(0, values.max().item(), 5)
        expected = torch.histc(values, bins=4, min=0, max=values.max().item())
        rows = hist[hist["feature"] == feature]
        counts = torch.zeros(4)
        counts[torch.tensor(rows["bin"].values)] = torch.tensor(rows["count"].values, dtype=torch.float32)
        assert torch.equal(counts, expected)
        assert rows["bin_start"].tolist() == pytest.approx(edges[rows["bin"].tolist()].tolist(), abs=1e-5)
        sums = {}
        for i in (f[:, feature] > 0).nonzero().flatten().tolist():
            sums[int(ids[i])] = sums.get(int(ids[i]), 0.0) + f[i, feature].item()
        best = sorted(sums, key=lambda t: -sums[t])[:5]
        got = tables.features.loc[feature, "top_tokens"]
        assert got == model.tokenizer.convert_ids_to_tokens(best)
    effects = sae.W_dec.detach() @ hand_unembed(model, hf)
    logit = tables.logit_effects
    for feature in (0, 17):
        promoted = logit[(logit["feature"] == feature) & (logit["kind"] == "promoted")].sort_values("rank")
        suppressed = logit[(logit["feature"] == feature) & (logit["kind"] == "suppressed")].sort_values("rank")
        assert promoted["token_id"].tolist() == effects[feature].topk(3).indices.tolist()
        assert promoted["effect"].tolist() == pytest.approx(effects[feature].topk(3).values.tolist(), abs=1e-4)
        assert suppressed["token_id"].tolist() == (-effects[feature]).topk(3).indices.tolist()
        assert tables.features.loc[feature, "top_promoted"] == promoted["token"].tolist()


def test_attention_sae_tables(models):
    model, hf = models
    c = model.cfg
    sae = random_sae(c.n_heads * c.d_head, seed=12)
    texts = random_prompts(8, seed=5)
    tables = feature_tables(model, sae, texts, site="blocks.1.attn.hook_z", n_top_contexts=2, n_logit_tokens=3,
                            n_source_contexts=2, n_sources=3, progress=False)
    # logit effects through the output projection
    effects = sae.W_dec.detach() @ out_projection(hf, 1) @ hand_unembed(model, hf)
    rows = tables.logit_effects[(tables.logit_effects["feature"] == 5) & (tables.logit_effects["kind"] == "promoted")]
    assert rows.sort_values("rank")["token_id"].tolist() == effects[5].topk(3).indices.tolist()
    # head shares
    blocks_norm = sae.W_dec.detach().view(sae.cfg.d_sae, c.n_heads, c.d_head).norm(dim=-1)
    shares = blocks_norm / blocks_norm.sum(1, keepdim=True)
    assert tables.features["top_head"].tolist() == shares.argmax(1).tolist()
    got = torch.tensor(tables.head_shares.sort_values(["feature", "head"])["share"].values, dtype=torch.float32)
    assert torch.allclose(got, shares.flatten(), atol=1e-6)
    # top sources: the largest |A[h, q, s] (v_s . W_enc[block h, i])| at the feature's top contexts
    tokens, real = model.tokenize(texts)
    A, v, _ = hand_attention(hf, model, tokens, real, layer=1)
    sources = tables.top_sources
    assert len(sources) > 0
    for (feature, rank), group in list(sources.groupby(["feature", "context_rank"]))[:8]:
        context = tables.top_contexts[(tables.top_contexts["feature"] == feature) & (tables.top_contexts["rank"] == rank)]
        p, q = int(group["prompt"].iloc[0]), int(group["query_position"].iloc[0])
        assert (p, q) == (int(context["prompt"].iloc[0]), int(context["position"].iloc[0]))
        u = sae.W_enc.detach()[:, feature].view(c.n_heads, c.d_head)
        contrib = torch.einsum("hs,shd,hd->hs", A[p, :, q], v[p], u)
        top = contrib.flatten().abs().topk(3).indices
        assert group["head"].tolist() == (top // contrib.shape[1]).tolist()
        assert group["source_position"].tolist() == (top % contrib.shape[1]).tolist()
        assert group["contribution"].tolist() == pytest.approx(contrib.flatten()[top].tolist(), abs=1e-4)


def test_search_and_feature_pages(residual_tables):
    _, _, sae, _, tables = residual_tables
    alive = tables.features[tables.features["density"] > 0]
    token = alive.iloc[0]["top_tokens"][0]
    found = tables.search(token.upper())
    assert alive.iloc[0]["feature"] in found["feature"].tolist()
    assert all(any(token.lower() in t.lower() for t in row.top_tokens + row.top_promoted + row.top_suppressed)
               for row in found.itertuples())
    assert 7 in tables.search("7")["feature"].tolist()
    page = tables.feature(int(alive.iloc[0]["feature"]))
    assert set(page) == {"features", "top_contexts", "histograms", "logit_effects"}
    assert all((frame["feature"] == alive.iloc[0]["feature"]).all() for frame in page.values())
    with pytest.raises(IndexError, match="feature must be an int"):
        tables.feature(sae.cfg.d_sae)
    with pytest.raises(ValueError, match="non-empty string"):
        tables.search(" ")


def test_bundle_round_trip(residual_tables, tmp_path):
    model, _, sae, texts, tables = residual_tables
    path = tables.save(tmp_path / "runs")
    bundle = read_bundle(path)
    assert bundle.meta["analysis"] == "sae-features" and bundle.meta["model"] == model.cfg.name
    assert bundle.meta["parameters"]["site"] == "resid_pre(1)"
    for name, frame in tables.tables().items():
        back = bundle.table(name)
        assert len(back) == len(frame) and list(back.columns) == list(frame.columns)
    assert list(bundle.table("top_contexts")["context_tokens"].iloc[0]) == tables.top_contexts["context_tokens"].iloc[0]
    loaded = load_sae_from_bundle(path)
    assert type(loaded) is type(sae) and loaded.cfg.k == sae.cfg.k
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(loaded, name), getattr(sae, name))
    x = torch.randn(5, sae.cfg.d_in)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    other = write_bundle(tmp_path / "runs", meta={"analysis": "heads", "model": "m"})
    with pytest.raises(ValueError, match="is not an SAE bundle"):
        load_sae_from_bundle(other)


def test_token_f1_on_a_hand_built_case():
    # 10 used tokens with ids 5,6,5,7,5,6,8,5,7,6; feature 0 fires on tokens 0, 2, 4 (id 5) and 3 (id 7);
    # feature 1 on 1, 5, 9 (every id 6); feature 2 on everything
    ids = torch.tensor([[0, 5, 6, 5, 7, 5, 6, 8, 5, 7, 6]])
    keep = ids != 0
    index = torch.tensor([0, 2, 4, 3, 1, 5, 9] + list(range(10)))
    feature = torch.tensor([0, 0, 0, 0, 1, 1, 1] + [2] * 10)
    order = torch.argsort(index, stable=True)
    acts = CorpusActivations(Site("resid_pre", 0), 3, ids, keep, torch.tensor([11]), index[order], feature[order],
                             torch.ones(len(index)))
    table = acts.token_f1({"five": 5, "six": [6], "seven-eight": [7, 8]}).set_index("group")
    # five: 4 tokens; feature 0: TP 3, fired 4 -> P 3/4, R 3/4, F1 0.75; feature 2: F1 2*4/(10+4) = 0.571
    assert table.loc["five", "feature"] == 0
    assert table.loc["five", "f1"] == pytest.approx(0.75)
    assert table.loc["five", "precision"] == pytest.approx(0.75) and table.loc["five", "recall"] == pytest.approx(0.75)
    assert table.loc["six", "feature"] == 1 and table.loc["six", "f1"] == pytest.approx(1.0)
    # seven-eight: 3 tokens; feature 0: TP 1 -> 2/(4+3) = 0.286; feature 2: 2*3/(10+3) = 0.46
    assert table.loc["seven-eight", "feature"] == 2
    assert table.loc["seven-eight", "f1"] == pytest.approx(6 / 13)
    assert table.loc["five", "n_tokens"] == 4
    with pytest.raises(ValueError, match=r"no used token .* \['nine'\]"):
        acts.token_f1({"nine": 9})
    with pytest.raises(ValueError, match="must not share token ids"):
        acts.token_f1({"a": [5, 6], "b": [6]})


def test_bad_input_is_refused(models):
    model, _ = models
    sae = random_sae(model.cfg.d_model)
    with pytest.raises(ValueError, match="n_top_contexts must be a positive integer"):
        feature_tables(model, sae, ["w3 w4"], site="resid_pre(1)", n_top_contexts=0)
    with pytest.raises(ValueError, match=r"the SAE has d_in=32, but z\(1, 0\) .* width 8 \(d_head\)"):
        feature_tables(model, sae, ["w3 w4"], site="z(1, 0)")
    acts = sae_activations(model, sae, ["w3 w4 w5"], site="resid_pre(1)", progress=False)
    with pytest.raises(ValueError, match="d_sae=128, this one has 64"):
        feature_tables(model, make_sae("topk", d_in=32, d_sae=64, k=4), acts)
    with pytest.raises(ValueError, match=r"taken at resid_pre\(1\), not at resid_pre\(0\)"):
        feature_tables(model, sae, acts, site="resid_pre(0)")
    with pytest.raises(ValueError, match="the corpus is empty"):
        sae_activations(model, sae, [], site="resid_pre(1)")
