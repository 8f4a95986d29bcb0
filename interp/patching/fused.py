"""A plain-tensor forward pass of a GPT-2-architecture model, built for patching sweeps.

Two things make it fast without changing a single number:

* **Suffix runs.** A patch at layer `l` changes nothing before `l`, so a patched run starts
  from the cached residual stream at `l` and runs only layers `l..L-1`.
* **Causal prefixes.** In a causal model a patch at position `p` changes nothing at positions
  before `p`, so a patched run recomputes only positions `p0..` (`p0 <= p`); queries there read
  the earlier positions' keys and values straight from the cached base run. The last layer
  is computed only at the answer positions, the only ones a metric reads.

Patched runs carry a leading variant axis `N` before the batch axis `B`: `x [N, B, pos, d_model]`,
while cached base runs are `[B, ...]` and broadcast across variants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from ..models import HookedModel


@dataclass
class LayerWeights:
    ln1: tuple[torch.Tensor, torch.Tensor]
    w_qkv: torch.Tensor   # [d_model, 3 * d_model]  (Conv1D layout: x @ w)
    b_qkv: torch.Tensor   # [3 * d_model]
    w_o: torch.Tensor     # [d_model, d_model], rows grouped by head
    b_o: torch.Tensor     # [d_model]
    ln2: tuple[torch.Tensor, torch.Tensor]
    w_in: torch.Tensor    # [d_model, d_mlp]
    b_in: torch.Tensor
    w_out: torch.Tensor   # [d_mlp, d_model]
    b_out: torch.Tensor


@dataclass
class RunCache:
    """Every activation a sweep reads, per layer, for one batch of prompts (no variant axis).

    Shapes: resid_pre/resid_mid/attn_out/mlp_out/resid_post `[B, pos, d_model]`;
    q/k/v/z `[B, pos, head, d_head]` (TransformerLens's layout); pattern `[B, head, q, k]`.
    `final` is `[N, B, d_model]`: the last residual at the answer positions, before ln_f.
    """

    resid_pre: list[torch.Tensor] = field(default_factory=list)
    q: list[torch.Tensor] = field(default_factory=list)
    k: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)
    pattern: list[torch.Tensor] = field(default_factory=list)
    z: list[torch.Tensor] = field(default_factory=list)
    attn_out: list[torch.Tensor] = field(default_factory=list)
    resid_mid: list[torch.Tensor] = field(default_factory=list)
    mlp_out: list[torch.Tensor] = field(default_factory=list)
    resid_post: list[torch.Tensor] = field(default_factory=list)


class FusedGPT2:
    """Forward passes of a GPT-2-architecture `HookedModel` from plain tensors.

    It reads the Hugging Face module's own parameters (no copy), runs in the model's dtype
    and device, and is checked against TransformerLens's patching functions in the tests.
    """

    def __init__(self, model: HookedModel):
        hf = model.hf_model
        config = hf.config
        if config.model_type != "gpt2":
            raise NotImplementedError(
                f"the fused patching engine supports GPT-2-architecture models; {model.cfg.name} is "
                f"{config.model_type!r}")
        if getattr(config, "scale_attn_by_inverse_layer_idx", False) or getattr(config, "reorder_and_upcast_attn", False):
            raise NotImplementedError("GPT-2 variants with scale_attn_by_inverse_layer_idx or "
                                      "reorder_and_upcast_attn are not supported by the fused engine")
        self.cfg = model.cfg
        self.n_heads, self.d_head = model.cfg.n_heads, model.cfg.d_head
        self.scale = 1 / math.sqrt(self.d_head) if config.scale_attn_weights else 1.0
        self.eps = config.layer_norm_epsilon
        self.act = ACT2FN[config.activation_function]
        t = hf.transformer
        self.w_e, self.w_pos = t.wte.weight.detach(), t.wpe.weight.detach()
        self.ln_f = (t.ln_f.weight.detach(), t.ln_f.bias.detach())
        self.w_u = hf.lm_head.weight.detach().T  # [d_model, d_vocab]
        self.b_u = None if hf.lm_head.bias is None else hf.lm_head.bias.detach()
        self.layers = [
            LayerWeights(
                ln1=(b.ln_1.weight.detach(), b.ln_1.bias.detach()),
                w_qkv=b.attn.c_attn.weight.detach(), b_qkv=b.attn.c_attn.bias.detach(),
                w_o=b.attn.c_proj.weight.detach(), b_o=b.attn.c_proj.bias.detach(),
                ln2=(b.ln_2.weight.detach(), b.ln_2.bias.detach()),
                w_in=b.mlp.c_fc.weight.detach(), b_in=b.mlp.c_fc.bias.detach(),
                w_out=b.mlp.c_proj.weight.detach(), b_out=b.mlp.c_proj.bias.detach(),
            )
            for b in t.h
        ]

    # ------------------------------------------------------------ pieces

    def _ln(self, x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), wb[0], wb[1], self.eps)

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.addmm(b, x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[1])

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., pos, d_model]` -> `[..., pos, head, d_head]`."""
        return x.view(*x.shape[:-1], self.n_heads, self.d_head)

    def qkv(self, layer: int, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values `[..., pos, head, d_head]` of the residual `[..., pos, d_model]`."""
        w = self.layers[layer]
        q, k, v = self._linear(self._ln(resid, w.ln1), w.w_qkv, w.b_qkv).split(self.cfg.d_model, dim=-1)
        return self.heads(q), self.heads(k), self.heads(v)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal attention of queries at absolute positions `q_pos` over keys at 0..K-1.

        q `[..., Q, head, d_head]`, k/v `[..., K, head, d_head]`, q_pos `[Q]` or `[..., Q]`.
        Returns z `[..., Q, head, d_head]` and pattern `[..., head, Q, K]`.
        """
        q, k, v = q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        keys = torch.arange(k.shape[-2], device=k.device)
        future = keys > q_pos.unsqueeze(-1)  # [..., Q, K]
        if future.ndim > 2:
            future = future.unsqueeze(-3)    # broadcast over heads
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
        pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(pattern, v).transpose(-3, -2), pattern

    def attn_out(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """`z [..., pos, head, d_head]` -> attention output `[..., pos, d_model]` (with b_O)."""
        w = self.layers[layer]
        return self._linear(z.flatten(-2), w.w_o, w.b_o)

    def mlp(self, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
        w = self.layers[layer]
        return self._linear(self.act(self._linear(self._ln(resid_mid, w.ln2), w.w_in, w.b_in)), w.w_out, w.b_out)

    def _mlp_where_changed(self, layer: int, x: torch.Tensor, base_mid: torch.Tensor,
                           base_out: torch.Tensor) -> torch.Tensor:
        """`mlp(layer, x)` for `x [N, B, P, d_model]`, computed only at the rows that differ
        from the unpatched run's `base_mid [B, P, d_model]`: the MLP acts on each position
        alone, so every other row keeps the cached `base_out`. A patch at one position leaves
        the rest of its layer unchanged, which makes this most of the layer's MLP work saved."""
        changed = (x != base_mid).any(dim=-1)  # [N, B, P]
        out = base_out.expand_as(x).clone()
        if changed.any():
            out[changed] = self.mlp(layer, x[changed])
        return out

    def final(self, resid: torch.Tensor) -> torch.Tensor:
        """The last residual `[..., d_model]` through ln_f (ready to unembed)."""
        return self._ln(resid, self.ln_f)

    # ------------------------------------------------------------ whole runs

    def run(self, tokens: torch.Tensor, track_grad: bool = False) -> RunCache:
        """A full forward of `tokens [B, pos]`, keeping every activation a sweep reads.

        With `track_grad`, activations join an autograd graph rooted at the embeddings (the
        weights themselves stay constants), so gradients with respect to them can be read.
        """
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.w_e[tokens] + self.w_pos[positions]
        if track_grad:
            x.requires_grad_(True)
        cache = RunCache()
        for layer in range(len(self.layers)):
            q, k, v = self.qkv(layer, x)
            z, pattern = self.attend(q, k, v, positions)
            attn = self.attn_out(layer, z)
            mid = x + attn
            out = self.mlp(layer, mid)
            for name, value in (("resid_pre", x), ("q", q), ("k", k), ("v", v), ("pattern", pattern), ("z", z),
                                ("attn_out", attn), ("resid_mid", mid), ("mlp_out", out)):
                getattr(cache, name).append(value)
            x = mid + out
            cache.resid_post.append(x)
        return cache

    def suffix(self, base: RunCache, layer: int, site: str, x: torch.Tensor, p0: int,
               answer_pos: torch.Tensor) -> torch.Tensor:
        """Continue a patched run to the end; return ln_f of the residual at the answer positions.

        Args:
            base: the unpatched run whose positions `< p0` the patched run shares.
            layer, site: where `x` stands: "pre" (entering block `layer`), "mid" (after its
                attention), or "post" (leaving it).
            x: `[N, B, pos - p0, d_model]`, the patched residual at positions `p0..`.
            answer_pos: `[B]` absolute positions the metric reads (all `>= p0`).
        Returns:
            `[N, B, d_model]`.
        """
        n_layers = len(self.layers)
        rows = torch.arange(x.shape[1], device=x.device)
        new_pos = torch.arange(p0, p0 + x.shape[2], device=x.device)
        if site == "mid":
            if layer == n_layers - 1:
                x = x[:, rows, answer_pos - p0]
                return self.final(x + self.mlp(layer, x))
            x = x + self._mlp_where_changed(layer, x, base.resid_mid[layer][:, p0:], base.mlp_out[layer][:, p0:])
            layer += 1
        elif site == "post":
            layer += 1
        if layer == n_layers:
            return self.final(x[:, rows, answer_pos - p0])
        for j in range(layer, n_layers):
            q, k, v = self.qkv(j, x)
            keys = torch.cat([base.k[j][:, :p0].expand(*k.shape[:2], p0, *k.shape[3:]), k], dim=2)
            values = torch.cat([base.v[j][:, :p0].expand(*v.shape[:2], p0, *v.shape[3:]), v], dim=2)
            if j == n_layers - 1:  # only the answer positions matter from here on
                x = x[:, rows, answer_pos - p0].unsqueeze(2)
                q = q[:, rows, answer_pos - p0].unsqueeze(2)
                z, _ = self.attend(q, keys, values, answer_pos.view(1, -1, 1))
                mid = x + self.attn_out(j, z)
                return self.final((mid + self.mlp(j, mid)).squeeze(2))
            z, _ = self.attend(q, keys, values, new_pos)
            mid = x + self.attn_out(j, z)
            x = mid + self.mlp(j, mid)
        raise AssertionError("unreachable")
