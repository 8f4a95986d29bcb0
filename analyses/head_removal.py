"""Real head pruning: a smaller Hugging Face model without the pruned heads' weights.

Zero-ablating a head's z (`interp.models.ablation`) shows what the model does without it;
removing the head's weights makes the model smaller and faster while computing the same
function. transformers 5 dropped `prune_heads`, so the surgery is done here:

    GPT-2     attn.c_attn  Conv1D [d_model, 3 * heads * d_head]     keep the head's q, k, v columns
              attn.c_proj  Conv1D [heads * d_head, d_model]         keep its rows
    BERT      attention.self.query/key/value  [heads * d_head, d_model]   keep its rows
              attention.output.dense          [d_model, heads * d_head]   keep its columns
    GPT-NeoX  attention.query_key_value  [heads * 3 * d_head, d_model]  (q, k, v interleaved per head)
              attention.dense            [d_model, heads * d_head]
    Llama, Mistral, Qwen2, Gemma2:
              self_attn.q_proj  [heads * d_head, d_model]     keep the query head's rows
              self_attn.o_proj  [d_model, heads * d_head]     keep its columns
              self_attn.k_proj, v_proj  [kv_heads * d_head, d_model]
                                a key/value head goes only with every query head that reads it

Grouped-query attention: Hugging Face repeats each key/value head `num_key_value_groups`
times, one number per attention module, so a layer can only keep key/value heads that each
keep the same number of query heads (e.g. 8 query heads over 2 key/value heads: removing
query heads 0-3 drops key/value head 0; removing heads 1 and 5 leaves groups of 3; removing
head 1 alone would leave groups of 3 and 4, which is refused with an error naming them).

Attention modules in transformers cannot run with zero heads, so a layer that loses every head
keeps one head (and its key/value head) whose output weights are zero: it adds nothing,
exactly as the ablation does. Layers may end with different numbers of heads.

The pruned model saves as an ordinary Hugging Face folder (config.json, safetensors, tokenizer)
recording the removed query heads in `config.pruned_heads` ({layer: [heads]}) and the heads
each layer computes in `config.heads_per_layer` and `config.key_value_heads_per_layer`
(`num_attention_heads` / `num_key_value_heads` keep the unpruned width). Plain
`from_pretrained` builds every layer at full width and cannot read it; `load_pruned` can:

    pruned = remove_heads(model, [(0, 3), (2, 1)])
    save_pruned(pruned, model.tokenizer, "pruned-folder")
    hf_model, tokenizer = load_pruned("pruned-folder")
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Iterable

import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from interp.models import HookedModel
from interp.models.ablation import check_heads

Heads = Iterable[tuple[int, int]]
LLAMA_LIKE = ("llama", "mistral", "qwen2", "gemma2")
FAMILIES = ("gpt2", "bert", "gpt_neox", *LLAMA_LIKE)


def remove_heads(model: HookedModel, heads: Heads) -> PreTrainedModel:
    """A new Hugging Face model (CPU, eval mode, the model's dtype) equal to `model` with the
    query heads `heads` [(layer, head), ...] removed, and with them every key/value head that
    no remaining query head reads.

    Its outputs equal those of `model` with the heads zero-ablated
    (`interp.models.ablation.ablation`). `model` itself is left unchanged. Raises ValueError
    for a family without surgery here, or for a grouped-query layer whose remaining query
    heads would not split evenly over its remaining key/value heads (see the module docstring).
    """
    pruned = check_heads(model.cfg, heads)
    _family(model.cfg.family)
    hf_model = model.hf_copy()
    _remove_in_place(hf_model, set(pruned))
    return hf_model


def save_pruned(hf_model: PreTrainedModel, tokenizer, folder: str | os.PathLike) -> Path:
    """Save a model from `remove_heads` with its tokenizer as a Hugging Face folder. The folder
    must not exist yet, and appears only once complete (written beside it, then renamed)."""
    folder = Path(folder)
    if os.path.lexists(folder):
        raise FileExistsError(f"{folder} exists already; save_pruned never overwrites a folder")
    if not getattr(hf_model.config, "pruned_heads", None):
        raise ValueError("this model has no pruned heads recorded; save it with save_pretrained")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp"
    try:
        # Keys as the model names them (no conversion back to a legacy layout: load_pruned reads them as they are).
        hf_model.save_pretrained(tmp, save_original_format=False)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def load_pruned(folder: str | os.PathLike) -> tuple[PreTrainedModel, object]:
    """Load a folder written by `save_pruned`: `(hf_model, tokenizer)`, eval mode, on CPU.

    The model is built at full width from its config, cut to the recorded heads (the head
    counts this gives must equal the recorded ones), and only then given the saved weights,
    all of which must be present and of the right shape.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a folder written by save_pruned (it has no config.json)")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    pruned = _recorded_heads(config, folder)
    recorded_counts = (getattr(config, "heads_per_layer", None), getattr(config, "key_value_heads_per_layer", None))
    architecture = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(transformers, architecture or "", None)
    if model_class is None:
        raise ValueError(f"{folder}/config.json names no known model class (architectures: {architecture!r})")
    _family(config.model_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_model = model_class._from_config(config, attn_implementation="eager")
    _remove_in_place(hf_model, pruned)
    counts = (hf_model.config.heads_per_layer, hf_model.config.key_value_heads_per_layer)
    if recorded_counts != counts:
        raise ValueError(f"{folder}/config.json records heads per layer {recorded_counts[0]} and key/value heads "
                         f"{recorded_counts[1]}, but its pruned_heads give {counts[0]} and {counts[1]}")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing")
    state = load_file(weights)
    expected = hf_model.state_dict()
    unknown = [name for name in state if name not in expected]
    if unknown:
        raise ValueError(f"{weights} holds weights this model has no place for, e.g. {unknown[:3]}")
    saved = {expected[name].data_ptr() for name in state}  # a tied weight is saved under one of its names
    missing = [name for name, value in expected.items() if name not in state and value.data_ptr() not in saved]
    if missing:
        raise ValueError(f"{weights} lacks {len(missing)} weights, e.g. {missing[:3]}")
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise ValueError(f"{weights}: {name} has shape {tuple(value.shape)}, the recorded pruning "
                             f"needs {tuple(expected[name].shape)}")
    hf_model.load_state_dict(state, strict=False)
    hf_model.tie_weights()
    return hf_model.eval(), AutoTokenizer.from_pretrained(folder, local_files_only=True)


def head_counts(hf_model: PreTrainedModel) -> list[tuple[int, int]]:
    """(query heads, key/value heads) each layer computes, read off its weight shapes (a fully
    pruned layer counts its silent head)."""
    family = _family(hf_model.config.model_type)
    return [_counts(family, layer) for layer in _layers(hf_model)]


def n_heads_per_layer(hf_model: PreTrainedModel) -> list[int]:
    """The number of query heads each layer computes (see `head_counts`)."""
    return [queries for queries, _ in head_counts(hf_model)]


# ---------------------------------------------------------------- surgery


def _remove_in_place(hf_model: PreTrainedModel, pruned: set[tuple[int, int]]) -> None:
    config = hf_model.config
    family = _family(config.model_type)
    n_heads = config.num_attention_heads
    group = n_heads // (getattr(config, "num_key_value_heads", None) or n_heads)
    layers = _layers(hf_model)
    by_layer: dict[int, list[int]] = {}
    for layer, head in sorted(pruned):
        by_layer.setdefault(layer, []).append(head)
    plans = {layer: _plan(layer, [h for h in range(n_heads) if h not in removed], group, family)
             for layer, removed in by_layer.items()}  # every layer checked before any is cut
    for layer, (keep, kept_kv, silent) in plans.items():
        _CUTS[family](layers[layer], keep, kept_kv, silent)
    config.pruned_heads = {str(layer): heads for layer, heads in by_layer.items()}
    counts = [_counts(family, layer) for layer in layers]
    config.heads_per_layer = [q for q, _ in counts]
    config.key_value_heads_per_layer = [kv for _, kv in counts]


def _plan(layer: int, keep: list[int], group: int, family: str) -> tuple[list[int], list[int], bool]:
    """(query heads kept, key/value heads kept, silent) of one layer; a layer losing every head
    keeps head 0 silent. Refuses uneven groups, which Hugging Face cannot represent."""
    silent = not keep
    keep = keep or [0]
    kept_kv = sorted({head // group for head in keep})
    sizes = {kv: sum(1 for head in keep if head // group == kv) for kv in kept_kv}
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"layer {layer}: the remaining query heads {keep} read key/value heads "
            f"{', '.join(f'{kv} ({n} query heads)' for kv, n in sizes.items())}; {family}'s attention repeats every "
            f"key/value head the same number of times (num_key_value_groups, one per layer), so each remaining "
            f"key/value head must keep the same number of query heads. Remove or keep heads so that the groups match.")
    return keep, kept_kv, silent


def _head_rows(heads: list[int], size: int) -> torch.Tensor:
    """Indices of `size` consecutive rows per head, for `heads` in order."""
    return torch.cat([torch.arange(h * size, (h + 1) * size) for h in heads])


def _cut_gpt2(block, keep: list[int], kept_kv: list[int], silent: bool) -> None:
    attn = block.attn
    d_model, d_head = attn.embed_dim, attn.head_dim
    cols = _head_rows(keep, d_head)
    qkv = torch.cat([cols + part * d_model for part in range(3)])
    like = attn.c_attn.weight  # new modules take the old ones' dtype and device before any copy
    c_attn = Conv1D(len(qkv), d_model).to(like)
    c_proj = Conv1D(d_model, len(cols)).to(like)
    with torch.no_grad():
        c_attn.weight.copy_(attn.c_attn.weight[:, qkv])
        c_attn.bias.copy_(attn.c_attn.bias[qkv])
        c_proj.weight.copy_(attn.c_proj.weight[cols] * (0.0 if silent else 1.0))
        c_proj.bias.copy_(attn.c_proj.bias)
    attn.c_attn, attn.c_proj = c_attn, c_proj
    attn.num_heads, attn.split_size = len(keep), len(cols)


def _cut_bert(layer, keep: list[int], kept_kv: list[int], silent: bool) -> None:
    self_attn, output = layer.attention.self, layer.attention.output
    rows = _head_rows(keep, self_attn.attention_head_size)
    for name in ("query", "key", "value"):
        setattr(self_attn, name, _linear_rows(getattr(self_attn, name), rows))
    output.dense = _linear_columns(output.dense, rows, silent)
    self_attn.num_attention_heads, self_attn.all_head_size = len(keep), len(rows)


def _cut_neox(layer, keep: list[int], kept_kv: list[int], silent: bool) -> None:
    attn = layer.attention
    d_head = attn.head_size
    attn.query_key_value = _linear_rows(attn.query_key_value, _head_rows(keep, 3 * d_head))
    attn.dense = _linear_columns(attn.dense, _head_rows(keep, d_head), silent)


def _cut_llama(layer, keep: list[int], kept_kv: list[int], silent: bool) -> None:
    attn = layer.self_attn
    rows, kv_rows = _head_rows(keep, attn.head_dim), _head_rows(kept_kv, attn.head_dim)
    attn.q_proj = _linear_rows(attn.q_proj, rows)
    attn.k_proj = _linear_rows(attn.k_proj, kv_rows)
    attn.v_proj = _linear_rows(attn.v_proj, kv_rows)
    attn.o_proj = _linear_columns(attn.o_proj, rows, silent)
    attn.num_key_value_groups = len(keep) // len(kept_kv)


def _linear_rows(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features, len(rows), bias=linear.bias is not None).to(linear.weight)
    with torch.no_grad():
        new.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[rows])
    return new


def _linear_columns(linear: nn.Linear, columns: torch.Tensor, silent: bool) -> nn.Linear:
    """`linear` reading only `columns` of its input (their weights zeroed when `silent`)."""
    new = nn.Linear(len(columns), linear.out_features, bias=linear.bias is not None).to(linear.weight)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, columns] * (0.0 if silent else 1.0))
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new


_CUTS = {"gpt2": _cut_gpt2, "bert": _cut_bert, "gpt_neox": _cut_neox, **{f: _cut_llama for f in LLAMA_LIKE}}


# ---------------------------------------------------------------- architecture lookup


def _family(model_type: str) -> str:
    if model_type not in FAMILIES:
        raise ValueError(f"head removal has surgery for {', '.join(FAMILIES)} models, not {model_type!r}")
    return model_type


def _layers(hf_model: PreTrainedModel):
    base = hf_model.base_model
    return {"gpt2": lambda: base.h, "bert": lambda: base.encoder.layer}.get(hf_model.config.model_type,
                                                                            lambda: base.layers)()


def _counts(family: str, layer) -> tuple[int, int]:
    """(query heads, key/value heads) of one layer, from its weight shapes."""
    if family == "gpt2":
        return layer.attn.num_heads, layer.attn.num_heads
    if family == "bert":
        heads = layer.attention.self.num_attention_heads
        return heads, heads
    if family == "gpt_neox":
        heads = layer.attention.query_key_value.out_features // (3 * layer.attention.head_size)
        return heads, heads
    attn = layer.self_attn
    return attn.q_proj.out_features // attn.head_dim, attn.k_proj.out_features // attn.head_dim


def _recorded_heads(config, folder: Path) -> set[tuple[int, int]]:
    recorded = getattr(config, "pruned_heads", None)
    if not recorded:
        raise ValueError(f"{folder} records no pruned heads (config.pruned_heads); load it with "
                         f"interp.load_model or from_pretrained")
    try:
        heads = {(int(layer), int(head)) for layer, group in recorded.items() for head in group}
    except (AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"{folder}/config.json: pruned_heads must map layers to lists of heads, "
                         f"got {json.dumps(recorded)[:200]}") from err
    n_layers, n_heads = config.num_hidden_layers, config.num_attention_heads
    bad = [(l, h) for l, h in heads if not (0 <= l < n_layers and 0 <= h < n_heads)]
    if bad:
        raise ValueError(f"{folder}/config.json: pruned_heads {bad[:5]} lie outside "
                         f"{n_layers} layers x {n_heads} heads")
    return heads
