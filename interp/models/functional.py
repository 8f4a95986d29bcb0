"""A plain-tensor forward pass of any described causal architecture, in pieces.

`Functional(arch, weights)` computes each sublayer from the neutral weights of
`interp.models.architectures`, in the model's dtype and on its device, with the same
arithmetic as the Hugging Face modules (RMSNorm in fp32, softmax in fp32, soft-capping in
Hugging Face's order). The patching engine composes these pieces into cached full runs and
suffix runs; `logits(tokens)` composes them into a whole forward, which the engine compares
with the model's own logits before every sweep.

Shapes carry any leading axes `...` (the engine puts a variant axis before the batch).
Queries and keys leave `qkv` already rotated (rotary positions are per position, so
patching a rotated key at a position equals patching the unrotated one).
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from .architectures import Architecture, ModelWeights, Norm, UnsupportedArchitecture

Tensor = torch.Tensor

# Each activation as (function, the same overwriting its input). The tanh GELU is one fused
# kernel: the same formula as transformers' "gelu_new". The in-place form serves an MLP's hidden
# layer, its largest activation: a fresh buffer for it costs as much as the activation itself in
# long no-grad sweeps on a CPU.
_TANH_GELU = (lambda x: F.gelu(x, approximate="tanh"), lambda x: torch.ops.aten.gelu_(x, approximate="tanh"))
_SILU = (F.silu, lambda x: F.silu(x, inplace=True))
_ACTIVATIONS = {"gelu_new": _TANH_GELU, "gelu_pytorch_tanh": _TANH_GELU, "gelu": (F.gelu, torch.ops.aten.gelu_),
                "silu": _SILU, "swish": _SILU, "relu": (F.relu, torch.relu_)}


# oneDNN's fused linear, where this build of torch has it (see `Functional.linear`), and the
# products it serves: on the benchmark machine MKL was as fast or faster below about 2^25
# multiply-adds or with a side narrower than 256 (and a new shape costs oneDNN ~1 ms to set up).
_ONEDNN = hasattr(torch.ops.mkldnn, "_linear_pointwise")
_ONEDNN_MIN_MACS, _ONEDNN_MIN_WIDTH = 1 << 25, 256


def _onednn_serves(x: Tensor, weight: Tensor) -> bool:
    """Whether `Functional.linear(x, weight)` runs on oneDNN: fp32 on a CPU, no gradients, a
    product of at least the sizes above, and oneDNN built in and not switched off
    (`torch.backends.mkldnn.flags(enabled=False)`)."""
    return (_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and min(weight.shape) >= _ONEDNN_MIN_WIDTH and x.numel() * weight.shape[0] >= _ONEDNN_MIN_MACS
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def _in_graph(t: Tensor) -> bool:
    """Whether autograd may need `t` kept as it is (so it must not be overwritten)."""
    return torch.is_grad_enabled() and t.requires_grad


class Functional:
    """Sublayers of one causal model as functions of plain tensors."""

    def __init__(self, arch: Architecture, weights: ModelWeights):
        if not arch.is_causal:
            raise UnsupportedArchitecture(f"the plain-tensor forward runs causal models; {arch.family} is an encoder")
        if weights.w_u is None:
            raise UnsupportedArchitecture("the plain-tensor forward needs a language-model head (unembedding)")
        self.arch, self.weights = arch, weights
        self.act, self._act_in_place = _ACTIVATIONS.get(arch.act) or (ACT2FN[arch.act], None)
        self.dtype, self.device = weights.w_e.dtype, weights.w_e.device
        self._scratch = threading.local()  # .buffers: {name: flat buffer} inside reusing_buffers()

    @contextmanager
    def reusing_buffers(self):
        """Within this block (on this thread, without gradients), the largest short-lived
        activations are written into buffers kept for the block instead of fresh ones per call:
        each MLP's hidden layer `[rows, d_mlp]`, and whatever else asks `scratch` (or `linear`
        with `into`) for one: the patching engine's keys and values, a rerun's projections,
        sublayer outputs and residual stream. Same kernels, same numbers; what it saves is the
        memory allocator's work: on a CPU, a fresh buffer of that size is handed back to the
        operating system when freed and costs a page fault per 4 KiB the next time (on a 2-core
        CPU, a z patching sweep of a Llama-shaped model ran 3-4% faster with the hidden layer's
        alone). The buffers, each as large as its largest use, are released at the end, with
        the contiguous copies of weights oneDNN would read slowly in place (see `_dense`)."""
        outer = getattr(self._scratch, "buffers", None), getattr(self._scratch, "dense", None)
        self._scratch.buffers, self._scratch.dense = {}, {}
        try:
            yield
        finally:
            self._scratch.buffers, self._scratch.dense = outer

    def _buffers(self) -> dict[str, Tensor] | None:
        """The named buffers when inside `reusing_buffers` without gradients, else None."""
        return None if torch.is_grad_enabled() else getattr(self._scratch, "buffers", None)

    @property
    def reusing(self) -> bool:
        """Whether `scratch` hands out reused buffers here (inside `reusing_buffers`, on this
        thread, without gradients)."""
        return self._buffers() is not None

    def scratch(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """An uninitialised tensor of `shape` in the model's dtype: inside `reusing_buffers`
        (and without gradients) a view of the buffer `name`, which the next request for `name`
        overwrites, so the caller must be done with it by then; otherwise a fresh one."""
        buffers = self._buffers()
        if buffers is None:
            return torch.empty(shape, dtype=self.dtype, device=self.device)
        size = math.prod(shape)
        if name not in buffers or buffers[name].numel() < size:
            buffers[name] = torch.empty(size, dtype=self.dtype, device=self.device)
        return buffers[name][:size].view(shape)

    # ------------------------------------------------------------------ pieces

    def norm(self, x: Tensor, p: Norm) -> Tensor:
        a = self.arch
        if a.norm == "layernorm":
            return F.layer_norm(x, (x.shape[-1],), p.weight, p.bias, a.norm_eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + a.norm_eps)
        if a.norm_offset:  # Gemma: scale in fp32, then cast
            return (h * (a.norm_offset + p.weight.float())).to(x.dtype)
        return p.weight * h.to(x.dtype)

    def embed(self, tokens: Tensor) -> Tensor:
        """`tokens [..., pos]` -> the residual entering block 0 `[..., pos, d_model]`."""
        w = self.weights
        x = w.w_e[tokens]
        if w.embed_scale != 1.0:
            x = x * torch.tensor(w.embed_scale, dtype=x.dtype)
        if w.w_pos is not None:
            x = x + w.w_pos[torch.arange(tokens.shape[-1], device=tokens.device)]
        return x

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor] | None:
        """cos and sin `[pos, rotary_dim]` at absolute `positions`, or None without rotary."""
        w = self.weights
        if w.inv_freq is None:
            return None
        freqs = positions[:, None].float() * w.inv_freq.to(positions.device).float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * w.rotary_scaling).to(self.dtype), (emb.sin() * w.rotary_scaling).to(self.dtype)

    @staticmethod
    def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotary embedding of the leading `rotary_dim` dims of `x [..., pos, head, d_head]`,
        with cos/sin `[..., pos, rotary_dim]` broadcastable to x's leading axes."""
        r = cos.shape[-1]
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
        rot, rest = x[..., :r], x[..., r:]
        half = r // 2
        rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
        out = rot * cos + rotated * sin
        return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out

    def qkv(self, layer: int, resid: Tensor, rotary: tuple[Tensor, Tensor] | None, buffered: bool = False
            ) -> tuple[Tensor, Tensor, Tensor]:
        """Queries `[..., pos, head, d_head]`, keys and values `[..., pos, kv_head, d_head]` of
        the residual `[..., pos, d_model]` entering `layer` (rotary applied with `rotary`,
        the cos/sin of these positions). `buffered`: the projections are written into the
        buffers "q", "k", "v" inside `reusing_buffers` (see `linear`)."""
        x = self.norm(resid, self.weights.layers[layer].attn_norm)
        return (self._queries(layer, x, rotary, buffered), *self._keys_values(layer, x, rotary, buffered))

    def queries(self, layer: int, resid: Tensor, rotary: tuple[Tensor, Tensor] | None) -> Tensor:
        """The queries of `qkv` alone."""
        return self._queries(layer, self.norm(resid, self.weights.layers[layer].attn_norm), rotary)

    def keys_values(self, layer: int, resid: Tensor, rotary: tuple[Tensor, Tensor] | None, buffered: bool = False
                    ) -> tuple[Tensor, Tensor]:
        """The keys and values of `qkv` alone."""
        return self._keys_values(layer, self.norm(resid, self.weights.layers[layer].attn_norm), rotary, buffered)

    def _queries(self, layer: int, x: Tensor, rotary: tuple[Tensor, Tensor] | None, buffered: bool = False) -> Tensor:
        a, w = self.arch, self.weights.layers[layer]
        q = self.linear(x, w.w_q, w.b_q, "q" if buffered else None).unflatten(-1, (a.n_heads, a.d_head))
        return q if rotary is None else self._rotate(q, *rotary)

    def _keys_values(self, layer: int, x: Tensor, rotary: tuple[Tensor, Tensor] | None, buffered: bool = False
                     ) -> tuple[Tensor, Tensor]:
        a, w = self.arch, self.weights.layers[layer]
        k = self.linear(x, w.w_k, w.b_k, "k" if buffered else None).unflatten(-1, (a.n_kv_heads, a.d_head))
        v = self.linear(x, w.w_v, w.b_v, "v" if buffered else None).unflatten(-1, (a.n_kv_heads, a.d_head))
        return (k if rotary is None else self._rotate(k, *rotary)), v

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Causal attention of queries at absolute positions `q_pos` over keys at 0..K-1.

        q `[..., Q, H, d_head]`, k/v `[..., K, H_kv, d_head]` with H a multiple of H_kv (query
        head h reads key/value head h // (H / H_kv)); leading axes broadcast against each other;
        q_pos `[Q]` or broadcastable `[..., Q]`.
        Returns z `[..., Q, H, d_head]` and pattern `[..., H, Q, K]`.
        The products read keys and values head-major, `[..., H_kv, K, d_head]`: k and v that
        are transposed views of contiguous head-major tensors (`Engine.with_prefix`) are read in
        place, others are copied into that layout first.
        """
        a = self.arch
        n_q, n_heads, d_head = q.shape[-3:]
        n_k, n_kv = k.shape[-3], k.shape[-2]
        group = n_heads // n_kv
        qh = q.transpose(-3, -2).reshape(*q.shape[:-3], n_kv, group * n_q, d_head)  # [..., H_kv, G*Q, d]
        kh, vh = k.transpose(-3, -2), v.transpose(-3, -2)                             # [..., H_kv, K, d]
        scores = torch.matmul(qh, kh.transpose(-1, -2)) * a.attn_scale[layer]
        scores = scores.view(*scores.shape[:-3], n_heads, n_q, n_k)
        if a.attn_softcap is not None:
            scores = torch.tanh(scores / a.attn_softcap) * a.attn_softcap
        keys = torch.arange(n_k, device=k.device)
        hidden = keys > q_pos.unsqueeze(-1)  # [..., Q, K]
        window = a.sliding_window[layer]
        if window is not None:
            hidden = hidden | (keys <= q_pos.unsqueeze(-1) - window)
        if hidden.ndim > 2:
            hidden = hidden.unsqueeze(-3)  # broadcast over heads
        scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
        pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        z = torch.matmul(pattern.view(*pattern.shape[:-3], n_kv, group * n_q, n_k), vh)
        return z.view(*z.shape[:-3], n_heads, n_q, d_head).transpose(-3, -2), pattern

    def attn_out(self, layer: int, z: Tensor, into: str | None = None) -> Tensor:
        """`z [..., pos, head, d_head]` -> the attention sublayer's output `[..., pos, d_model]`
        (W_O, b_O, and the post-attention norm where the block has one). With `into`, inside
        `reusing_buffers`, the heads' concatenated z and the projection are written into the
        buffers "z" and `into` (see `linear`)."""
        w = self.weights.layers[layer]
        if into is not None and not z.is_contiguous() and self.reusing:
            z = self.scratch("z", z.shape).copy_(z)  # what flatten would copy into a fresh tensor
        out = self.linear(z.flatten(-2), w.w_o, w.b_o, into)
        return out if w.attn_post_norm is None else self.norm(out, w.attn_post_norm)

    def mlp(self, layer: int, x: Tensor, into: str | None = None) -> Tensor:
        """The MLP sublayer's output for the residual `x [..., pos, d_model]` it reads. Its hidden
        layer is written into the buffer "hidden" inside `reusing_buffers`, and with `into` its
        output into the buffer `into` (see `linear`)."""
        w = self.weights.layers[layer]
        h = self.norm(x, w.mlp_norm)
        if w.w_gate is None:
            hidden = self._activate(self.linear(h, w.w_in, w.b_in, "hidden"))
        else:
            hidden = self._activate(self.linear(h, w.w_gate, w.b_gate, "hidden"))
            up = self.linear(h, w.w_in, w.b_in)
            hidden = hidden * up if _in_graph(hidden) else hidden.mul_(up)
        out = self.linear(hidden, w.w_out, w.b_out, into)
        return out if w.mlp_post_norm is None else self.norm(out, w.mlp_post_norm)

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None, into: str | None = None) -> Tensor:
        """`F.linear(x, weight, bias)` `[..., d_out]`, by one of two kernels.

        Without gradients, on a CPU, in fp32, for products of at least 2^25 multiply-adds with
        both sides at least 256 wide: oneDNN's matmul (the kernel `torch.compile`'s CPU backend
        gives linears), into a fresh tensor. On the 2-core AMD EPYC of benchmarks/RESULTS.md it
        ran the engine's products 8-18% faster than the MKL sgemm behind `F.linear` (and
        smaller ones slower). Its rows do not depend on how many rows come with them nor on
        the weight's layout (tested).

        Otherwise `F.linear`; with `into`, inside `reusing_buffers` (contiguous `x` in the
        model's dtype: where `F.linear` itself is one `addmm`/`mm` of the flattened rows, so
        the numbers are the same), written into the buffer `into`, which the next request for
        that name overwrites.
        """
        if _onednn_serves(x, weight):
            return torch.ops.mkldnn._linear_pointwise(x, self._dense(weight), bias, "none", [], "")
        if into is None or not self.reusing or not x.is_contiguous() or x.dtype != self.dtype:
            return F.linear(x, weight, bias)
        rows = x.numel() // x.shape[-1]
        out = self.scratch(into, (rows, weight.shape[0]))
        flat = x.reshape(rows, x.shape[-1])
        if bias is None:
            torch.mm(flat, weight.t(), out=out)
        else:
            torch.addmm(bias, flat, weight.t(), out=out)
        return out.view(*x.shape[:-1], weight.shape[0])

    def _dense(self, weight: Tensor) -> Tensor:
        """`weight` as oneDNN reads it fast: contiguous, or the transpose of a contiguous
        tensor (GPT-2's Conv1D layout). Anything else (GPT-2's query/key/value slices of one
        fused matrix, which oneDNN reads hundreds of times slower) is copied: once per
        `reusing_buffers` block inside one, else per call."""
        if weight.is_contiguous() or weight.t().is_contiguous():
            return weight
        copies = getattr(self._scratch, "dense", None)
        if copies is None:
            return weight.contiguous()
        kept = copies.get(id(weight))
        if kept is None or kept[0] is not weight:
            kept = copies[id(weight)] = (weight, weight.contiguous())
        return kept[1]

    def _activate(self, pre: Tensor) -> Tensor:
        """The activation function of a fresh pre-activation, in place where autograd does not
        need it kept."""
        if self._act_in_place is None or _in_graph(pre):
            return self.act(pre)
        return self._act_in_place(pre)

    @property
    def parallel(self) -> bool:
        """Attention and MLP both read the block's input (GPT-NeoX): no residual between them."""
        return self.arch.block == "parallel"

    def final(self, resid: Tensor) -> Tensor:
        """The last residual `[..., d_model]` through the final norm (ready to unembed)."""
        return self.norm(resid, self.weights.final_norm)

    def unembed(self, final: Tensor, columns: Tensor | None = None) -> Tensor:
        """Logits `[..., d_vocab]` of final-normed residuals `[..., d_model]` (soft-capped where
        the model is), in the residuals' dtype; with token ids `columns` broadcastable to the
        residuals' leading axes, only the logit of each row's own column `[...]`."""
        w, cap = self.weights, self.arch.final_softcap
        w_u = w.w_u if columns is None else w.w_u[columns]
        b_u = w.b_u if w.b_u is None or columns is None else w.b_u[columns]
        w_u, b_u = w_u.to(final.dtype), None if b_u is None else b_u.to(final.dtype)
        out = self.linear(final, w_u, b_u) if columns is None else (final * w_u).sum(-1) + (0 if b_u is None else b_u)
        if cap is not None:
            out = torch.tanh(out / cap) * cap
        return out

    # ------------------------------------------------------------------ whole forward

    def logits(self, tokens: Tensor) -> Tensor:
        """A whole forward pass: `tokens [batch, pos]` -> logits `[batch, pos, d_vocab]`."""
        positions = torch.arange(tokens.shape[-1], device=tokens.device)
        rotary = self.rotary(positions)
        x = self.embed(tokens)
        for layer in range(self.arch.n_layers):
            q, k, v = self.qkv(layer, x, rotary)
            z, _ = self.attend(layer, q, k, v, positions)
            attn = self.attn_out(layer, z)
            if self.parallel:
                x = x + attn + self.mlp(layer, x)
            else:
                mid = x + attn
                x = mid + self.mlp(layer, mid)
        return self.unembed(self.final(x))
