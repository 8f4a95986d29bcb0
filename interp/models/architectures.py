"""Architecture descriptions: what differs between transformer families, stated once.

`describe(hf_config)` reads a Hugging Face config into an `Architecture` (norm type and
placement, positions, parallel attention+MLP, key/value head grouping, MLP kind, scales,
soft-capping, sliding windows); `read_weights(hf_model, arch)` reads the model's parameters
into one neutral layout (`ModelWeights`). The weight views of `HookedModel` and the plain-
tensor forward in `interp.models.functional` read only these two, so no other code
special-cases a family. A family this module does not describe, or a feature of a described
family it does not implement, raises `UnsupportedArchitecture` naming what is missing:
never an approximate description.

Families: GPT-2, GPT-NeoX (Pythia), Llama, Mistral, Qwen2, Gemma2 (causal) and BERT (encoder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

Tensor = torch.Tensor


class UnsupportedArchitecture(NotImplementedError):
    """The model's family, or one of its features, is not described here."""


@dataclass(frozen=True)
class Architecture:
    """Facts about one model's family and shape.

    Attributes:
        family: "gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma2" or "bert".
        is_causal: False for encoders.
        norm: "layernorm" or "rmsnorm"; `norm_eps` its epsilon; `norm_offset` is added to
            stored norm weights (Gemma stores RMSNorm scales as w - 1).
        block: "sequential" (pre-norm attention, then pre-norm MLP), "parallel" (attention
            and MLP both read the block's input: GPT-NeoX), "sandwich" (norms before and after
            each sublayer: Gemma2) or "post_norm" (norm after each residual add: BERT).
        positions: "learned" (an embedding added at the input) or "rotary".
        rotary_dim: how many leading dims of each query/key head rotate (< d_head: partial
            rotary, as in Pythia); 0 for learned positions.
        mlp: "plain" (act(x W_in) W_out) or "gated" (act(x W_gate) * (x W_in), then W_out).
        act: the activation function's name in transformers' ACT2FN.
        attn_scale: multiplier of q.k per layer (usually d_head ** -0.5).
        attn_softcap, final_softcap: soft-capping c (x -> c tanh(x / c)) of attention scores
            and of output logits, or None.
        sliding_window: per layer, how many positions back a query may look (itself included),
            or None for full causal attention.
    """

    family: str
    is_causal: bool
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    norm: str
    norm_eps: float
    norm_offset: float
    block: str
    positions: str
    rotary_dim: int
    mlp: str
    act: str
    attn_scale: tuple[float, ...]
    attn_softcap: float | None
    final_softcap: float | None
    sliding_window: tuple[int | None, ...]

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The key/value head that query head `head` reads."""
        return head // self.group_size


@dataclass
class Norm:
    """A LayerNorm or RMSNorm's parameters (`bias` None for RMSNorm)."""

    weight: Tensor
    bias: Tensor | None = None


@dataclass
class LayerWeights:
    """One block's parameters in `torch.nn.functional.linear` layout (`[out, in]`).

    Attention: w_q `[n_heads * d_head, d_model]`, w_k and w_v `[n_kv_heads * d_head, d_model]`,
    w_o `[d_model, n_heads * d_head]`; biases `[out]` or None. MLP: w_in (and w_gate for
    gated MLPs) `[d_mlp, d_model]`, w_out `[d_model, d_mlp]`. Norms: `attn_norm` before
    attention (after it, for post-norm BERT), `attn_post_norm` after it (Gemma2's sandwich);
    likewise for the MLP.
    """

    w_q: Tensor
    b_q: Tensor | None
    w_k: Tensor
    b_k: Tensor | None
    w_v: Tensor
    b_v: Tensor | None
    w_o: Tensor
    b_o: Tensor | None
    attn_norm: Norm
    attn_post_norm: Norm | None
    mlp_norm: Norm
    mlp_post_norm: Norm | None
    w_in: Tensor
    b_in: Tensor | None
    w_gate: Tensor | None
    b_gate: Tensor | None
    w_out: Tensor
    b_out: Tensor | None


@dataclass
class ModelWeights:
    """Every parameter the forward pass reads.

    w_e `[d_vocab, d_model]` (Gemma's embedding scale is `embed_scale`); w_pos `[n_ctx,
    d_model]` or None; w_u `[d_vocab, d_model]` (linear layout) and b_u, or None for an encoder
    without a language-model head; rotary: `inv_freq [rotary_dim / 2]` and the cos/sin
    `rotary_scaling` of the model's rotary embedding module.
    """

    w_e: Tensor
    embed_scale: float
    w_pos: Tensor | None
    embed_norm: Norm | None
    final_norm: Norm | None
    w_u: Tensor | None
    b_u: Tensor | None
    inv_freq: Tensor | None
    rotary_scaling: float
    layers: list[LayerWeights]


# ------------------------------------------------------------------------------ configs

def describe(config) -> Architecture:
    """The `Architecture` of a Hugging Face config; raises UnsupportedArchitecture."""
    reader = _DESCRIBERS.get(config.model_type)
    if reader is None:
        raise UnsupportedArchitecture(
            f"no architecture description for model_type {config.model_type!r}; described families: "
            f"{', '.join(sorted(_DESCRIBERS))}")
    return reader(config)


def _rope(config) -> dict:
    params = getattr(config, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if "dynamic" in kind or kind == "longrope":
        raise UnsupportedArchitecture(f"rotary embeddings of type {kind!r} change with the sequence length and "
                                      f"are not described")
    return params


def _windows(config, n_layers: int) -> tuple[int | None, ...]:
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None:
        unknown = set(types) - {"full_attention", "sliding_attention"}
        if unknown:
            raise UnsupportedArchitecture(f"attention layer types {sorted(unknown)} are not described")
        return tuple(window if t == "sliding_attention" else None for t in types)
    return (window,) * n_layers


def _gpt2(c) -> Architecture:
    if getattr(c, "add_cross_attention", False):
        raise UnsupportedArchitecture("GPT-2 with cross-attention is not described")
    d_head = c.n_embd // c.n_head
    scales = []
    for layer in range(c.n_layer):
        scale = d_head ** -0.5 if c.scale_attn_weights else 1.0
        scales.append(scale / (layer + 1) if c.scale_attn_by_inverse_layer_idx else scale)
    return Architecture(
        family="gpt2", is_causal=True, n_layers=c.n_layer, n_heads=c.n_head, n_kv_heads=c.n_head,
        d_model=c.n_embd, d_head=d_head, d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size,
        n_ctx=c.n_positions, norm="layernorm", norm_eps=c.layer_norm_epsilon, norm_offset=0.0,
        block="sequential", positions="learned", rotary_dim=0, mlp="plain", act=c.activation_function,
        attn_scale=tuple(scales), attn_softcap=None, final_softcap=None, sliding_window=(None,) * c.n_layer)


def _gpt_neox(c) -> Architecture:
    _rope(c)
    d_head = c.hidden_size // c.num_attention_heads
    partial = (getattr(c, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    return Architecture(
        family="gpt_neox", is_causal=True, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
        n_kv_heads=c.num_attention_heads, d_model=c.hidden_size, d_head=d_head, d_mlp=c.intermediate_size,
        d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, norm="layernorm", norm_eps=c.layer_norm_eps,
        norm_offset=0.0, block="parallel" if c.use_parallel_residual else "sequential", positions="rotary",
        rotary_dim=int(d_head * partial), mlp="plain", act=c.hidden_act,
        attn_scale=(d_head ** -0.5,) * c.num_hidden_layers, attn_softcap=None, final_softcap=None,
        sliding_window=(None,) * c.num_hidden_layers)


def _llama_like(c) -> Architecture:
    _rope(c)
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    partial = (getattr(c, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    gemma = c.model_type == "gemma2"
    if c.num_attention_heads % c.num_key_value_heads:
        raise UnsupportedArchitecture(f"{c.num_attention_heads} query heads do not divide into "
                                      f"{c.num_key_value_heads} key/value heads")
    scale = c.query_pre_attn_scalar ** -0.5 if gemma else d_head ** -0.5
    return Architecture(
        family=c.model_type, is_causal=True, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
        n_kv_heads=c.num_key_value_heads, d_model=c.hidden_size, d_head=d_head, d_mlp=c.intermediate_size,
        d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, norm="rmsnorm", norm_eps=c.rms_norm_eps,
        norm_offset=1.0 if gemma else 0.0, block="sandwich" if gemma else "sequential", positions="rotary",
        rotary_dim=int(d_head * partial), mlp="gated",
        act=c.hidden_activation if gemma else c.hidden_act, attn_scale=(scale,) * c.num_hidden_layers,
        attn_softcap=c.attn_logit_softcapping if gemma else None,
        final_softcap=c.final_logit_softcapping if gemma else None,
        sliding_window=_windows(c, c.num_hidden_layers))


def _bert(c) -> Architecture:
    if getattr(c, "position_embedding_type", "absolute") != "absolute":
        raise UnsupportedArchitecture(f"BERT with {c.position_embedding_type!r} position embeddings is not described")
    return Architecture(
        family="bert", is_causal=False, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
        n_kv_heads=c.num_attention_heads, d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads,
        d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, norm="layernorm",
        norm_eps=c.layer_norm_eps, norm_offset=0.0, block="post_norm", positions="learned", rotary_dim=0,
        mlp="plain", act=c.hidden_act,
        attn_scale=((c.hidden_size // c.num_attention_heads) ** -0.5,) * c.num_hidden_layers,
        attn_softcap=None, final_softcap=None, sliding_window=(None,) * c.num_hidden_layers)


_DESCRIBERS = {"gpt2": _gpt2, "gpt_neox": _gpt_neox, "llama": _llama_like, "mistral": _llama_like,
               "qwen2": _llama_like, "gemma2": _llama_like, "bert": _bert}


# ------------------------------------------------------------------------------ weights

def unwrapped_parameters(module: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer of `module` (tied ones under each of their names) by its
    Hugging Face name. A TransformerBridge wraps modules in place and inserts
    `._original_component` into every name; it is removed here."""
    return {name.replace("._original_component", ""): value.detach()
            for name, value in module.state_dict(keep_vars=True).items()}


def unwrap(module: nn.Module) -> nn.Module:
    """The Hugging Face module inside a TransformerBridge wrapper (the module itself if none)."""
    while hasattr(module, "_original_component"):
        module = module._original_component
    return module


def read_weights(hf_model: nn.Module, arch: Architecture) -> ModelWeights:
    """The model's parameters in the neutral layout (views of the model's own tensors where
    the layout allows; GPT-NeoX's interleaved query/key/value rows are copied apart)."""
    p = unwrapped_parameters(hf_model)
    reader = {"gpt2": _gpt2_weights, "gpt_neox": _neox_weights, "bert": _bert_weights}.get(arch.family, _llama_weights)
    return reader(p, arch, hf_model)


def _norm(p: dict[str, Tensor], prefix: str) -> Norm:
    return Norm(p[f"{prefix}.weight"], p.get(f"{prefix}.bias"))


def _rotary(hf_model: nn.Module, path: str) -> tuple[Tensor, float]:
    module = hf_model
    for part in path.split("."):
        module = unwrap(getattr(unwrap(module), part))
    return module.inv_freq.detach(), float(getattr(module, "attention_scaling", 1.0))


def _gpt2_weights(p, arch: Architecture, hf_model) -> ModelWeights:
    d = arch.d_model
    layers = []
    for i in range(arch.n_layers):
        h = f"transformer.h.{i}"
        w_qkv, b_qkv = p[f"{h}.attn.c_attn.weight"].T, p[f"{h}.attn.c_attn.bias"]  # Conv1D: [in, out]
        layers.append(LayerWeights(
            w_q=w_qkv[:d], b_q=b_qkv[:d], w_k=w_qkv[d:2 * d], b_k=b_qkv[d:2 * d],
            w_v=w_qkv[2 * d:], b_v=b_qkv[2 * d:],
            w_o=p[f"{h}.attn.c_proj.weight"].T, b_o=p[f"{h}.attn.c_proj.bias"],
            attn_norm=_norm(p, f"{h}.ln_1"), attn_post_norm=None, mlp_norm=_norm(p, f"{h}.ln_2"), mlp_post_norm=None,
            w_in=p[f"{h}.mlp.c_fc.weight"].T, b_in=p[f"{h}.mlp.c_fc.bias"], w_gate=None, b_gate=None,
            w_out=p[f"{h}.mlp.c_proj.weight"].T, b_out=p[f"{h}.mlp.c_proj.bias"]))
    return ModelWeights(
        w_e=p["transformer.wte.weight"], embed_scale=1.0, w_pos=p["transformer.wpe.weight"], embed_norm=None,
        final_norm=_norm(p, "transformer.ln_f"), w_u=p.get("lm_head.weight"), b_u=p.get("lm_head.bias"),
        inv_freq=None, rotary_scaling=1.0, layers=layers)


def _neox_weights(p, arch: Architecture, hf_model) -> ModelWeights:
    H, dh, d = arch.n_heads, arch.d_head, arch.d_model
    layers = []
    for i in range(arch.n_layers):
        h = f"gpt_neox.layers.{i}"
        w = p[f"{h}.attention.query_key_value.weight"].view(H, 3, dh, d)
        b = p.get(f"{h}.attention.query_key_value.bias")
        b = None if b is None else b.view(H, 3, dh)
        q, k, v = (w[:, j].reshape(H * dh, d).contiguous() for j in range(3))
        bq, bk, bv = (None, None, None) if b is None else (b[:, j].reshape(H * dh).contiguous() for j in range(3))
        layers.append(LayerWeights(
            w_q=q, b_q=bq, w_k=k, b_k=bk, w_v=v, b_v=bv,
            w_o=p[f"{h}.attention.dense.weight"], b_o=p.get(f"{h}.attention.dense.bias"),
            attn_norm=_norm(p, f"{h}.input_layernorm"), attn_post_norm=None,
            mlp_norm=_norm(p, f"{h}.post_attention_layernorm"), mlp_post_norm=None,
            w_in=p[f"{h}.mlp.dense_h_to_4h.weight"], b_in=p.get(f"{h}.mlp.dense_h_to_4h.bias"), w_gate=None,
            b_gate=None, w_out=p[f"{h}.mlp.dense_4h_to_h.weight"], b_out=p.get(f"{h}.mlp.dense_4h_to_h.bias")))
    inv_freq, scaling = _rotary(hf_model, "gpt_neox.rotary_emb")
    return ModelWeights(
        w_e=p["gpt_neox.embed_in.weight"], embed_scale=1.0, w_pos=None, embed_norm=None,
        final_norm=_norm(p, "gpt_neox.final_layer_norm"), w_u=p.get("lm_head.weight", p.get("embed_out.weight")), b_u=None,
        inv_freq=inv_freq, rotary_scaling=scaling, layers=layers)


def _llama_weights(p, arch: Architecture, hf_model) -> ModelWeights:
    gemma = arch.family == "gemma2"
    layers = []
    for i in range(arch.n_layers):
        h = f"model.layers.{i}"
        a, m = f"{h}.self_attn", f"{h}.mlp"
        layers.append(LayerWeights(
            w_q=p[f"{a}.q_proj.weight"], b_q=p.get(f"{a}.q_proj.bias"),
            w_k=p[f"{a}.k_proj.weight"], b_k=p.get(f"{a}.k_proj.bias"),
            w_v=p[f"{a}.v_proj.weight"], b_v=p.get(f"{a}.v_proj.bias"),
            w_o=p[f"{a}.o_proj.weight"], b_o=p.get(f"{a}.o_proj.bias"),
            attn_norm=_norm(p, f"{h}.input_layernorm"),
            attn_post_norm=_norm(p, f"{h}.post_attention_layernorm") if gemma else None,
            mlp_norm=_norm(p, f"{h}.pre_feedforward_layernorm" if gemma else f"{h}.post_attention_layernorm"),
            mlp_post_norm=_norm(p, f"{h}.post_feedforward_layernorm") if gemma else None,
            w_in=p[f"{m}.up_proj.weight"], b_in=p.get(f"{m}.up_proj.bias"),
            w_gate=p[f"{m}.gate_proj.weight"], b_gate=p.get(f"{m}.gate_proj.bias"),
            w_out=p[f"{m}.down_proj.weight"], b_out=p.get(f"{m}.down_proj.bias")))
    inv_freq, scaling = _rotary(hf_model, "model.rotary_emb")
    return ModelWeights(
        w_e=p["model.embed_tokens.weight"], embed_scale=math.sqrt(arch.d_model) if gemma else 1.0, w_pos=None,
        embed_norm=None, final_norm=_norm(p, "model.norm"), w_u=p.get("lm_head.weight"), b_u=p.get("lm_head.bias"),
        inv_freq=inv_freq, rotary_scaling=scaling, layers=layers)


def _bert_weights(p, arch: Architecture, hf_model) -> ModelWeights:
    base = "bert." if "bert.embeddings.word_embeddings.weight" in p else ""  # BertForMaskedLM or BertModel
    layers = []
    for i in range(arch.n_layers):
        h = f"{base}encoder.layer.{i}"
        s = f"{h}.attention.self"
        layers.append(LayerWeights(
            w_q=p[f"{s}.query.weight"], b_q=p[f"{s}.query.bias"], w_k=p[f"{s}.key.weight"], b_k=p[f"{s}.key.bias"],
            w_v=p[f"{s}.value.weight"], b_v=p[f"{s}.value.bias"],
            w_o=p[f"{h}.attention.output.dense.weight"], b_o=p[f"{h}.attention.output.dense.bias"],
            attn_norm=_norm(p, f"{h}.attention.output.LayerNorm"), attn_post_norm=None,
            mlp_norm=_norm(p, f"{h}.output.LayerNorm"), mlp_post_norm=None,
            w_in=p[f"{h}.intermediate.dense.weight"], b_in=p[f"{h}.intermediate.dense.bias"], w_gate=None,
            b_gate=None, w_out=p[f"{h}.output.dense.weight"], b_out=p[f"{h}.output.dense.bias"]))
    return ModelWeights(
        w_e=p[f"{base}embeddings.word_embeddings.weight"], embed_scale=1.0,
        w_pos=p[f"{base}embeddings.position_embeddings.weight"], embed_norm=_norm(p, f"{base}embeddings.LayerNorm"),
        final_norm=None, w_u=p.get("cls.predictions.decoder.weight"), b_u=p.get("cls.predictions.bias"),
        inv_freq=None, rotary_scaling=1.0, layers=layers)
