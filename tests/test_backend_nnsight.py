"""The nnsight backend against the lens backend and against independent references.

* Exactness: every site captured and every intervention kind at every site give the lens
  backend's numbers (fp32, within 1e-5 of each tensor's scale) on random GPT-2, GPT-NeoX,
  Llama, Qwen2, Gemma2 and Mistral models (grouped-query where the family has it), the zoo
  models and minilm (BERT).
* Where the lens backend cannot be the reference on BERT (its bridge ignores pattern edits,
  returns the post-softmax pattern as `scores`, and adds head_out changes after the
  attention block's LayerNorm), the references are Hugging Face's own attention weights, a
  z patch on the lens backend, and a plain torch hook on the Hugging Face model.
* Gradients of a Scale gate equal the lens backend's.
* device_map: Hugging Face's module placement, tried on CPU (this machine has no GPU).
* Remote (NDIF): nnsight's own dry run (remote="local"), and a replay of the exact request
  nnsight's RemoteBackend builds, deserialized with headlab's modules hidden and run the way
  NDIF's model actor runs it, against a real model standing in for the server.
"""

import json
import subprocess
import sys
import warnings
from dataclasses import replace

import pytest
import torch
from transformers import AutoModel

from interp import load_model
from interp.models import Add, Mean, Patch, Scale, Splice, Zero, sites
from interp.models import loading
from interp.zoo.registry import get_embedded
from interp.models.backends.nnsight import DEFAULT_SESSION_BYTES, WeightsUnavailable
from interp.models.sites import Site
from tests.helpers import random_model_folder

RANDOM = {"gpt2": dict(n_layers=2, n_heads=4, d_model=32, seed=21),
          "gpt_neox": dict(n_layers=2, n_heads=4, d_model=32, seed=22),
          "llama": dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=23),
          "qwen2": dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=24),
          "gemma2": dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, d_head=8, seed=25),
          "mistral": dict(n_layers=2, n_heads=4, n_kv_heads=1, d_model=32, seed=26)}
MODELS = (*RANDOM, "zoo/ioi-small", "zoo/induction-2l", "minilm")
EDITABLE = ("embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_in", "mlp_out", "q", "k", "v", "z",
            "scores", "pattern", "head_out", "logits")
PER_HEAD = ("q", "k", "v", "z", "scores", "pattern", "head_out")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Hugging Face folders by model name (random ones saved on first use)."""
    made = {}

    def folder(name):
        if name not in made:
            made[name] = (random_model_folder(tmp_path_factory.mktemp(name), name, **RANDOM[name])
                          if name in RANDOM else name)
        return made[name]
    return folder


@pytest.fixture(scope="module")
def pairs(folders):
    """(nnsight model, lens model) by name, loaded once."""
    loaded = {}

    def pair(name):
        if name not in loaded:
            source = folders(name)
            loaded[name] = (load_model(source, device="cpu", backend="nnsight"), load_model(source, device="cpu"))
        return loaded[name]
    return pair


@pytest.fixture(params=MODELS)
def pair(request, pairs):
    return pairs(request.param)


def _inputs(model, seed=0):
    """Two prompts: random token ids for causal models; texts of different lengths (so with
    padding and a mask) for encoders."""
    if model.cfg.is_causal:
        tokens = torch.randint(3, model.cfg.d_vocab, (2, 9), generator=torch.Generator().manual_seed(seed))
        return tokens, None
    tokens, mask = model.tokenize(["the cat sat on the warm mat today", "a small dog"])
    if seed:  # other words, same shape and padding
        ordinary = mask & (tokens != model.tokenizer.cls_token_id) & (tokens != model.tokenizer.sep_token_id)
        words = torch.randint(2000, 20000, tokens.shape, generator=torch.Generator().manual_seed(seed))
        tokens = torch.where(ordinary, words, tokens)
    return tokens, mask.long()


def assert_same(got, want, what, rel=1e-5):
    """Equal within `rel` of `want`'s scale; masked attention entries (the dtype's minimum)
    equal exactly."""
    assert got.shape == want.shape, f"{what}: shapes {tuple(got.shape)} vs {tuple(want.shape)}"
    finite = want.abs() < 1e30
    assert torch.equal(got.abs() < 1e30, finite), f"{what}: masked entries differ"
    assert torch.equal(got[~finite], want[~finite]), f"{what}: masked values differ"
    scale = max(1.0, float(want[finite].abs().max()))
    diff = float((got - want)[finite].abs().max())
    assert diff <= rel * scale, f"{what}: differs by {diff:.2e} (scale {scale:.3g})"


def _all_sites(model):
    extra = [Site(kind, layer) for layer in range(model.cfg.n_layers) for kind in ("head_out", "q_in", "k_in", "v_in")]
    return model.all_sites() + extra


# ------------------------------------------------------------------ exactness against lens

def test_importing_the_model_layer_does_not_import_nnsight():
    code = "import sys, interp, interp.models, interp.models.backends; assert 'nnsight' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_site_captured_equals_lens(pair):
    nn_model, lens = pair
    tokens, mask = _inputs(lens)
    with torch.no_grad():
        got_out, got = nn_model.run_with_cache(tokens, sites=_all_sites(nn_model), attention_mask=mask)
        want_out, want = lens.run_with_cache(tokens, sites=_all_sites(lens), attention_mask=mask)
    assert_same(got_out, want_out, "output")
    # the lens backend cannot read an encoder's pre-softmax scores (its bridge holds the pattern there)
    assert set(want) == set(got) - ({Site("scores", l) for l in range(lens.cfg.n_layers)} if not lens.cfg.is_causal else set())
    for site in want:
        assert_same(got[site], want[site], str(site))
    for layer in range(lens.cfg.n_layers):  # and the pattern is the softmax of the scores
        assert_same(torch.softmax(got[sites.scores(layer)], -1), got[sites.pattern(layer)], f"softmax({layer})")


@pytest.mark.parametrize("kind", EDITABLE)
def test_every_intervention_kind_equals_lens(pair, kind):
    """Add, Scale, Zero, Mean, Patch and Splice, in that order, at one site (one head for
    per-head sites, different positions for each): the output and the edited site equal
    the lens backend's."""
    nn_model, lens = pair
    cfg = lens.cfg
    if kind == "resid_mid" and cfg.parallel:
        pytest.skip("parallel blocks have no resid_mid")
    if not cfg.is_causal and kind in ("scores", "pattern", "head_out"):
        pytest.skip("the lens bridge cannot edit these on BERT: see the BERT tests below")
    layer = None if kind in ("embed", "logits") else 1
    head = (cfg.n_kv_heads - 1 if kind in ("k", "v") else 1) if kind in PER_HEAD else None
    site = Site(kind, layer, head)
    tokens, mask = _inputs(lens)
    other, _ = _inputs(lens, seed=1)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        clean, cache = lens.run_with_cache(tokens, sites=[site.all_heads], attention_mask=mask)
        _, source = lens.run_with_cache(other, sites=[site.all_heads], attention_mask=mask)
        width = cache[site].shape[-1]
        edits = [Add(site, positions=1, value=torch.randn(width, generator=gen)),
                 Scale(site, positions=[0, 2], factor=1.5), Zero(site, positions=3),
                 Mean(site, positions=4, value=torch.randn(width, generator=gen)),
                 Patch(site, positions=slice(5, None), source=source), Splice(site.all_heads, fn=torch.tanh)]
        got_out, got = nn_model.run(tokens, interventions=edits, capture=[site.all_heads], attention_mask=mask)
        want_out, want = lens.run(tokens, interventions=edits, capture=[site.all_heads], attention_mask=mask)
    assert float((want_out - clean).abs().max()) > 1e-3, "the edits matter"
    assert_same(got_out, want_out, f"output after editing {site}")
    assert_same(got[site.all_heads], want[site.all_heads], f"{site} after its edits")


def test_gate_gradients_equal_lens(pair):
    """Head gates (Scale by a tensor that requires grad) carry the same gradients back."""
    nn_model, lens = pair
    tokens, mask = _inputs(lens)
    grads = []
    for model in (nn_model, lens):
        heads = torch.ones(model.cfg.n_heads, 1, requires_grad=True)
        mlp = torch.ones((), requires_grad=True)
        out, _ = model.run(tokens, interventions=[Scale(sites.z(1), factor=heads), Scale(sites.mlp_out(0), factor=mlp)],
                           attention_mask=mask)
        out.float().logsumexp(-1).sum().backward()
        grads.append(torch.cat([heads.grad.flatten(), mlp.grad.flatten()]))
    assert float(grads[1].abs().min()) > 1e-6, "every gate has a gradient"
    # 1e-4: the lens bridge's own GPT-2 forward is ~5e-6 off Hugging Face's, and backward adds to it
    assert_same(grads[0], grads[1], "gate gradients", rel=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_left_and_right_padding_equal_lens(pairs, name):
    """Positions are counted as the lens backend counts them (a left-padded row from its
    first real token), at every position, padding included."""
    nn_model, lens = pairs(name)
    tokens, _ = _inputs(lens)
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0  # left padding
    mask[1, -2:] = 0  # right padding
    with torch.no_grad():
        got_out, got = nn_model.run_with_cache(tokens, attention_mask=mask)
        want_out, want = lens.run_with_cache(tokens, attention_mask=mask)
    assert_same(got_out, want_out, "output")
    for site in want:
        assert_same(got[site], want[site], str(site))


def _assert_same_but_head_out_first(got, want, head_edit):
    """All sites equal, except that the nnsight backend adds a head_out edit to attn_out and
    resid_mid of its layer (it runs before them, as in the model), while the lens backend
    captures those two first (one hook point, its hooks registered in that order)."""
    layer, position, delta = head_edit.site.layer, head_edit.positions, head_edit.value
    for site in want:
        expected = want[site]
        if site in (sites.attn_out(layer), sites.resid_mid(layer)):
            expected = expected.clone()
            expected[:, position] += delta
        assert_same(got[site], expected, str(site))


def test_head_out_edits_come_before_attn_out(pairs):
    nn_model, lens = pairs("llama")
    tokens, _ = _inputs(lens)
    edit = Add(sites.head_out(1, 2), positions=3, value=torch.randn(lens.cfg.d_model))
    with torch.no_grad():
        got_out, got = nn_model.run(tokens, interventions=[edit], capture=lens.all_sites())
        want_out, want = lens.run(tokens, interventions=[edit], capture=lens.all_sites())
    assert_same(got_out, want_out, "output")
    _assert_same_but_head_out_first(got, want, edit)


# ------------------------------------------------------------------ BERT, where lens is no reference

def test_bert_pattern_is_hugging_faces_attention(pairs):
    nn_model, _ = pairs("minilm")
    tokens, mask = _inputs(nn_model)
    hf = AutoModel.from_pretrained(get_embedded("minilm").folder, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = hf(tokens, attention_mask=mask, output_attentions=True).attentions
        _, cache = nn_model.run_with_cache(tokens, attention_mask=mask)
    for layer, want in enumerate(attentions):
        assert_same(cache[sites.pattern(layer)], want, f"pattern({layer})")
        assert_same(torch.softmax(cache[sites.scores(layer)], -1), want, f"softmax(scores({layer}))")


def test_bert_pattern_edit_equals_a_z_patch_on_lens(pairs):
    """Editing one attention row changes z as that row times the values would."""
    nn_model, lens = pairs("minilm")
    tokens, mask = _inputs(lens)
    with torch.no_grad():
        _, cache = lens.run_with_cache(tokens, sites=[sites.pattern(1), sites.v(1), sites.z(1)], attention_mask=mask)
        row = torch.rand(tokens.shape[1], generator=torch.Generator().manual_seed(4)) * mask[:, None, :].float()
        row = row / row.sum(-1, keepdim=True)  # [batch, 1, key]: a distribution over the real keys
        z = cache[sites.z(1)].clone()
        z[:, 3, 2] = torch.einsum("bk,bkd->bd", row[:, 0], cache[sites.v(1)][:, :, 2])
        got, _ = nn_model.run(tokens, interventions=[Mean(sites.pattern(1, 2), positions=3, value=row[:, 0])],
                              attention_mask=mask)
        want, _ = lens.run(tokens, interventions=[Patch(sites.z(1), source=z)], attention_mask=mask)
        clean = lens(tokens, attention_mask=mask)
    assert float((want - clean).abs().max()) > 1e-3
    assert_same(got, want, "output")


def test_bert_head_out_edits_against_z_edits_and_a_torch_hook(pairs):
    """head_out = z W_O per head, changed before the attention block's residual add and
    LayerNorm: zeroing or scaling it equals doing so to z (on lens), and adding a vector
    equals adding it to the output projection in plain Hugging Face."""
    nn_model, lens = pairs("minilm")
    tokens, mask = _inputs(lens)
    delta = torch.randn(lens.cfg.d_model, generator=torch.Generator().manual_seed(5))
    hf = AutoModel.from_pretrained(get_embedded("minilm").folder, attn_implementation="eager").eval()

    def add_delta(module, args, out):
        out = out.clone()
        out[:, 1] += delta
        return out
    handle = hf.encoder.layer[1].attention.output.dense.register_forward_hook(add_delta)
    with torch.no_grad():
        hooked = hf(tokens, attention_mask=mask).last_hidden_state
        handle.remove()
        pairs_of_runs = [([Zero(sites.head_out(1, 2))], [Zero(sites.z(1, 2))]),
                         ([Scale(sites.head_out(1, 2), positions=[1, 2], factor=0.3)],
                          [Scale(sites.z(1, 2), positions=[1, 2], factor=0.3)])]
        for on_head_out, on_z in pairs_of_runs:
            assert_same(nn_model.run(tokens, interventions=on_head_out, attention_mask=mask)[0],
                        lens.run(tokens, interventions=on_z, attention_mask=mask)[0], str(on_head_out[0]))
        added = nn_model.run(tokens, interventions=[Add(sites.head_out(1, 2), positions=1, value=delta)],
                             attention_mask=mask)[0]
        assert float((hooked - nn_model(tokens, attention_mask=mask)).abs().max()) > 1e-3
    assert_same(added, hooked, "Add on head_out vs a hook on attention.output.dense")


# ------------------------------------------------------------------ device_map

@pytest.mark.parametrize("device_map", ["cpu", "offloaded"])
def test_device_map_keeps_the_numbers(pairs, folders, device_map):
    """Hugging Face's module placement. This machine has no GPU, so "offloaded" puts layer 1
    on disk: accelerate then hooks every module to move its weights and inputs where they
    run, the machinery that moves activations between GPUs under device_map="auto"."""
    placement = device_map if device_map == "cpu" else {
        "model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
        "model.rotary_emb": "cpu", "lm_head": "cpu"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(folders("llama"), backend="nnsight", device_map=placement)
    _, lens = pairs("llama")
    hf = model._backend.hf_model
    assert model.device == torch.device("cpu")
    tokens, _ = _inputs(lens)
    edit = [Zero(sites.z(1, 1)), Add(sites.resid_mid(0), positions=2, value=torch.ones(lens.cfg.d_model)),
            Scale(sites.pattern(1, 2), positions=4, factor=0.5)]
    capture = [s for s in _all_sites(lens) if device_map == "cpu" or s != sites.head_out(1)]
    with torch.no_grad():
        got_out, got = model.run(tokens, interventions=edit, capture=capture)
        want_out, want = lens.run(tokens, interventions=edit, capture=capture)
    assert_same(got_out, want_out, "output")
    for site in want:
        assert_same(got[site], want[site], str(site))
    if device_map == "offloaded":
        assert hf.model.layers[1].__dict__.get("_hf_hook") is not None, "accelerate's hook moves layer 1"
        assert hf.model.layers[1].self_attn.q_proj.weight.is_meta, "only a placeholder is held"
        with pytest.raises(WeightsUnavailable, match="device_map offloaded .* weights .*model.layers.1"):
            model.W_Q(1)
        with pytest.raises(ValueError, match="head_out is z @ W_O, and device_map offloaded layer 1's W_O"):
            model.run(tokens, capture=[sites.head_out(1)])
    else:
        assert_same(model.W_Q(1), lens.W_Q(1), "W_Q")


# ------------------------------------------------------------------ bad input

def test_bad_backend_arguments_are_refused(folders):
    folder = folders("gpt2")
    with pytest.raises(ValueError, match="unknown backend 'tl'; backends: lens, nnsight"):
        load_model(folder, backend="tl")
    with pytest.raises(ValueError, match="device_map spreads a model over several devices, which the lens backend"):
        load_model(folder, device_map="auto")
    with pytest.raises(ValueError, match="remote execution \\(NDIF\\) runs through nnsight"):
        load_model(folder, remote=True)
    with pytest.raises(ValueError, match="pass either device .* or device_map"):
        load_model(folder, backend="nnsight", device="cpu", device_map="cpu")
    with pytest.raises(ValueError, match="remote must be False, True \\(NDIF\\), 'local'"):
        load_model(folder, backend="nnsight", remote="ndif")
    with pytest.raises(ValueError, match="is a local model, whose weights NDIF does not have"):
        load_model(folder, backend="nnsight", remote=True)
    with pytest.raises(ValueError, match="device and device_map do not apply"):
        load_model("some/model", backend="nnsight", remote=True, device="cpu")


def test_remote_without_an_api_key_says_how_to_set_one(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    with pytest.raises(ValueError, match="needs an API key: set the environment variable NDIF_API_KEY"):
        load_model("EleutherAI/pythia-70m", backend="nnsight", remote=True)
    # With a key but no network, the hub look-up fails at once (HF_HUB_OFFLINE), naming why.
    monkeypatch.setattr(CONFIG.API, "APIKEY", "not-a-real-key")
    with pytest.raises(ValueError, match="hub names need internet"):
        load_model("EleutherAI/pythia-70m", backend="nnsight", remote=True)


def test_a_site_the_family_table_lacks_is_refused_with_the_reason(pairs):
    nn_model, _ = pairs("gpt2")
    backend = nn_model._backend
    full = backend.paths
    backend.paths = replace(full, mlp_in=None)
    try:
        reason = backend.supports(sites.mlp_in(0), intervene=False)
        assert "module table for gpt2" in reason and "no mlp_in path" in reason
        with pytest.raises(ValueError, match="mlp_in\\(0\\): the nnsight backend's module table for gpt2"):
            nn_model.run(_inputs(nn_model)[0], capture=[sites.mlp_in(0)])
    finally:
        backend.paths = full
    with pytest.raises(ValueError, match="q_in edits one head's input alone, which needs split inputs"):
        nn_model.run(_inputs(nn_model)[0], interventions=[Zero(sites.q_in(0, 1))])


# ------------------------------------------------------------------ remote (NDIF), offline

def test_remote_dry_run_equals_lens(pairs, folders):
    """remote="local": each session is serialized as for NDIF, deserialized, and run here."""
    model = load_model(folders("llama"), device="cpu", backend="nnsight", remote="local")
    _, lens = pairs("llama")
    tokens, _ = _inputs(lens)
    edits = [Add(sites.z(1, 1), positions=2, value=torch.randn(lens.cfg.d_head)),
             Splice(sites.mlp_out(0), fn=torch.tanh), Scale(sites.pattern(0, 3), positions=4, factor=0.5)]
    with torch.no_grad():
        got_out, got = model.run(tokens, interventions=edits, capture=_all_sites(lens))
        want_out, want = lens.run(tokens, interventions=edits, capture=_all_sites(lens))
    assert_same(got_out, want_out, "output")
    for site in want:
        assert_same(got[site], want[site], str(site))


HIDDEN = ("interp", "tests", "analyses", "circuits", "app", "transformer_lens")


def ndif_replay(server_model):
    """nnsight's RemoteBackend with the network replaced by a replay: each request is
    serialized exactly as for NDIF (`RemoteBackend._serialize`, compressed as configured),
    recorded, deserialized with headlab's packages unimportable (the server does not have
    them), and run the way NDIF's model actor runs a request: the restored tracer executes
    against the server's model and only the `.save()`d values are sent back."""
    from nnsight.intervention.backends.remote import RemoteBackend

    class Replay(RemoteBackend):
        def request(self, request, tracer):
            blob = self._serialize(tracer)
            self.requests.append((json.loads(request.metadata()), blob))
            return self._run_like_ndif(self._deserialize(blob))

        def _deserialize(self, blob):
            import linecache

            from nnsight.schema.request import RequestModel

            cached = dict(linecache.cache)  # deserializing registers the block's source under our file name
            hidden = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] in HIDDEN}
            blocker = _Unimportable(HIDDEN)
            sys.meta_path.insert(0, blocker)
            try:
                return RequestModel.deserialize(blob, server_model._remoteable_persistent_objects(),
                                                compress=self.compress)
            finally:
                sys.meta_path.remove(blocker)
                sys.modules.update(hidden)
                linecache.cache.clear()
                linecache.cache.update(cached)

        def _run_like_ndif(self, tracer):
            from nnsight.tracing.tracer import _saves

            tracer.execute(tracer.info.code)
            saves = {k: v for k, v in tracer.info.frame.f_locals.items() if id(v) in _saves()}
            self.returned.append(sorted(saves))
            return saves

    key = 'nnsight.modeling.transformers.TransformersModel:{"repo_id": "headlab/replay", "task": "text-generation"}'
    replay = Replay(key, host="https://ndif.invalid", env={"attn_implementation": "eager"})
    replay.requests, replay.returned = [], []
    replay.display.enabled = False
    return replay


class _Unimportable:
    """A meta-path finder that makes some top-level packages unimportable."""

    def __init__(self, roots):
        self.roots = roots

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.roots:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden, as on the NDIF server)")
        return None


@pytest.fixture(scope="module")
def ndif(folders):
    """(client, replay): a model built as load_model(..., remote=True) builds it (weightless
    meta copy here), whose requests go to a replayed server holding the real weights."""
    from nnsight import TransformersModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = folders("llama")
    server_hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    server = TransformersModel(server_hf, task="text-generation", tokenizer=AutoTokenizer.from_pretrained(folder))
    replay = ndif_replay(server)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = loading._load_remote(str(folder), torch.float32, replay, check=False)
    return client, replay


def test_remote_model_refuses_weight_views_and_keeps_tokens_here(ndif):
    client, replay = ndif
    assert next(client._backend.model._module.parameters()).is_meta, "no weights here"
    assert client._backend.model._remoteable_get_env() == {"attn_implementation": "eager"}, "what NDIF is asked for"
    assert client.device == torch.device("cpu")
    for view in (lambda: client.W_Q(0), lambda: client.W_E(), lambda: client.OV(1, 0), lambda: client.functional()):
        with pytest.raises(WeightsUnavailable, match="runs on NDIF \\(remote=True\\): its weights stay on the server"):
            view()
    with pytest.raises(WeightsUnavailable, match="weightless meta copy"):
        client.hf_copy()


def test_remote_requests_replayed_like_ndif_equal_lens(ndif, pairs):
    client, replay = ndif
    _, lens = pairs("llama")
    tokens, _ = _inputs(lens)
    gen = torch.Generator().manual_seed(6)
    edits = [Add(sites.head_out(1, 2), positions=3, value=torch.randn(lens.cfg.d_model, generator=gen)),
             Scale(sites.pattern(0, 1), positions=5, factor=0.25), Zero(sites.k(1, 0)),
             Mean(sites.resid_mid(1), positions=2, value=torch.randn(lens.cfg.d_model, generator=gen)),
             Splice(sites.logits(), fn=torch.tanh)]
    before = len(replay.requests)
    with torch.no_grad():
        got_out, got = client.run(tokens, interventions=edits, capture=_all_sites(lens))
        want_out, want = lens.run(tokens, interventions=edits, capture=_all_sites(lens))
    assert_same(got_out, want_out, "output")
    _assert_same_but_head_out_first(got, want, edits[0])
    assert len(replay.requests) == before + 1, "one request for one run"
    envelope, blob = replay.requests[-1]
    assert envelope["model_key"].startswith("nnsight.modeling.transformers.TransformersModel:")
    assert envelope["env"] == {"attn_implementation": "eager"}
    if envelope["compress"]:
        assert blob[:4] == b"\x28\xb5\x2f\xfd", "a zstd frame"
    assert replay.returned[-1] == ["outputs"], "only the saved outputs come back"


def test_sessions_pack_runs_under_the_byte_budget(ndif, pairs):
    """run_many sends several forward passes per request, as many as `session_bytes` allows,
    and returns what separate runs return."""
    client, replay = ndif
    _, lens = pairs("llama")
    backend = client._backend
    runs = []
    for seed in range(5):
        tokens, _ = _inputs(lens, seed=seed + 10)
        runs.append((tokens, None, [Zero(sites.z(0, seed % 4))], [sites.resid_post(0), sites.pattern(1)]))
    one = backend._prepare(*runs[0])[2]
    assert backend.session_bytes == DEFAULT_SESSION_BYTES and one < DEFAULT_SESSION_BYTES
    for budget, requests in [(DEFAULT_SESSION_BYTES, 1), (2 * one, 3), (one - 1, 5)]:
        backend.session_bytes = budget
        before = len(replay.requests)
        with torch.no_grad():
            results = backend.run_many(runs)
        assert len(replay.requests) - before == requests
        for (tokens, _, edits, capture), (out, store) in zip(runs, results):
            with torch.no_grad():
                want_out, want = lens.run(tokens, interventions=edits, capture=capture)
            assert_same(out, want_out, "output")
            for site in capture:
                assert_same(store[site], want[site], str(site))
    backend.session_bytes = DEFAULT_SESSION_BYTES


def test_remote_runs_refuse_gradients(ndif):
    client, _ = ndif
    gate = torch.ones((), requires_grad=True)
    with pytest.raises(ValueError, match="gradients do not come back from a remote run"):
        client.run(_inputs(client)[0], interventions=[Scale(sites.z(0, 1), factor=gate)])
