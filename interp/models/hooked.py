"""`HookedModel`: one vocabulary for every analysis, over TransformerLens 4's TransformerBridge.

The bridge wraps the Hugging Face module itself and fires TransformerLens's hook names
(`blocks.{l}.attn.hook_z`, `hook_pattern`, `hook_resid_pre`, ...). This class adds per-head
weight access (raw, or LayerNorm-folded on request), factored QK/OV circuits, input checks,
and a uniform output for encoders that carry no language-model head.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from jaxtyping import Float, Int
from transformer_lens import FactoredMatrix

from .cache import Cache
from .config import ModelConfig
from .errors import check_head, check_layer, check_tokens

HookFn = Callable[..., torch.Tensor | None]


class HookedModel:
    """A loaded transformer with hooks on every head. Build it with `interp.load_model`.

    Weights: `W_Q/W_K/W_V/W_O(layer, head)` give one head's matrix, `(layer)` all heads of a
    layer stacked on a leading head axis. By default they are the checkpoint's **raw** weights
    (what parameter-only methods like MAPS need). `processed=True` gives TransformerLens's
    processed weights instead: the preceding LayerNorm's scale and bias folded in, reading
    weights centred over d_model, writing weights centred, value biases folded into b_O
    (defined for pre-LN models only). The forward pass always runs the raw model.
    """

    def __init__(self, bridge, hf_model, tokenizer, cfg: ModelConfig):
        self.bridge = bridge
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.cfg = cfg

    def __repr__(self) -> str:
        c = self.cfg
        kind = "causal" if c.is_causal else "encoder"
        return (f"HookedModel({c.name!r}, {c.architecture}, {kind}, {c.n_layers} layers x "
                f"{c.n_heads} heads, d_model={c.d_model}, d_vocab={c.d_vocab})")

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    def hf_copy(self):
        """A plain Hugging Face model (the checkpoint's own class, eager attention, eval mode,
        on CPU, this model's dtype) holding this model's current weights, free of the
        bridge's wrappers: what `save_pretrained` and weight surgery such as head removal
        need. The bridge wraps the Hugging Face modules in place, so its state dict names
        every weight with `._original_component` segments; a fresh model reads its weights
        from those names."""
        original = self.hf_model
        fresh = type(original)._from_config(copy.deepcopy(original.config), attn_implementation="eager")
        fresh.to(self.dtype)
        wrapped = {name.replace("._original_component", ""): value
                   for name, value in original.state_dict().items()}
        fresh.load_state_dict({name: wrapped[name] for name in fresh.state_dict()}, strict=True)
        return fresh.eval()

    # ------------------------------------------------------------------ tokens

    def to_tokens(self, text: str | Sequence[str], prepend_bos: bool | None = None) -> Int[torch.Tensor, "batch pos"]:
        """Tokenize text (a list is right-padded). Causal models get a BOS token first, as in
        TransformerLens; encoders get their tokenizer's own [CLS] ... [SEP]."""
        if isinstance(text, str):
            text = [text]
        if len(text) == 0:
            raise ValueError("to_tokens needs at least one string, got an empty list")
        return self.bridge.to_tokens(list(text), prepend_bos=prepend_bos).to(self.device)

    def to_str_tokens(self, text_or_tokens: str | torch.Tensor, prepend_bos: bool | None = None) -> list[str]:
        """One string per token of a single text or a `[pos]` / `[1, pos]` token tensor."""
        if isinstance(text_or_tokens, str):
            tokens = self.to_tokens(text_or_tokens, prepend_bos=prepend_bos)[0]
        else:
            tokens = self._tokens(text_or_tokens)
            if tokens.shape[0] != 1:
                raise ValueError(f"to_str_tokens takes one sequence, got a batch of {tokens.shape[0]}")
            tokens = tokens[0]
        return self.tokenizer.convert_ids_to_tokens(tokens.tolist())

    def _tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return check_tokens(tokens, self.cfg.d_vocab, self.cfg.n_ctx).to(self.device)

    # ------------------------------------------------------------------ running

    @property
    def _output_hook(self) -> str:
        return f"blocks.{self.cfg.n_layers - 1}.hook_resid_post"

    def __call__(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `[batch, pos, d_vocab]`; for an encoder without an LM head, final hidden
        states `[batch, pos, d_model]` (see `cfg.has_lm_head`)."""
        return self.run_with_hooks(tokens, fwd_hooks=[], attention_mask=attention_mask)

    def run_with_cache(
        self,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        names_filter: str | Sequence[str] | Callable[[str], bool] | None = None,
    ) -> tuple[torch.Tensor, Cache]:
        """Run once, keeping activations. Returns `(output, cache)`; output as for `__call__`.

        `names_filter` limits what is kept (a hook name, a list of names, or a predicate).
        """
        tokens = self._tokens(tokens)
        keep = _as_predicate(names_filter)
        if names_filter is None:
            wanted = None
        elif self.cfg.has_lm_head:
            wanted = keep
        else:
            wanted = lambda name: keep(name) or name == self._output_hook  # noqa: E731
        with torch.no_grad():
            out, store = self.bridge.run_with_cache(
                tokens, names_filter=wanted, attention_mask=_mask(attention_mask, tokens))
        store = dict(store.items())
        if not self.cfg.has_lm_head:
            out = store[self._output_hook] if keep(self._output_hook) else store.pop(self._output_hook)
        return out, Cache(store, self)

    def run_with_hooks(
        self,
        tokens: torch.Tensor,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run with forward hooks `(hook_name, fn)`, where `fn(activation, hook)` returns a
        replacement activation or None. Hooks are removed afterwards. Gradients flow, so
        this also serves attribution methods."""
        tokens = self._tokens(tokens)
        for name, fn in fwd_hooks:
            if isinstance(name, str) and name not in self.bridge.hook_dict:
                raise KeyError(f"unknown hook name {name!r}; e.g. 'blocks.0.attn.hook_z', "
                               f"'blocks.0.hook_resid_pre' (see model.hook_names())")
            if not callable(fn):
                raise TypeError(f"hook for {name!r} must be callable, got {type(fn).__name__}")
        hooks = list(fwd_hooks)
        captured: list[torch.Tensor] = []
        if not self.cfg.has_lm_head:
            hooks.append((self._output_hook, lambda act, hook: captured.append(act)))
        out = self.bridge.run_with_hooks(tokens, fwd_hooks=hooks, attention_mask=_mask(attention_mask, tokens))
        return captured[-1] if captured else out

    def hook_names(self) -> list[str]:
        """Every hook name this model fires, in TransformerLens's naming."""
        return list(self.bridge.hook_dict)

    def pooled_embedding(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         normalize: bool = True,
                         fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = ()
                         ) -> Float[torch.Tensor, "batch d_model"]:
        """Mean of the final hidden states over unmasked positions, L2-normalised: the
        sentence embedding of sentence-transformers models such as all-MiniLM-L6-v2.
        `fwd_hooks` run as in `run_with_hooks`, and gradients flow (wrap in `torch.no_grad()`
        when none are needed)."""
        if self.cfg.is_causal:
            raise ValueError("pooled_embedding is for encoders (sentence embeddings); this model is causal")
        tokens = self._tokens(tokens)
        mask = torch.ones_like(tokens) if attention_mask is None else _mask(attention_mask, tokens)
        hidden = self.run_with_hooks(tokens, fwd_hooks=fwd_hooks, attention_mask=mask).float()
        weights = mask[..., None].float()
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    def encode(self, texts: Sequence[str], normalize: bool = True,
               fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = ()
               ) -> Float[torch.Tensor, "batch d_model"]:
        """Sentence embeddings of `texts` (padded together): see `pooled_embedding`. Without
        hooks it runs without gradients."""
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("encode takes a non-empty list of strings")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.cfg.n_ctx, return_tensors="pt")
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(fwd_hooks)):
            return self.pooled_embedding(enc["input_ids"], enc["attention_mask"], normalize=normalize,
                                         fwd_hooks=fwd_hooks)

    # ------------------------------------------------------------------ weights

    def _attn(self, layer: int):
        return self.bridge.blocks[check_layer(layer, self.cfg.n_layers)].attn

    def _pick(self, stacked: torch.Tensor, head: int | None) -> torch.Tensor:
        return stacked if head is None else stacked[check_head(head, self.cfg.n_heads)]

    def _require_pre_ln(self) -> None:
        if not self.cfg.pre_ln:
            raise ValueError(f"processed (LayerNorm-folded) weights are defined for pre-LN models only; "
                             f"{self.cfg.name} ({self.cfg.architecture}) puts LayerNorm after each sublayer")

    def _reading(self, name: str, layer: int, head: int | None, processed: bool) -> torch.Tensor:
        w = getattr(self._attn(layer), name).detach()  # [head, d_model, d_head]
        if processed:
            self._require_pre_ln()
            w = self.bridge.blocks[layer].ln1.w.detach()[None, :, None] * w
            w = w - w.mean(dim=1, keepdim=True)
        return self._pick(w, head)

    def W_Q(self, layer: int, head: int | None = None, *, processed: bool = False) -> Float[torch.Tensor, "... d_model d_head"]:
        """Query weights `[d_model, d_head]` (or `[head, d_model, d_head]` for a whole layer)."""
        return self._reading("W_Q", layer, head, processed)

    def W_K(self, layer: int, head: int | None = None, *, processed: bool = False) -> Float[torch.Tensor, "... d_model d_head"]:
        """Key weights `[d_model, d_head]` (or `[head, d_model, d_head]`)."""
        return self._reading("W_K", layer, head, processed)

    def W_V(self, layer: int, head: int | None = None, *, processed: bool = False) -> Float[torch.Tensor, "... d_model d_head"]:
        """Value weights `[d_model, d_head]` (or `[head, d_model, d_head]`)."""
        return self._reading("W_V", layer, head, processed)

    def W_O(self, layer: int, head: int | None = None, *, processed: bool = False) -> Float[torch.Tensor, "... d_head d_model"]:
        """Output weights `[d_head, d_model]` (or `[head, d_head, d_model]`)."""
        w = self._attn(layer).W_O.detach()
        if processed:
            self._require_pre_ln()
            w = w - w.mean(dim=-1, keepdim=True)
        return self._pick(w, head)

    def _ln_folded_bias(self, name: str, layer: int) -> torch.Tensor:
        """`b + ln1.b @ W` for b_Q, b_K or b_V: the bias once ln1's bias is folded in."""
        attn = self._attn(layer)
        ln_b = self.bridge.blocks[layer].ln1.b.detach()
        w = getattr(attn, name.replace("b_", "W_")).detach()
        return getattr(attn, name).detach() + torch.einsum("d,hde->he", ln_b, w)

    def _bias(self, name: str, layer: int, head: int | None, processed: bool) -> torch.Tensor:
        b = getattr(self._attn(layer), name).detach()  # [head, d_head]
        if processed:
            self._require_pre_ln()
            b = torch.zeros_like(b) if name == "b_V" else self._ln_folded_bias(name, layer)
        return self._pick(b, head)

    def b_Q(self, layer: int, head: int | None = None, *, processed: bool = False) -> torch.Tensor:
        """Query bias `[d_head]` (or `[head, d_head]`)."""
        return self._bias("b_Q", layer, head, processed)

    def b_K(self, layer: int, head: int | None = None, *, processed: bool = False) -> torch.Tensor:
        """Key bias `[d_head]` (or `[head, d_head]`)."""
        return self._bias("b_K", layer, head, processed)

    def b_V(self, layer: int, head: int | None = None, *, processed: bool = False) -> torch.Tensor:
        """Value bias `[d_head]` (or `[head, d_head]`); zero when processed (folded into b_O)."""
        return self._bias("b_V", layer, head, processed)

    def b_O(self, layer: int, *, processed: bool = False) -> Float[torch.Tensor, "d_model"]:
        """The attention layer's output bias `[d_model]`, shared by its heads."""
        attn = self._attn(layer)
        b = attn.b_O.detach()
        if processed:
            self._require_pre_ln()
            b = b + torch.einsum("he,hed->d", self._ln_folded_bias("b_V", layer), attn.W_O.detach())
            b = b - b.mean()
        return b

    def OV(self, layer: int, head: int | None = None, *, processed: bool = False) -> FactoredMatrix:
        """OV circuit W_V @ W_O as a `FactoredMatrix` `[d_model, d_model]` (never materialised
        unless asked; `.AB` does); a whole layer gives `[head, d_model, d_model]`."""
        return FactoredMatrix(self.W_V(layer, head, processed=processed), self.W_O(layer, head, processed=processed))

    def QK(self, layer: int, head: int | None = None, *, processed: bool = False) -> FactoredMatrix:
        """QK circuit W_Q @ W_K.T as a `FactoredMatrix` `[d_model, d_model]`: the bilinear form
        between a query's and a key's residual vectors (before the 1/sqrt(d_head) scale)."""
        return FactoredMatrix(self.W_Q(layer, head, processed=processed),
                              self.W_K(layer, head, processed=processed).transpose(-2, -1))

    def W_E(self, *, processed: bool = False) -> Float[torch.Tensor, "d_vocab d_model"]:
        """Token embedding matrix (processed: centred over d_model)."""
        w = self.bridge.W_E.detach()
        if processed:
            self._require_pre_ln()
            w = w - w.mean(dim=-1, keepdim=True)
        return w

    def W_U(self, *, processed: bool = False) -> Float[torch.Tensor, "d_model d_vocab"]:
        """Unembedding matrix. For an encoder without a trained LM head (e.g. `minilm`) this
        is the tied token embedding `W_E.T`, the matrix its pretraining used to unembed.
        Processed: the final LayerNorm's scale folded in, centred over d_model and over vocab."""
        if not self.cfg.has_lm_head:
            if processed:
                self._require_pre_ln()
            return self.bridge.W_E.detach().T
        w = self.bridge.W_U.detach()
        if processed:
            self._require_pre_ln()
            w = self.bridge.ln_final.w.detach()[:, None] * w
            w = w - w.mean(dim=0, keepdim=True)
            w = w - w.mean(dim=-1, keepdim=True)
        return w


def _mask(attention_mask: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    if attention_mask.shape != tokens.shape:
        raise ValueError(f"attention_mask must have the tokens' shape {tuple(tokens.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    return attention_mask.to(tokens.device)


def _as_predicate(names_filter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if callable(names_filter):
        return names_filter
    names = set(names_filter)
    return lambda name: name in names
