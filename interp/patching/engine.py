"""Cached runs and suffix runs of any described causal architecture, built for patching.

Three ideas make sweeps fast without changing a single number:

* **Suffix runs.** A patch at layer `l` changes nothing before `l`, so a patched run starts
  from the cached residual stream at `l` and runs only layers `l..L-1`.
* **Causal prefixes.** In a causal model a patch at position `p` changes nothing at positions
  before `p`, so a patched run recomputes only positions `p0..` (`p0 <= p`); queries there read
  the earlier positions' keys and values straight from the cached base run. The last layer
  is computed only at the answer positions, the only ones a metric reads.
* **Batching.** Patched runs carry a leading variant axis `N` before the batch axis `B`:
  `x [N, B, pos, d_model]`, while cached base runs are `[B, ...]` and broadcast across variants.

The arithmetic is `interp.models.functional.Functional`, which reads the model's
architecture description, so one engine serves every described family. Before a sweep,
`check` compares the engine's clean logits with the model's own and refuses on a mismatch.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..models import HookedModel, UnsupportedArchitecture
from ..models.functional import Functional
from ..models.loading import PARITY_TOLERANCE


class EngineMismatch(RuntimeError):
    """The engine's clean run disagrees with the model's own forward pass."""


@dataclass
class RunCache:
    """Every activation a sweep reads, per layer, for one batch of prompts (no variant axis).

    Shapes: resid_pre/attn_out/resid_mid/mlp_out/resid_post `[B, pos, d_model]` (resid_mid
    empty for parallel blocks); q, z `[B, pos, head, d_head]`; k, v `[B, pos, kv_head, d_head]`
    (q and k after rotary embeddings); pattern `[B, head, q, k]`.
    """

    resid_pre: list[torch.Tensor] = field(default_factory=list)
    q: list[torch.Tensor] = field(default_factory=list)
    k: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)
    pattern: list[torch.Tensor] = field(default_factory=list)
    z: list[torch.Tensor] = field(default_factory=list)
    attn_out: list[torch.Tensor] = field(default_factory=list)
    resid_mid: list[torch.Tensor] = field(default_factory=list)
    mlp_in: list[torch.Tensor] = field(default_factory=list)
    mlp_out: list[torch.Tensor] = field(default_factory=list)
    resid_post: list[torch.Tensor] = field(default_factory=list)


def mlp_rows(run: RunCache, layer: int, p0: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The MLP input and output of `run`'s block `layer` at positions `p0..` (`Engine.block_output`'s
    `base_mlp`)."""
    return run.mlp_in[layer][:, p0:], run.mlp_out[layer][:, p0:]


class Engine:
    """Forward passes of a causal `HookedModel` from plain tensors, cached or from a layer on."""

    def __init__(self, model: HookedModel):
        if not model.cfg.is_causal:
            raise ValueError(f"the patching engine needs a causal model; {model.cfg.name} is an encoder "
                             f"({model.cfg.architecture}), whose every position sees every other")
        try:
            self.f: Functional = model.functional()
        except UnsupportedArchitecture as err:
            raise ValueError(f"the patching engine cannot run {model.cfg.name}: {err}") from err
        self.model = model
        self.cfg = model.cfg
        self.n_layers = model.cfg.n_layers
        # the key/value head each query head reads, [n_heads]
        self.kv_of = torch.tensor([model.cfg.kv_head(h) for h in range(model.cfg.n_heads)], device=model.device)
        self._rotary: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}

    @contextmanager
    def sweeping(self):
        """The context of a sweep's patched runs: no gradients, and the largest short-lived
        activations in buffers reused from run to run (`Functional.reusing_buffers`)."""
        with torch.no_grad(), self.f.reusing_buffers():
            yield

    # ------------------------------------------------------------ positions

    def rotary(self, n_pos: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """cos/sin at `positions` (any shape), from a table of the first `n_pos` positions."""
        if n_pos not in self._rotary:
            self._rotary[n_pos] = self.f.rotary(torch.arange(n_pos, device=self.model.device))
        table = self._rotary[n_pos]
        return None if table is None else (table[0][positions], table[1][positions])

    # ------------------------------------------------------------ blocks

    def block_output(self, layer: int, resid_pre: torch.Tensor, attn_out: torch.Tensor,
                     base_mlp: tuple[torch.Tensor, torch.Tensor] | None = None, into: str | None = None
                     ) -> torch.Tensor:
        """The residual leaving block `layer` given its input and attention output `[..., pos,
        d_model]`. With `base_mlp`, the unpatched run's MLP input and output at the same rows
        `[B, pos, d_model]`, the MLP runs only where its input differs from the unpatched one (it
        acts on each position alone, so the others keep the unpatched output).

        With `into`, inside a sweep, the residual is written into that buffer (`resid_pre` may
        be it: it is then updated in place) and the MLP's output into the buffer "mlp_out": the
        same additions in the same order, without fresh memory for them. The result is valid
        until the next use of `into`."""
        f = self.f
        if into is None or not f.reusing:
            mlp_in = resid_pre if f.parallel else resid_pre + attn_out
            mlp_out = self._mlp(layer, mlp_in, base_mlp)
            return resid_pre + attn_out + mlp_out if f.parallel else mlp_in + mlp_out
        resid = f.scratch(into, torch.broadcast_shapes(resid_pre.shape, attn_out.shape))
        if f.parallel:
            mlp_out = self._mlp(layer, resid_pre, base_mlp, "mlp_out")
            return torch.add(resid_pre, attn_out, out=resid).add_(mlp_out)
        torch.add(resid_pre, attn_out, out=resid)
        return resid.add_(self._mlp(layer, resid, base_mlp, "mlp_out"))

    def _mlp(self, layer: int, x: torch.Tensor, base_mlp: tuple[torch.Tensor, torch.Tensor] | None,
             into: str | None = None) -> torch.Tensor:
        """The MLP of `block_output`: everywhere, or where its input changed (`base_mlp`)."""
        if base_mlp is None:
            return self.f.mlp(layer, x, into)
        return self.mlp_where_changed(layer, x, *base_mlp, into=into)

    def mlp_where_changed(self, layer: int, x: torch.Tensor, base_in: torch.Tensor, base_out: torch.Tensor,
                          into: str | None = None) -> torch.Tensor:
        """`mlp(layer, x)` for `x [N, B, P, d_model]`, computed only at the rows that differ from
        the unpatched run's MLP input `base_in [B, P, d_model]`; every other row keeps `base_out`.
        A patch at one position changes one row of its own layer: most of that MLP's work saved.
        `into`: as in `Functional.mlp`, where every row changed."""
        return where_changed(lambda rows: self.f.mlp(layer, rows, into), x, base_in, base_out)

    def attn_out_where_changed(self, layer: int, z: torch.Tensor, base: RunCache, p0: int) -> torch.Tensor:
        """`attn_out(layer, z)` for patched `z [N, B, P, head, d_head]` (positions `p0..`),
        computed only at the rows whose z differs from `base`'s."""
        return where_changed(lambda rows: self.f.attn_out(layer, rows), z, base.z[layer][:, p0:],
                             base.attn_out[layer][:, p0:])

    def projections_where_changed(self, layer: int, x: torch.Tensor, base: RunCache, p0: int,
                                  parts: str = "qkv") -> list[torch.Tensor]:
        """The `parts` of q, k, v (rotated) entering `layer` for the residual `x [N, B, P, d_model]`
        at positions `p0..`, projected only at the rows that differ from `base`'s input there;
        the others are `base`'s own. The first layer of a suffix run mostly has one such row."""
        changed = changed_rows(x, base.resid_pre[layer][:, p0:])
        if changed.all():  # nothing to keep: no gathering and scattering of rows
            positions = torch.arange(p0, p0 + x.shape[-2], device=x.device)
            return list(self._projection(parts)(layer, x, self.rotary(base.resid_pre[0].shape[1], positions)))
        outs = [getattr(base, part)[layer][:, p0:] for part in parts]
        outs = [t.expand(*changed.shape, *t.shape[2:]).clone() for t in outs]
        if changed.any():
            rows = x[changed].unsqueeze(-2)  # [M, 1, d_model]
            rot = self.rotary(base.resid_pre[0].shape[1], changed.nonzero()[:, 2:3] + p0)  # [M, 1, rotary_dim]
            for out, new in zip(outs, self._projection(parts)(layer, rows, rot)):
                out[changed] = new[:, 0]
        return outs

    def with_prefix(self, which: str, cached: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """The keys or values (`which`) of a suffix run at every position, `[..., B, p0 + P,
        H_kv, d_head]`: the base run's `cached [B, p0, H_kv, d_head]` before the run's own `new
        [..., B, P, H_kv, d_head]`. Underneath it is head-major, a transposed view of `[..., B,
        H_kv, pos, d_head]`, the layout `Functional.attend`'s products read, so they copy
        nothing; inside a sweep it lives in the buffer `which` (`Functional.scratch`), valid
        until the next call for the same `which`."""
        p0 = cached.shape[1]
        *lead, n_new, n_kv, d_head = new.shape
        out = self.f.scratch(which, (*lead, n_kv, p0 + n_new, d_head))
        out[..., :p0, :] = cached.transpose(1, 2)
        out[..., p0:, :] = new.transpose(-3, -2)
        return out.transpose(-3, -2)

    def _projection(self, parts: str):
        """`Functional.qkv` for parts "qkv", `Functional.keys_values` for "kv"."""
        return self.f.qkv if parts == "qkv" else self.f.keys_values

    # ------------------------------------------------------------ whole runs

    def run(self, tokens: torch.Tensor, track_grad: bool = False) -> RunCache:
        """A full forward of `tokens [B, pos]`, keeping every activation a sweep reads.

        With `track_grad`, activations join an autograd graph rooted at the embeddings (the
        weights themselves stay constants), so gradients with respect to them can be read.
        """
        n_pos = tokens.shape[1]
        positions = torch.arange(n_pos, device=tokens.device)
        rot = self.rotary(n_pos, positions)
        x = self.f.embed(tokens)
        if track_grad:
            x.requires_grad_(True)
        cache = RunCache()
        for layer in range(self.n_layers):
            q, k, v = self.f.qkv(layer, x, rot)
            z, pattern = self.f.attend(layer, q, k, v, positions)
            attn = self.f.attn_out(layer, z)
            mid = x if self.f.parallel else x + attn
            # A node of its own under autograd, so its gradient is the MLP path's alone.
            mlp_in = mid.clone() if track_grad else mid
            out = self.f.mlp(layer, mlp_in)
            for name, value in (("resid_pre", x), ("q", q), ("k", k), ("v", v), ("pattern", pattern), ("z", z),
                                ("attn_out", attn), ("mlp_in", mlp_in), ("mlp_out", out)):
                getattr(cache, name).append(value)
            if not self.f.parallel:
                cache.resid_mid.append(mid)
            x = x + attn + out if self.f.parallel else mid + out
            cache.resid_post.append(x)
        return cache

    def suffix(self, base: RunCache, layer: int, site: str, x: torch.Tensor, p0: int,
               answer_pos: torch.Tensor) -> torch.Tensor:
        """Continue a patched run to the end; return the final-normed residual at the answer
        positions.

        Args:
            base: the unpatched run whose positions `< p0` the patched run shares.
            layer, site: where `x` stands: "pre" (entering block `layer`) or "post" (leaving it).
            x: `[N, B, pos - p0, d_model]`, the patched residual at positions `p0..`.
            answer_pos: `[B]` absolute positions the metric reads (all `>= p0`).
        Returns:
            `[N, B, d_model]`.
        """
        rows = torch.arange(x.shape[1], device=x.device)
        n_pos = base.resid_pre[0].shape[1]
        new_pos = torch.arange(p0, p0 + x.shape[2], device=x.device)
        if site == "post":
            layer += 1
        if layer == self.n_layers:
            return self.f.final(x[:, rows, answer_pos - p0])
        rot = self.rotary(n_pos, new_pos)
        for j in range(layer, self.n_layers):
            last = j == self.n_layers - 1  # only the answer positions' queries matter there
            parts = "kv" if last else "qkv"
            if j == layer:
                projected = self.projections_where_changed(j, x, base, p0, parts)
            else:  # used up by the attention below, before the next layer reuses the buffers
                projected = self._projection(parts)(j, x, rot, buffered=True)
            k, v = projected[-2:]
            keys = self.with_prefix("keys", base.k[j][:, :p0], k)
            values = self.with_prefix("values", base.v[j][:, :p0], v)
            if last:
                x = x[:, rows, answer_pos - p0].unsqueeze(2)
                q = self.f.queries(j, x, self.rotary(n_pos, answer_pos.view(-1, 1)))
                # each prompt's answer query sees its own keys; later positions are masked
                z, _ = self.f.attend(j, q, keys, values, answer_pos.view(1, -1, 1))
                return self.f.final(self.block_output(j, x, self.f.attn_out(j, z)).squeeze(2))
            z, _ = self.f.attend(j, projected[0], keys, values, new_pos)
            x = self.block_output(j, x, self.f.attn_out(j, z, into="attn_out"), into="resid")
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ the self-check

    def check(self, tokens: torch.Tensor, run: RunCache, answer_pos: torch.Tensor) -> None:
        """Refuse when this engine's logits differ from the model's own forward pass beyond the
        dtype's tolerance (an architecture described wrongly).

        Compared: every position of the prompt whose answer comes last, up to its answer. A
        wrong description (norms, positions, scaling, grouped heads, windows) shows at every
        prompt, so one prompt at all its positions catches it as well as every prompt at its
        answer, for a forward pass of one prompt instead of the batch (on the GPT-2-small shape
        the check cost half of EAP's forward and backward)."""
        i = int(answer_pos.argmax())
        n = int(answer_pos[i]) + 1
        ours = self.f.unembed(self.f.final(run.resid_post[-1][i, :n])).float()
        theirs = self.model(tokens[i:i + 1, :n])[0].float()
        scale = max(1.0, float(theirs.abs().max()))
        diff = float((ours - theirs).abs().max())
        tolerance = PARITY_TOLERANCE[self.model.dtype] * scale
        if not diff <= tolerance:
            raise EngineMismatch(
                f"the patching engine's logits differ from the model's by up to {diff:.3g} (tolerance {tolerance:.3g}) "
                f"on {self.cfg.name} ({self.cfg.family}): its architecture description does not match this model, "
                f"so no patching result would be right. Please report this model's config.")


def changed_rows(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """`[N, B, P]`: where the patched `x [N, B, P, ...]` differs from the unpatched `base [B, P, ...]`
    (`[B, P]` for an `x` without the variant axis)."""
    return (x != base).flatten(-(base.ndim - 2)).any(-1)


def where_changed(fn, x: torch.Tensor, base_in: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
    """`fn(x)` for a position-wise `fn` and `x [N, B, P, ...]`, computed only at the rows that
    differ from the unpatched input `base_in [B, P, ...]`; every other row keeps `base_out [B, P, ...]`."""
    changed = changed_rows(x, base_in)
    if changed.all():  # nothing to keep: no gathering and scattering of rows
        return fn(x)
    out = base_out.expand(*changed.shape, *base_out.shape[2:]).clone()
    if changed.any():
        out[changed] = fn(x[changed])
    return out
