"""The activation store: the activations of every site against the plain Hugging Face model with
PyTorch hooks, special tokens and padding left out, shuffled batches that use every token once per
epoch, one forward per chunk of prompts for several sites, the normalisation convention, the
disk cache, training several SAEs from one store, and bad input."""

import math

import pytest
import torch

from analyses.sae import make_sae
from analyses.sae.store import ActivationStore
from analyses.sae.train import TrainConfig, train_saes, train_saes_on_store
from interp import load_model
from interp.models import sites
from tests.helpers import random_model, random_model_folder
from tests.sae_reference import hf_model, hf_run, random_prompts


@pytest.fixture(scope="module", params=("gpt2", "llama"))
def models(request, tmp_path_factory):
    folder = random_model_folder(tmp_path_factory.mktemp(request.param), request.param, n_layers=2, n_heads=4,
                                 n_kv_heads=2, d_model=32, d_mlp=64)
    return load_model(folder, device="cpu"), hf_model(folder)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return random_model(tmp_path_factory.mktemp("gpt2-store"), "gpt2", n_layers=2, d_model=32, d_mlp=64)


def reference_activations(model, hf, texts, site):
    """The site's activations at the used tokens (real, not special), row-major, from HF hooks."""
    tokens, real = model.tokenize(texts)
    keep = real & ~torch.isin(tokens, torch.tensor(model.tokenizer.all_special_ids))
    _, x = hf_run(hf, tokens, real, site.kind, site.layer)
    if site.kind == "z" and site.head is not None:
        d = model.cfg.d_head
        x = x[..., site.head * d:(site.head + 1) * d]
    return x[keep], tokens[keep]


def test_activations_of_every_site_equal_the_hf_model(models):
    model, hf = models
    texts = random_prompts(9)
    spellings = ["resid_pre(1)", "blocks.1.attn.hook_z", sites.z(0, 3), "mlp_out(0)"]
    store = ActivationStore(model, texts, spellings, prompts_per_forward=4, progress=False)
    assert store.names == ["resid_pre(1)", "z(1)", "z(0, 3)", "mlp_out(0)"]
    c = model.cfg
    assert store.d_in == {"resid_pre(1)": c.d_model, "z(1)": c.n_heads * c.d_head, "z(0, 3)": c.d_head,
                          "mlp_out(0)": c.d_model}
    for site in store.sites:
        expected, ids = reference_activations(model, hf, texts, site)
        got = store.activations(site)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), site
    assert store.n_tokens == len(ids)
    assert not torch.isin(ids, torch.tensor(model.tokenizer.all_special_ids)).any()
    assert model.tokenizer.unk_token_id in model.tokenize(texts)[0]  # an <unk> was there to leave out


def test_token_tensor_corpus_and_explicit_exclusions(gpt2):
    texts = random_prompts(6)
    tokens, real = gpt2.tokenize(texts)
    from_texts = ActivationStore(gpt2, texts, "resid_pre(1)", progress=False)
    from_tokens = ActivationStore(gpt2, tokens, "resid_pre(1)", attention_mask=real.long(), progress=False)
    assert torch.equal(from_texts.keep, from_tokens.keep)
    assert torch.allclose(from_texts.activations(), from_tokens.activations(), atol=1e-6)
    everything = ActivationStore(gpt2, texts, "resid_pre(1)", exclude_special_tokens=False, progress=False)
    assert everything.n_tokens == int(real.sum())
    only_bos = ActivationStore(gpt2, texts, "resid_pre(1)", exclude_special_tokens=[gpt2.tokenizer.bos_token_id],
                               progress=False)
    assert only_bos.n_tokens == int(real.sum()) - len(texts)


def match_rows(batch_rows, reference):
    """Index in `reference` of each row (nearest), and the largest distance."""
    dist = torch.cdist(batch_rows.double(), reference.double())
    best = dist.min(1)
    return best.indices, best.values.max().item()


def test_batches_use_every_token_once_per_epoch_and_are_scaled(gpt2):
    # a different first word in each prompt, so that no two tokens have the same prefix (and activations)
    texts = [f"w{3 + i} {text}" for i, text in enumerate(random_prompts(40, seed=3))]
    store = ActivationStore(gpt2, texts, ["resid_pre(1)", "z(1)"], batch_size=16, n_batches_in_buffer=2,
                            prompts_per_forward=7, n_norm_estimate_tokens=50, progress=False)
    raw = {name: store.activations(name) for name in store.names}
    for name, x in raw.items():  # s = sqrt(d_in) / mean norm of the first 50 tokens in corpus order
        assert store.scaling_factors[name] == pytest.approx(math.sqrt(x.shape[1]) / x[:50].norm(dim=1).mean().item(),
                                                            rel=1e-5)
    batches = list(store.batches(epochs=1))
    assert len(batches) == store.n_tokens // 16
    assert all(b[name].shape == (16, store.d_in[name]) for b in batches for name in store.names)
    for name in store.names:
        rows = torch.cat([b[name] for b in batches]) / store.scaling_factors[name]
        index, distance = match_rows(rows, raw[name])
        assert distance < 1e-4
        assert len(set(index.tolist())) == len(rows)  # no token twice
    # both sites of a batch row come from the same token
    idx_res, _ = match_rows(batches[0]["resid_pre(1)"] / store.scaling_factors["resid_pre(1)"], raw["resid_pre(1)"])
    idx_z, _ = match_rows(batches[0]["z(1)"] / store.scaling_factors["z(1)"], raw["z(1)"])
    assert torch.equal(idx_res, idx_z)
    # shuffled: not in corpus order
    assert not torch.equal(idx_res, torch.sort(idx_res).values)
    # two epochs: each token twice; forever: as long as asked
    two = torch.cat([b["resid_pre(1)"] for b in store.batches(epochs=2)])
    assert len(two) == 2 * store.n_tokens // 16 * 16
    stream = store.batches()
    assert len([next(stream) for _ in range(3 * len(batches))]) == 3 * len(batches)


def test_seeds_resume_and_normalisation_off(gpt2):
    texts = random_prompts(30, seed=4)
    make = lambda seed, **kw: ActivationStore(gpt2, texts, "resid_pre(1)", batch_size=8, seed=seed, progress=False, **kw)
    a, b, c = (list(make(seed).batches(epochs=1)) for seed in (0, 0, 1))
    assert all(torch.equal(x["resid_pre(1)"], y["resid_pre(1)"]) for x, y in zip(a, b))
    assert not torch.equal(a[0]["resid_pre(1)"], c[0]["resid_pre(1)"])
    resumed = list(make(0).batches(5, epochs=1))
    assert all(torch.equal(x["resid_pre(1)"], y["resid_pre(1)"]) for x, y in zip(a[5:], resumed))
    raw = make(0, normalize_activations="none")
    assert raw.scaling_factors == {"resid_pre(1)": 1.0}
    rows = torch.cat([x["resid_pre(1)"] for x in raw.batches(epochs=1)])
    _, distance = match_rows(rows, raw.activations())
    assert distance < 1e-5


def test_one_forward_per_chunk_serves_every_site(gpt2, monkeypatch):
    calls = []
    original = gpt2.run

    def counting(tokens, capture=(), attention_mask=None, stop_early=False):
        calls.append(list(capture))
        assert stop_early, "the store needs nothing after its deepest site"
        return original(tokens, capture=capture, attention_mask=attention_mask, stop_early=stop_early)

    monkeypatch.setattr(gpt2, "run", counting)
    store = ActivationStore(gpt2, random_prompts(20), ["resid_pre(0)", "z(1)", "mlp_out(1)"], batch_size=8,
                            prompts_per_forward=6, normalize_activations="none", progress=False)
    list(store.batches(epochs=1))
    assert len(calls) == 4  # ceil(20 / 6) forwards for three sites
    assert all(len(sites_) == 3 for sites_ in calls)


def test_disk_cache_is_reused_refused_for_another_corpus_and_rebuilt_when_incomplete(gpt2, tmp_path, monkeypatch):
    texts = random_prompts(25, seed=5)
    folder = tmp_path / "cache"
    first = ActivationStore(gpt2, texts, ["resid_pre(1)", "z(0)"], batch_size=8, cache_dir=folder, shard_tokens=40,
                            prompts_per_forward=4, progress=False)
    direct = ActivationStore(gpt2, texts, ["resid_pre(1)", "z(0)"], progress=False)
    for name in first.names:
        assert torch.allclose(first.activations(name), direct.activations(name), atol=1e-5)
        assert first.scaling_factors[name] == pytest.approx(direct.scaling_factors[name], rel=1e-6)
    shards = sorted(p.name for p in folder.iterdir())
    assert "manifest.json" in shards and len(shards) > 2 and not any(p.startswith(".") for p in shards)
    batches = list(first.batches(epochs=1))

    def no_model(*args, **kwargs):
        raise AssertionError("the cache should have been read instead of running the model")

    monkeypatch.setattr(gpt2, "run_with_cache", no_model)
    again = ActivationStore(gpt2, texts, ["resid_pre(1)", "z(0)"], batch_size=8, cache_dir=folder, progress=False)
    assert again.scaling_factors == first.scaling_factors
    assert all(torch.equal(x[n], y[n]) for x, y in zip(batches, again.batches(epochs=1)) for n in first.names)
    with pytest.raises(ValueError, match="holds activations of another run .*corpus_sha256"):
        ActivationStore(gpt2, random_prompts(25, seed=6), ["resid_pre(1)", "z(0)"], cache_dir=folder,
                        progress=False).activations("z(0)")
    monkeypatch.undo()
    # an interrupted fill (shards, no manifest) is discarded and rebuilt
    (folder / "manifest.json").unlink()
    (folder / "shard_00099.safetensors").write_bytes(b"partial")
    rebuilt = ActivationStore(gpt2, texts, ["resid_pre(1)", "z(0)"], cache_dir=folder, progress=False)
    assert torch.allclose(rebuilt.activations("z(0)"), direct.activations("z(0)"), atol=1e-5)
    assert not (folder / "shard_00099.safetensors").exists()
    # a damaged shard is named
    (folder / "shard_00000.safetensors").write_bytes(b"garbage")
    damaged = ActivationStore(gpt2, texts, ["resid_pre(1)", "z(0)"], cache_dir=folder, progress=False)
    with pytest.raises(ValueError, match="shard_00000.safetensors is missing or damaged"):
        damaged.activations("z(0)")


def test_fold_activation_norm_scaling_factor_keeps_latents_for_every_architecture():
    x = torch.randn(20, 12)
    for arch, kw in (("topk", dict(k=3)), ("batchtopk", dict(k=3)), ("standard", {}), ("jumprelu", {})):
        sae = make_sae(arch, d_in=12, d_sae=30, seed=1, **kw)
        with torch.no_grad():
            sae.b_dec.normal_()
            sae.b_enc.normal_(0, 0.1)
        s = 0.37
        f_scaled, x_hat_scaled = sae.encode(s * x), sae(s * x)
        sae.fold_activation_norm_scaling_factor(s)
        assert torch.allclose(sae.encode(x), f_scaled, atol=1e-5), arch
        assert torch.allclose(sae(x), x_hat_scaled / s, atol=1e-5), arch
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        sae.fold_activation_norm_scaling_factor(0.0)


def test_train_several_saes_from_one_store(gpt2):
    texts = random_prompts(40, seed=7)
    store = ActivationStore(gpt2, texts, ["resid_pre(1)", "z(1)"], batch_size=32, progress=False)
    saes = {"res": make_sae("topk", d_in=32, d_sae=64, k=4, seed=0), "attn": make_sae("topk", d_in=32, d_sae=64, k=4, seed=1),
            "attn_wide": make_sae("topk", d_in=32, d_sae=96, k=4, seed=2)}
    twins = {name: make_sae("topk", d_in=32, d_sae=sae.cfg.d_sae, k=4, seed=seed)
             for seed, (name, sae) in enumerate(saes.items())}
    cfg = TrainConfig(total_training_steps=6, lr=1e-2)
    site_of = {"res": "resid_pre(1)", "attn": "z(1)", "attn_wide": "blocks.1.attn.hook_z"}
    train_saes_on_store(saes, store, cfg, sites=site_of, progress=False)
    # the same training by hand: the store's batches, then the scale folded in
    train_saes(twins, store.batches(), cfg, sites={n: str(sites.parse(s)) for n, s in site_of.items()}, progress=False)
    for name, sae in saes.items():
        name_of_site = str(sites.parse(site_of[name]))
        twins[name].fold_activation_norm_scaling_factor(store.scaling_factors[name_of_site])
        for p in ("W_enc", "W_dec", "b_enc", "b_dec"):
            assert torch.allclose(getattr(sae, p), getattr(twins[name], p), atol=1e-6), (name, p)
        meta = sae.cfg.metadata
        assert meta["site"] == name_of_site and meta["model_name"] == gpt2.cfg.name
        assert meta["activation_norm_scaling_factor"] == store.scaling_factors[name_of_site]
        assert meta["activation_norm_scaling_factor_folded"] is True
        assert meta["prepend_bos"] is True and meta["exclude_special_tokens"] is True
    assert saes["attn"].cfg.metadata["hook_name"] == "blocks.1.attn.hook_z"
    assert saes["attn"].cfg.reshape_activations == "hook_z" and saes["res"].cfg.reshape_activations == "none"


def test_bad_input_is_refused(gpt2, tmp_path):
    texts = random_prompts(5)
    with pytest.raises(IndexError, match=r"layer 7 is out of range: .* has layers 0..1"):
        ActivationStore(gpt2, texts, "resid_pre(7)")
    with pytest.raises(IndexError, match=r"head 9 is out of range"):
        ActivationStore(gpt2, texts, "z(1, 9)")
    with pytest.raises(ValueError, match="SAEs read one of the sites"):
        ActivationStore(gpt2, texts, "pattern(1)")
    with pytest.raises(ValueError, match=r"cannot read 'resid\(1\)' as a site"):
        ActivationStore(gpt2, texts, "resid(1)")
    with pytest.raises(ValueError, match="the corpus is empty"):
        ActivationStore(gpt2, [], "resid_pre(1)")
    with pytest.raises(ValueError, match="the corpus is empty"):
        ActivationStore(gpt2, torch.zeros(0, 4, dtype=torch.long), "resid_pre(1)")
    with pytest.raises(ValueError, match="empty texts"):
        ActivationStore(gpt2, ["w3 w4", "  "], "resid_pre(1)")
    with pytest.raises(ValueError, match="no tokens left"):
        ActivationStore(gpt2, ["qqq", "qqq qqq"], "resid_pre(1)")
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(ActivationStore(gpt2, texts, "resid_pre(1)", batch_size=4096, progress=False).batches())
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        ActivationStore(gpt2, texts, "resid_pre(1)", batch_size=0)
    with pytest.raises(ValueError, match="normalize_activations must be one of"):
        ActivationStore(gpt2, texts, "resid_pre(1)", normalize_activations="layer_norm")
    store = ActivationStore(gpt2, texts, ["resid_pre(1)", "z(1, 0)"], batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"SAE 'x' has d_in=32, but z\(1, 0\) gives activations of width 8 \(d_head\)"):
        train_saes_on_store({"x": make_sae("topk", d_in=32, d_sae=64, k=4)}, store, TrainConfig(total_training_steps=1),
                            sites={"x": "z(1, 0)"}, progress=False)
    with pytest.raises(ValueError, match=r"SAE 'y': .*not one of this store's sites"):
        train_saes_on_store({"y": make_sae("topk", d_in=32, d_sae=64, k=4)}, store, TrainConfig(total_training_steps=1),
                            sites={"y": "resid_post(1)"}, progress=False)


def test_sites_a_model_lacks(tmp_path):
    neox = random_model(tmp_path / "neox", "gpt_neox", n_layers=2, d_model=32, d_mlp=64)
    with pytest.raises(ValueError, match=r"resid_mid\(1\): .* runs attention and MLP in parallel"):
        ActivationStore(neox, random_prompts(3), "blocks.1.hook_resid_mid")
    store = ActivationStore(neox, random_prompts(3), ["resid_pre(1)", "z(1)"], progress=False)
    assert store.activations("z(1)").shape[1] == neox.cfg.n_heads * neox.cfg.d_head


def test_nan_activations_are_named_with_their_site(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = random_model_folder(tmp_path / "nan", "gpt2", n_layers=2, d_model=32, d_mlp=64)
    hf = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        hf.transformer.h[1].attn.c_attn.bias[70] = float("nan")  # a value bias of layer 1
    hf.save_pretrained(folder)
    model = load_model(folder, device="cpu", check=False)
    upstream = ActivationStore(model, random_prompts(6), "resid_pre(1)", prompts_per_forward=4, progress=False)
    assert torch.isfinite(upstream.activations()).all()
    store = ActivationStore(model, random_prompts(6), ["resid_pre(1)", "z(1)"], prompts_per_forward=4, progress=False)
    with pytest.raises(FloatingPointError, match=r"NaN or inf activations at z\(1\) \(prompts 0..3 of the corpus\)"):
        store.activations("z(1)")
