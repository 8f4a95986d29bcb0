"""Real head pruning: a smaller Hugging Face model without the pruned heads' weights.

Masking a head (zeroing its output before W_O) shows what the model does without it; removing
the head's rows and columns from W_Q, W_K, W_V and W_O makes the model smaller and faster while
computing the same function. transformers 5 dropped `prune_heads`, so the surgery is done here,
for the GPT-2 and BERT architectures:

    GPT-2   attn.c_attn   Conv1D [d_model, 3 * n_heads * d_head]   keep the q, k and v columns
            attn.c_proj   Conv1D [n_heads * d_head, d_model]       keep the rows
    BERT    attention.self.query/key/value  Linear [n_heads * d_head, d_model]  keep the rows
            attention.output.dense          Linear [d_model, n_heads * d_head]  keep the columns

Attention modules in transformers cannot run with zero heads, so a layer that loses every head
keeps one head whose output weights are zero: it adds nothing, exactly as the mask does.

The pruned model saves as an ordinary Hugging Face folder (config.json, safetensors, tokenizer)
with the removed heads recorded in `config.pruned_heads` ({layer: [heads]}). Plain
`from_pretrained` builds every layer at full width and cannot read it (transformers 5 no longer
re-prunes on load); `load_pruned` can:

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
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from interp.models import HookedModel

from .pruning import head_set

Heads = Iterable[tuple[int, int]]


def remove_heads(model: HookedModel, heads: Heads) -> PreTrainedModel:
    """A new Hugging Face model (CPU, eval mode) equal to `model` with `heads` removed.

    Its outputs equal those of `model` with the heads' outputs zeroed before W_O (see
    `analyses.pruning.mask_hooks`). `model` itself is left unchanged.
    """
    pruned = head_set(model.cfg, heads)
    hf_model = model.hf_copy()
    _remove_in_place(hf_model, pruned)
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
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def load_pruned(folder: str | os.PathLike) -> tuple[PreTrainedModel, object]:
    """Load a folder written by `save_pruned`: `(hf_model, tokenizer)`, eval mode, on CPU.

    The model is built at full width from its config, cut to the recorded head counts, and only
    then given the saved weights, all of which must be present and of the right shape.
    """
    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    pruned = _recorded_heads(config, folder)
    architecture = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(transformers, architecture or "", None)
    if model_class is None:
        raise ValueError(f"{folder}/config.json names no known model class (architectures: {architecture!r})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_model = model_class._from_config(config, attn_implementation="eager")
    _remove_in_place(hf_model, pruned)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing")
    state = load_file(weights)
    expected = hf_model.state_dict()
    tied = getattr(hf_model, "_tied_weights_keys", None) or {}
    missing = [name for name in expected if name not in state and name not in tied]
    if missing:
        raise ValueError(f"{weights} lacks {len(missing)} weights, e.g. {missing[:3]}")
    for name, value in state.items():
        if name in expected and value.shape != expected[name].shape:
            raise ValueError(f"{weights}: {name} has shape {tuple(value.shape)}, the recorded pruning "
                             f"needs {tuple(expected[name].shape)}")
    hf_model.load_state_dict(state, strict=False)
    hf_model.tie_weights()
    return hf_model.eval(), AutoTokenizer.from_pretrained(folder, local_files_only=True)


def n_heads_per_layer(hf_model: PreTrainedModel) -> list[int]:
    """The number of heads each layer computes (a fully pruned layer counts its zeroed head)."""
    return [_attention(layer)[0].num_heads if _is_gpt2(hf_model) else _attention(layer)[0].num_attention_heads
            for layer in _layers(hf_model)]


# ---------------------------------------------------------------- surgery


def _remove_in_place(hf_model: PreTrainedModel, pruned: set[tuple[int, int]]) -> None:
    config = hf_model.config
    n_heads = config.num_attention_heads
    layers = _layers(hf_model)
    by_layer: dict[int, list[int]] = {}
    for layer, head in sorted(pruned):
        by_layer.setdefault(layer, []).append(head)
    for layer, removed in by_layer.items():
        keep = [h for h in range(n_heads) if h not in removed]
        silent = not keep
        if silent:
            keep = [0]
        if _is_gpt2(hf_model):
            _cut_gpt2(layers[layer], keep, silent)
        else:
            _cut_bert(layers[layer], keep, silent)
    config.pruned_heads = {str(layer): heads for layer, heads in by_layer.items()}


def _cut_gpt2(block, keep: list[int], silent: bool) -> None:
    attn, _ = _attention(block)
    d_model, d_head = attn.embed_dim, attn.head_dim
    width = len(keep) * d_head
    cols = torch.cat([torch.arange(h * d_head, (h + 1) * d_head) for h in keep])
    qkv = torch.cat([cols + part * d_model for part in range(3)])
    like = attn.c_attn.weight  # new modules take the old ones' dtype and device before any copy
    c_attn = Conv1D(3 * width, d_model).to(like)
    c_proj = Conv1D(d_model, width).to(like)
    with torch.no_grad():
        c_attn.weight.copy_(attn.c_attn.weight[:, qkv])
        c_attn.bias.copy_(attn.c_attn.bias[qkv])
        c_proj.weight.copy_(attn.c_proj.weight[cols] * (0.0 if silent else 1.0))
        c_proj.bias.copy_(attn.c_proj.bias)
    attn.c_attn, attn.c_proj = c_attn, c_proj
    attn.num_heads, attn.split_size = len(keep), width


def _cut_bert(layer, keep: list[int], silent: bool) -> None:
    self_attn, output = _attention(layer)
    d_head = self_attn.attention_head_size
    rows = torch.cat([torch.arange(h * d_head, (h + 1) * d_head) for h in keep])
    for name in ("query", "key", "value"):
        setattr(self_attn, name, _linear_rows(getattr(self_attn, name), rows))
    dense = output.dense
    new_dense = torch.nn.Linear(len(rows), dense.out_features).to(dense.weight)
    with torch.no_grad():
        new_dense.weight.copy_(dense.weight[:, rows] * (0.0 if silent else 1.0))
        new_dense.bias.copy_(dense.bias)
    output.dense = new_dense
    self_attn.num_attention_heads, self_attn.all_head_size = len(keep), len(rows)


def _linear_rows(linear: torch.nn.Linear, rows: torch.Tensor) -> torch.nn.Linear:
    new = torch.nn.Linear(linear.in_features, len(rows)).to(linear.weight)
    with torch.no_grad():
        new.weight.copy_(linear.weight[rows])
        new.bias.copy_(linear.bias[rows])
    return new


# ---------------------------------------------------------------- architecture lookup


def _is_gpt2(hf_model: PreTrainedModel) -> bool:
    return hf_model.config.model_type == "gpt2"


def _layers(hf_model: PreTrainedModel):
    base = hf_model.base_model
    if hf_model.config.model_type == "gpt2":
        return base.h
    if hf_model.config.model_type == "bert":
        return base.encoder.layer
    raise NotImplementedError(f"head removal supports GPT-2 and BERT models, not {hf_model.config.model_type!r}")


def _attention(layer):
    """(module holding the heads' q/k/v, module holding W_O) of one layer."""
    if hasattr(layer, "attn"):
        return layer.attn, layer.attn
    return layer.attention.self, layer.attention.output


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

