"""MAPS validation (analyses.maps.validation): static scores against the zoo models' known
circuits, dynamic scores against a Hugging Face reference, causal ablation, bundles, CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from analyses.maps import (CAUSAL_TEMPLATES, DEFAULT_TEMPLATES, RELATIONS, causal_validation, copying_relation,
                           dynamic_validation, head_ablation_effects, load_relations, maps_scores, rank_agreement,
                           template_tokens, top_heads)
from analyses.maps.validation import last_position_z
from circuits.tasks import ioi_task
from interp import load_model
from app.cli import main
from interp.models import Mean, Splice, sites
from interp.results import list_bundles, read_bundle
from circuits.tasks.ioi_data import NAMES
from interp.zoo.registry import CHECKPOINTS
from tests.helpers import random_model_folder

INDUCTION_TEMPLATES = ["t1 t2 {} t3 t4 t1 t2", "t10 t20 t30 {} t40 t50 t10 t20 t30", "t60 {} t61 t62 t60",
                       "t5 t6 t7 {} t8 t5 t6 t7"]   # the next token repeats the source: induction copies it


def card(name: str) -> dict:
    return json.loads((CHECKPOINTS / name / "card.json").read_text())


@pytest.fixture(scope="module")
def induction():
    return load_model("zoo/induction-2l", device="cpu")


@pytest.fixture(scope="module")
def ioi():
    return load_model("zoo/ioi-small", device="cpu")


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm", device="cpu")


RANDOM_SHAPES = {"gpt2": dict(n_layers=2, n_heads=4, d_model=32, seed=81),
                 "llama": dict(n_layers=2, n_heads=6, n_kv_heads=2, d_model=48, seed=82),
                 "gpt_neox": dict(n_layers=2, n_heads=4, d_model=32, seed=83)}


@pytest.fixture(scope="module", params=list(RANDOM_SHAPES))
def random_model(request, tmp_path_factory):
    """(hooked model, plain HF model): random GPT-2, Llama with grouped-query attention, GPT-NeoX."""
    folder = random_model_folder(tmp_path_factory.mktemp(request.param), request.param, vocab=60,
                                 **RANDOM_SHAPES[request.param])
    reference = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return load_model(folder, device="cpu"), reference


# ---------------------------------------------------------------------------- static scores vs known circuits


def test_induction_heads_have_the_top_copying_scores(induction):
    """The zoo's induction heads (all four layer-1 heads, near-equal induction scores) copy
    through their OV circuits: MAPS copying over the model's own vocabulary ranks them first."""
    info = card("induction-2l")
    rel = copying_relation(induction.tokenizer)
    assert rel.n_usable == 64 and rel.k == 1
    scores = maps_scores(induction, [rel], progress=False).scores[..., 0]          # [layer, head]
    print("copying scores (E):", scores.tolist())
    induction_heads = {tuple(h) for h in info["induction_heads"]}
    best = top_heads(scores, 1)
    assert best[0] in induction_heads
    assert set(top_heads(scores, 4)) == induction_heads                             # the 5th is L0H3 (prev-token)


def test_ioi_name_copying_vs_head_ablation(ioi):
    """Name copying from parameters alone against each head's ablation effect on IOI. The
    ablation side is checked against the card (L0H0 and L0H7, which attend to S2, matter most);
    the agreement is reported, not asserted: name copying is not what this model's IOI heads do."""
    rel = copying_relation(ioi.tokenizer, NAMES, name="name_copying")
    assert rel.n_usable == len(NAMES)
    static = maps_scores(ioi, [rel], progress=False).scores[..., 0]
    task = ioi_task(ioi, n=48, seed=0)
    effects = head_ablation_effects(ioi, task, ablation="zero")
    assert set(top_heads(effects, 2)) == {(0, 0), (0, 7)}
    assert effects[0, 0] > 3 and effects[0, 7] > 1                                  # logit-diff drops
    agreement = rank_agreement(static, effects, top=5)
    print("name copying static top:", top_heads(static, 5), "ablation top:", agreement["top_b"],
          "overlap:", agreement["top_overlap"], "spearman:", round(agreement["spearman"], 3))
    assert -1 <= agreement["spearman"] <= 1 and 0 <= agreement["top_overlap"] <= 5


def test_top_heads_and_rank_agreement_on_a_hand_case():
    a = torch.tensor([[3.0, 1.0, 1.0], [0.0, 2.0, 1.0]])
    b = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert top_heads(a, 2) == [(0, 0), (1, 1)]
    assert top_heads(a, 3) == [(0, 0), (1, 1)]                                      # three-way tie at the cut
    out = rank_agreement(a, b, top=2)
    assert out["top_b"] == [(1, 2), (1, 1)] and out["top_overlap"] == 1
    # Spearman with average ranks: a -> [6, 3, 3, 1, 5, 3], b -> [1, 2, 3, 4, 5, 6]
    ra, rb = torch.tensor([6, 3, 3, 1, 5, 3.0], dtype=torch.float64), torch.arange(1, 7.0, dtype=torch.float64)
    expected = torch.corrcoef(torch.stack([ra, rb]))[0, 1]
    assert abs(out["spearman"] - float(expected)) < 1e-9
    with pytest.raises(ValueError, match="same shape"):
        rank_agreement(a, b[:1])


# ---------------------------------------------------------------------------- templates and forced attention


def test_template_tokens_match_to_tokens(minilm, ioi):
    rel = load_relations(minilm.tokenizer, ["country_to_capital"])[0]
    batch = template_tokens(minilm, "This is a document about {}", rel.source_ids[:3])
    for row, (source, _) in zip(batch.tokens, rel.pairs[:3]):
        assert row.tolist() == minilm.to_tokens(f"This is a document about {source}")[0].tolist()
    assert minilm.to_str_tokens(batch.tokens[:1])[-1] == "[SEP]"
    assert batch.source_pos == batch.last_pos == batch.tokens.shape[1] - 2           # before [SEP]

    ids = torch.tensor(ioi.tokenizer.convert_tokens_to_ids(["Mary", "John"]))
    batch = template_tokens(ioi, "Then , {} gave it to", ids)
    assert batch.tokens[1].tolist() == ioi.to_tokens("Then , John gave it to")[0].tolist()
    assert (batch.source_pos, batch.last_pos) == (3, 6)                              # BOS Then , John gave it to
    with pytest.warns(UserWarning, match="unknown to zoo/ioi-small"):
        template_tokens(ioi, "This is a document about {}", ids)
    for bad in ("no placeholder", "{} and {}"):
        with pytest.raises(ValueError, match="exactly one"):
            template_tokens(ioi, bad, ids)


def test_forced_z_equals_one_hot_attention_row(random_model):
    """Without context, z[last, h] := v[source, kv(h)] in every layer; on causal models the
    attention pattern itself can be edited, so compare with a one-hot last row (a Splice on
    each layer's pattern) and read the pattern back."""
    model, _ = random_model
    sources = torch.tensor(model.tokenizer.convert_tokens_to_ids([f"w{i}" for i in range(5)]))
    batch = template_tokens(model, "w1 w2 {} w3 w4", sources)
    assert (batch.source_pos, batch.last_pos) == (3, 5)
    forced = last_position_z(model, batch, forced=True)                              # [layer, n, head, d_head]
    seen = _one_hot_run(model, batch)
    for layer in range(model.cfg.n_layers):
        row = seen.pattern(layer)[:, :, batch.last_pos]                              # [n, head, k]
        assert torch.equal(row, torch.nn.functional.one_hot(torch.tensor(batch.source_pos), 6).float().expand_as(row))
        torch.testing.assert_close(forced[layer], seen.z(layer)[:, batch.last_pos], atol=1e-5, rtol=0)
    natural = last_position_z(model, batch, forced=False)
    assert (natural - forced).abs().max() > 1e-1                                    # the forcing does something


def test_forced_z_when_the_source_is_the_last_token(random_model):
    """Source and query at one position: forcing layer 0 changes what layer 1's values read,
    which the layer-by-layer runs must see. Reference: the one-hot pattern as above."""
    model, _ = random_model
    sources = torch.tensor(model.tokenizer.convert_tokens_to_ids([f"w{i}" for i in range(5)]))
    batch = template_tokens(model, "w1 w2 {}", sources)
    assert batch.source_pos == batch.last_pos == 3
    forced = last_position_z(model, batch, forced=True)
    seen = _one_hot_run(model, batch)
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(forced[layer], seen.z(layer)[:, 3], atol=1e-5, rtol=0)


def _one_hot_run(model, batch):
    """A run in which every layer's last query row is one-hot on the source, with patterns and z kept."""
    def one_hot(pattern):
        pattern = pattern.clone()
        pattern[:, :, batch.last_pos] = 0.0
        pattern[:, :, batch.last_pos, batch.source_pos] = 1.0
        return pattern

    layers = range(model.cfg.n_layers)
    with torch.no_grad():
        return model.run(batch.tokens, interventions=[Splice(sites.pattern(l), fn=one_hot) for l in layers],
                         capture=[s for l in layers for s in (sites.pattern(l), sites.z(l))])[1]


def hf_reference_scores(hf, tokens: torch.Tensor, targets: torch.Tensor, k: int,
                        without_context: bool) -> torch.Tensor:
    """Dynamic scores `[layer, head]` from Hugging Face's own forward pass (GPT-2, NeoX, Llama), for
    templates ending with the source. Without context the source's residual stream holds
    nothing from other tokens, i.e. it is the model run on the source alone at its position."""
    n, n_pos = tokens.shape
    c = hf.config
    n_heads, d = c.num_attention_heads, c.hidden_size
    d_head = getattr(c, "head_dim", None) or d // n_heads
    group = n_heads // (getattr(c, "num_key_value_heads", None) or n_heads)
    with torch.no_grad():
        if without_context:
            out = hf(tokens[:, -1:], position_ids=torch.full((n, 1), n_pos - 1), output_hidden_states=True)
        else:
            out = hf(tokens, output_hidden_states=True, output_attentions=True)
        scores = []
        for layer in range(c.num_hidden_layers):
            if c.model_type == "gpt2":
                block = hf.transformer.h[layer]
                x = block.ln_1(out.hidden_states[layer])
                v = block.attn.c_attn(x)[..., 2 * d:]
                W_O = block.attn.c_proj.weight.reshape(n_heads, d_head, d)            # Conv1D: [in, out]
            elif c.model_type == "gpt_neox":  # q, k, v interleaved per head
                block = hf.gpt_neox.layers[layer]
                x = block.input_layernorm(out.hidden_states[layer])
                v = block.attention.query_key_value(x).reshape(n, x.shape[1], n_heads, 3, d_head)[..., 2, :]
                W_O = block.attention.dense.weight.T.reshape(n_heads, d_head, d)
            else:
                block = hf.model.layers[layer]
                x = block.input_layernorm(out.hidden_states[layer])
                v = block.self_attn.v_proj(x)
                W_O = block.self_attn.o_proj.weight.T.reshape(n_heads, d_head, d)
            v = v.reshape(n, x.shape[1], -1, d_head).repeat_interleave(group, dim=2)  # one per query head
            if without_context:
                z = v[:, -1]
            else:
                z = torch.einsum("nhk,nkhe->nhe", out.attentions[layer][:, :, -1], v)
            logits = torch.einsum("nhe,hed->nhd", z, W_O) @ hf.get_output_embeddings().weight.T
            scores.append((logits.topk(k).indices == targets[:, None, None]).any(-1).float().mean(0))
    return torch.stack(scores)


def test_dynamic_scores_match_hugging_face_reference(random_model):
    model, hf = random_model
    words = [f"w{i}" for i in range(60)]
    relations = {"shift": [(words[i], words[(7 * i + 3) % 60]) for i in range(60)]}
    rels = load_relations(model.tokenizer, relations) + [copying_relation(model.tokenizer, words)]
    templates = ["w1 w2 {}", "w5 w9 w13 w2 {}"]
    result = dynamic_validation(model, rels, templates=templates, batch_size=25, progress=False)
    assert result.relations == ["shift", "vocab_copying"] and result.k == [10, 1]
    for i, rel in enumerate(rels):
        for mode in (True, False):
            expected = sum(hf_reference_scores(hf, template_tokens(model, t, rel.source_ids).tokens, rel.target_ids,
                                               rel.k, without_context=mode) for t in templates) / len(templates)
            got = result.without_context if mode else result.with_context
            torch.testing.assert_close(got[..., i], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.static, maps_scores(model, rels, progress=False).scores)
    frame = result.to_frame()
    assert list(frame.columns) == ["relation", "r_without_context", "r_with_context", "n_pairs", "n_heads",
                                   "static_max", "without_context_max", "with_context_max"]
    assert frame.loc[1, "with_context_max"] == float(result.with_context[..., 1].max())
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    assert frame["n_heads"].tolist() == [n_heads, n_heads] and frame["n_pairs"].tolist() == [60, 60]
    x, y = result.static[..., 0].reshape(-1), result.without_context[..., 0].reshape(-1)
    assert abs(frame.loc[0, "r_without_context"] - float(torch.corrcoef(torch.stack([x, y]))[0, 1])) < 1e-6


# ---------------------------------------------------------------------------- real models


def test_dynamic_validation_on_minilm_and_ioi_small(minilm, ioi, tmp_path):
    result = dynamic_validation(minilm, ["country_to_capital", "name_copying"], templates=DEFAULT_TEMPLATES[:1],
                                max_pairs=40, progress=False)
    frame = result.to_frame()
    print(frame.to_string())
    assert frame["n_pairs"].tolist() == [40, 40] and frame["n_heads"].tolist() == [72, 72]
    assert result.unembedding == "tied W_E (encoder without LM head)"
    assert frame[["r_without_context", "r_with_context"]].notna().all().all()

    rel = copying_relation(ioi.tokenizer, NAMES, name="name_copying")
    ioi_result = dynamic_validation(ioi, [rel], templates=["Then , {}", "After the lunch , {}", "I see {}"],
                                    progress=False)
    print(ioi_result.to_frame().to_string())
    # layer 0 reads (LayerNorm of) the token embedding itself: static and dynamic agree closely there
    layer0 = ioi_result.heads_frame().query("layer == 0")
    assert (layer0["static"] - layer0["dynamic_without_context"]).abs().max() <= 0.05

    bundle = read_bundle(result.save(tmp_path))
    assert bundle.meta["analysis"] == "maps-validation" and bundle.meta["parameters"]["validation"] == "dynamic"
    assert bundle.table("correlations")["relation"].tolist() == ["country_to_capital", "name_copying"]
    assert len(bundle.table("heads")) == 2 * 72
    torch.testing.assert_close(bundle.tensor("with_context"), result.with_context)
    assert bundle.figure_names == []                                   # figures are drawn from the tables
    assert len(result.figure("scatter").data) == 4                                  # 2 relations x 2 panels


def test_causal_ablation_of_induction_heads(induction, tmp_path):
    rel = copying_relation(induction.tokenizer)
    result = causal_validation(induction, [rel], INDUCTION_TEMPLATES, m=4, n_random=10, progress=False)
    frame = result.to_frame()
    print(frame.to_string())
    assert list(frame.columns) == ["relation", "m", "top_accuracy", "random_accuracy_mean", "random_accuracy_std",
                                   "baseline_accuracy"]
    assert set(result.top_heads[0]) == {tuple(h) for h in card("induction-2l")["induction_heads"]}
    assert frame["baseline_accuracy"].iloc[0] > 0.95
    # one induction head is redundant (m=1 changes nothing); all four ablated, copying is gone
    # (random draws that hit the previous-token head L0H3 also break induction, hence the wide spread)
    last = frame.iloc[-1]
    assert last["top_accuracy"] < 0.1 and last["random_accuracy_mean"] > last["top_accuracy"] + 0.3

    bundle = read_bundle(result.save(tmp_path))
    assert bundle.meta["parameters"]["validation"] == "causal" and bundle.meta["parameters"]["ablation"] == "zero"
    assert bundle.table("top_heads")["rank"].tolist() == [1, 2, 3, 4]
    assert bundle.tensor("random").shape == (1, 10, 4)


def test_mean_ablation_of_one_head_equals_hand_mean(induction):
    """Mean ablation replaces a head's z by its mean over the prompts: ablating every head of
    layer 1 that way makes every prompt's prediction depend on layer 0 only."""
    rel = copying_relation(induction.tokenizer)
    result = causal_validation(induction, [rel], INDUCTION_TEMPLATES[:1], m=4, n_random=1, ablation="mean",
                               progress=False)
    tokens = template_tokens(induction, INDUCTION_TEMPLATES[0], rel.source_ids).tokens
    _, cache = induction.run_with_cache(tokens, sites=[sites.z(1)])
    mean = cache.z(1).mean(0)                                                        # [pos, head, d_head]
    with torch.no_grad():
        logits = induction.run(tokens, interventions=[Mean(sites.z(1), value=mean)])[0][:, -1]
    expected = (logits.argmax(-1) == rel.target_ids).float().mean()
    assert abs(result.top[0, 3] - expected) < 1e-6


# ---------------------------------------------------------------------------- bad input and CLI


def test_bad_input(induction, minilm, ioi):
    with pytest.raises(ValueError, match="known relations are: adj_antonym, .*year_to_following"):
        dynamic_validation(ioi, ["name_copying", "capital_to_pizza"], progress=False)
    with pytest.warns(UserWarning, match=r"'name_copying' skipped: only 28 of \d+ pairs"):
        with pytest.raises(ValueError, match="no relation has at least 30"):
            dynamic_validation(ioi, ["name_copying"], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dynamic_validation(ioi, ["name_copying"], templates=["Then , {}"], min_pairs=20, progress=False)
    assert result.n_pairs == [28]
    rel = copying_relation(induction.tokenizer)
    with pytest.raises(ValueError, match=r"causal language model .* minilm \(BertForMaskedLM\) is an encoder"):
        causal_validation(minilm, ["general_copying"], ["{}"], progress=False)
    with pytest.raises(ValueError, match=r"ablation \(--ablation\) must be one of"):
        causal_validation(induction, [rel], INDUCTION_TEMPLATES, ablation="resample", progress=False)
    with pytest.raises(ValueError, match="m must be between 1 and the number of heads \\(8\\)"):
        causal_validation(induction, [rel], INDUCTION_TEMPLATES, m=9, progress=False)
    with pytest.raises(ValueError, match="no template for relation 'vocab_copying'"):
        causal_validation(induction, [rel], {"other": ["{}"]}, progress=False)


def test_cli_validate_and_causal(tmp_path, capsys):
    assert main(["maps-validation", "zoo/induction-2l", "--vocab-copying", "--templates", "t5 t9 {}", "--quiet",
                 "--out", str(tmp_path)]) == 0
    assert "r_without_context" in capsys.readouterr().out
    assert main(["maps-validation", "zoo/induction-2l", "--vocab-copying", "--validation", "causal", "--templates",
                 INDUCTION_TEMPLATES[0], "--m", "2", "--n-random", "2", "--quiet", "--out", str(tmp_path)]) == 0
    assert "top_accuracy" in capsys.readouterr().out
    kinds = sorted((e.bundle.meta["analysis"], e.bundle.meta["parameters"].get("validation"))
                   for e in list_bundles(tmp_path))
    assert kinds == [("maps-validation", "causal"), ("maps-validation", "dynamic")]
    assert main(["maps-validation", "zoo/induction-2l", "--vocab-copying", "--validation", "causal", "--m", "2",
                 "--out", str(tmp_path)]) == 2
    assert "no template for relation 'vocab_copying'" in capsys.readouterr().err


def test_built_in_causal_templates_cover_every_relation():
    assert set(CAUSAL_TEMPLATES) == set(RELATIONS)
    for name, templates in CAUSAL_TEMPLATES.items():
        assert templates and all(t.count("{}") == 1 and not t.endswith(" ") for t in templates), name
