"""The `lens` backend: TransformerLens 4's TransformerBridge (eager attention, the Hugging
Face module underneath, classic hook names).

Sites map to hook names (`interp.models.sites.hook_name`). Where a bridge hook does not
mean what its name says, the site is computed from hooks that do:

* `resid_mid`: on TransformerLens 4.3's bridge `hook_resid_mid` is the same hook point as
  the MLP's input `ln2.hook_in`: a hook that *returns* a new tensor there changes what the
  MLP reads but not the residual stream that skips the MLP (one that edits the tensor in
  place, as `transformer_lens.patching` does, changes both). A resid_mid edit is therefore
  applied at `hook_attn_out`, as `attn_out := new_mid - resid_pre`, which changes both, as
  the residual stream does; `mlp_in` is the MLP-input-only edit at `ln2.hook_in`.
* `head_out` (one head's write, z W_O): read from `hook_z`, edited at `attn.hook_out`
  (the attention output before any post-attention norm) by adding the change.
* `q_in/k_in/v_in`: every head reads the block's input, so capturing gives `resid_pre`
  once per head; editing one head's input alone needs split inputs, which only the patching
  engine has.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import torch
from torch import nn

from ..architectures import Architecture, ModelWeights
from ..interventions import Intervention, Patch, apply_all
from ..sites import Site, hook_name


class LensBackend:
    name = "lens"

    def __init__(self, bridge, hf_model: nn.Module, arch: Architecture, weights: ModelWeights, has_lm_head: bool):
        self.bridge = bridge
        self._hf_model = hf_model
        self.arch, self.weights, self.has_lm_head = arch, weights, has_lm_head
        self.is_causal, self.parallel, self.n_layers = arch.is_causal, arch.block == "parallel", arch.n_layers

    def _w_o(self, layer: int) -> torch.Tensor:
        """W_O of `layer` as `[head, d_head, d_model]`."""
        a = self.arch
        return self.weights.layers[layer].w_o.detach().view(a.d_model, a.n_heads, a.d_head).permute(1, 2, 0)

    @property
    def hf_model(self) -> nn.Module:
        return self._hf_model

    def supports(self, site: Site, intervene: bool) -> str | None:
        if site.layer is not None and not 0 <= site.layer < self.n_layers:
            return f"layer {site.layer} is out of range: this model has layers 0..{self.n_layers - 1}"
        if site.kind == "resid_mid" and self.parallel:
            return ("this model runs attention and MLP in parallel (GPT-NeoX), so there is no residual stream "
                    "between them: use resid_pre, attn_out, mlp_in or mlp_out")
        if intervene and site.kind in ("q_in", "k_in", "v_in"):
            return (f"{site.kind} edits one head's input alone, which needs split inputs: the lens backend has "
                    f"one shared input per layer (edge-level methods in interp.patching split them)")
        if intervene and site.kind in ("pattern", "scores") and not self.is_causal:
            return ("TransformerLens 4.3's bridge ignores edits of attention patterns/scores on encoders; "
                    "edit z instead (z[q] := v[k] is a one-hot attention row), or load with backend='nnsight'")
        if site.kind == "scores" and not self.is_causal:
            return ("TransformerLens 4.3's bridge fills hook_attn_scores with the softmaxed pattern on encoders; "
                    "read pattern, or load with backend='nnsight' for the pre-softmax scores")
        if intervene and site.kind == "head_out" and self.arch.block == "post_norm":
            return ("on this post-norm encoder the bridge's attention output hook comes after the block's "
                    "LayerNorm, so a head's write cannot be edited there; edit z, or load with backend='nnsight'")
        return None

    def run(self, tokens, attention_mask, interventions: Sequence[Intervention], capture: Sequence[Site],
            stop_early: bool = False):
        for intervention in interventions:
            self._check(intervention.site, True)
        for site in capture:
            self._check(site, False)
        edits: dict[Site, list[Intervention]] = defaultdict(list)
        for intervention in interventions:
            edits[intervention.site.all_heads].append(intervention)
        captured: dict[Site, torch.Tensor] = {}
        scratch: dict[tuple, torch.Tensor] = {}
        wanted = {site.all_heads for site in capture}
        hooks: dict[str, list[Callable]] = defaultdict(list)

        def direct(site: Site):
            def hook(act, hook=None):
                if site in edits:
                    act = _edit(act, site, edits[site])
                if site in wanted:
                    captured[site] = act
                return act
            return hook

        def remember(key):
            def hook(act, hook=None):
                scratch[key] = act
            return hook

        derived_layers = {s.layer for s in list(edits) + list(wanted) if s.kind in ("resid_mid", "head_out")}
        for site in list(edits) + [s for s in wanted if s not in edits]:
            if site.kind in ("resid_mid", "head_out", "logits", "q_in", "k_in", "v_in"):
                continue
            hooks[_bridge_hook(site)].append(direct(site))
        for layer in sorted(l for l in derived_layers if l is not None):
            self._add_derived(layer, hooks, edits, wanted, captured, scratch, remember)
        for site in wanted:
            if site.kind in ("q_in", "k_in", "v_in"):
                hooks[f"blocks.{site.layer}.hook_resid_pre"].append(_capture_per_head(site, captured, self.arch.n_heads))
        stop = self._stop_hook(list(edits) + list(wanted)) if stop_early else None
        if stop is not None:
            hooks[stop].append(_raise_stop)  # after the hooks capturing at that point
        fwd_hooks = [(name, _chain(fns)) for name, fns in hooks.items()]
        try:
            out = self._forward(tokens, attention_mask, fwd_hooks, captured if not self.has_lm_head else None)
        except _StopForward:
            return None, captured
        logits_site = Site("logits")
        if logits_site in edits:
            out = _edit(out, logits_site, edits[logits_site])
        if logits_site in wanted:
            captured[logits_site] = out
        return out, captured

    # ------------------------------------------------------------------ internals

    def _stop_hook(self, sites: list[Site]) -> str | None:
        """The hook point at which every one of `sites` has been computed: the start of the block
        after the deepest one's (the deepest block's own start when only its residual input and
        the heads' inputs are needed there); None when the model must run to its end."""
        if not sites or any(site.kind == "logits" for site in sites):
            return None
        deepest = max(-1 if site.layer is None else site.layer for site in sites)
        at_input = all(site.kind in ("resid_pre", "q_in", "k_in", "v_in") for site in sites if site.layer == deepest)
        layer = deepest if deepest >= 0 and at_input else deepest + 1
        name = f"blocks.{layer}.hook_resid_pre"
        return name if layer < self.n_layers and name in self.bridge.hook_dict else None

    def _check(self, site: Site, intervene: bool) -> None:
        reason = self.supports(site, intervene)
        if reason is not None:
            raise ValueError(f"cannot {'intervene on' if intervene else 'capture'} {site}: {reason}")

    def _add_derived(self, layer, hooks, edits, wanted, captured, scratch, remember) -> None:
        """Hooks for resid_mid and head_out of one layer (see the module docstring)."""
        mid, head = Site("resid_mid", layer), Site("head_out", layer)
        if mid in edits or mid in wanted:
            hooks[f"blocks.{layer}.hook_resid_pre"].append(remember(("pre", layer)))
            attn_site = Site("attn_out", layer)

            def mid_hook(attn, hook=None):
                if attn_site in edits:
                    attn = _edit(attn, attn_site, edits[attn_site])
                if attn_site in wanted:
                    captured[attn_site] = attn
                pre = scratch[("pre", layer)]
                value = pre + attn
                if mid in edits:
                    value = _edit(value, mid, edits[mid])
                    attn = value - pre
                if mid in wanted:
                    captured[mid] = value
                return attn
            hooks[f"blocks.{layer}.hook_attn_out"] = [mid_hook]
        if head in edits or head in wanted:
            hooks[f"blocks.{layer}.attn.hook_z"].append(remember(("z", layer)))

            def head_hook(out, hook=None):
                z = scratch[("z", layer)]
                per_head = torch.einsum("bphe,hed->bphd", z, self._w_o(layer).to(z.dtype))
                new = _edit(per_head, head, edits[head]) if head in edits else per_head
                if head in wanted:
                    captured[head] = new
                return out + (new - per_head).sum(dim=2) if head in edits else out
            hooks[f"blocks.{layer}.attn.hook_out"].append(head_hook)

    def _forward(self, tokens, attention_mask, fwd_hooks, captured) -> torch.Tensor:
        if captured is None:
            return self.bridge.run_with_hooks(tokens, fwd_hooks=fwd_hooks, attention_mask=attention_mask)
        # An encoder without an LM head: the output is the last block's residual stream.
        last = f"blocks.{self.n_layers - 1}.hook_resid_post"
        holder: list[torch.Tensor] = []
        fwd_hooks = fwd_hooks + [(last, lambda act, hook: holder.append(act))]
        self.bridge.run_with_hooks(tokens, fwd_hooks=fwd_hooks, attention_mask=attention_mask)
        return holder[-1]


def _bridge_hook(site: Site) -> str:
    """The bridge's hook for a site read or edited directly. The MLP's input is `ln2.hook_in`
    (the bridge fires `hook_mlp_in` only after `set_use_hook_mlp_in(True)`)."""
    return f"blocks.{site.layer}.ln2.hook_in" if site.kind == "mlp_in" else hook_name(site)


def _edit(act: torch.Tensor, site: Site, interventions: list[Intervention]) -> torch.Tensor:
    sources = {i: x.source_activation() for i, x in enumerate(interventions) if isinstance(x, Patch)}
    return apply_all(act, site, interventions, sources)


class _StopForward(Exception):
    """Raised by a hook once a forward pass has computed everything asked of it."""


def _raise_stop(act, hook=None):
    raise _StopForward


def _chain(fns: list[Callable]) -> Callable:
    """One hook running `fns` in order, each seeing the previous one's result."""
    def hook(act, hook=None):
        for fn in fns:
            new = fn(act, hook)
            act = act if new is None else new
        return act
    return hook


def _capture_per_head(site: Site, captured: dict, n_heads: int) -> Callable:
    def hook(act, hook=None):
        captured[site] = act.unsqueeze(2).expand(-1, -1, n_heads, -1)
    return hook
