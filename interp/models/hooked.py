"""`HookedModel`: one vocabulary for every analysis, whatever runs the model underneath.

Analyses read weights through the views here (raw, or norm-folded on request; per query
head, grouped-query attention included) and run the model through `run` with sites and
interventions (`interp.models.sites`, `interp.models.interventions`). The backend (today
TransformerLens's bridge) is an implementation detail of this module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from jaxtyping import Bool, Float, Int
from transformer_lens import FactoredMatrix

from .architectures import Architecture, ModelWeights, UnsupportedArchitecture, unwrapped_parameters
from .backends.base import Backend
from .cache import Cache
from .config import ModelConfig
from .errors import check_head, check_layer, check_tokens
from .functional import Functional
from .interventions import Intervention
from .sites import KV_KINDS, Site, parse
from .tokens import encode_text, pad_batch, pad_token_id


@dataclass
class Collected:
    """Activations of many prompts, run in batches: `activations[site]` is `[batch, ...]`
    (float32, CPU); `tokens [batch, pos]`, `mask [batch, pos]` (True on real tokens) and
    `str_tokens[b]` (the tokens of prompt b at its real positions)."""

    activations: dict[Site, torch.Tensor]
    tokens: torch.Tensor
    mask: torch.Tensor
    str_tokens: list[list[str]]

    def __getitem__(self, site: Site | str) -> torch.Tensor:
        return self.activations[parse(site)]

    def stack(self, kind: str, layers: Iterable[int]) -> torch.Tensor:
        """One site kind of several layers stacked on a leading layer axis `[layer, batch, ...]`."""
        return torch.stack([self.activations[Site(kind, layer)] for layer in layers])


class HookedModel:
    """A loaded transformer with every head's activations and weights at hand. Build it with
    `interp.load_model`.

    Weights: `W_Q/W_K/W_V/W_O(layer, head)` give one head's matrix, `(layer)` all heads of a
    layer stacked on a leading head axis. They are indexed by **query head**: under grouped-
    query attention `W_K(l, h)` and `W_V(l, h)` are the key/value head that query head h reads
    (`cfg.kv_head(h)`), and `W_K(l)` stacks one matrix per query head; `kv_heads=True` gives
    the key/value heads themselves. By default weights are the checkpoint's **raw** weights (what
    parameter-only methods like MAPS need). `processed=True` folds the pre-attention norm's
    scale (and a LayerNorm's bias) into the reading weights; in LayerNorm models it also
    centres reading and writing weights over d_model, as TransformerLens's processed weights
    (pre-norm models only). The forward pass always runs the raw model.
    """

    def __init__(self, backend: Backend, arch: Architecture, weights: ModelWeights, tokenizer, cfg: ModelConfig):
        self._backend = backend
        self.arch = arch
        self.weights = weights
        self.tokenizer = tokenizer
        self.cfg = cfg
        self._functional: Functional | None = None

    def __repr__(self) -> str:
        c = self.cfg
        kind = "causal" if c.is_causal else "encoder"
        kv = f" ({c.n_kv_heads} key/value heads)" if c.n_kv_heads != c.n_heads else ""
        return (f"HookedModel({c.name!r}, {c.architecture}, {kind}, {c.n_layers} layers x {c.n_heads} heads{kv}, "
                f"d_model={c.d_model}, d_vocab={c.d_vocab}, backend={self.backend_name!r})")

    @property
    def backend_name(self) -> str:
        return self._backend.name

    @property
    def device(self) -> torch.device:
        """Where token tensors go: the backend's input device when it names one (a model on
        NDIF has no weights here), else the token embedding's."""
        return getattr(self._backend, "device", None) or self.weights.w_e.device

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self._backend, "dtype", None) or self.weights.w_e.dtype

    def functional(self) -> Functional:
        """The plain-tensor forward of this model (causal models of a described family),
        built on first use from the same weights the backend runs."""
        if self._functional is None:
            self._functional = Functional(self.arch, self.weights)
        return self._functional

    def hf_copy(self):
        """A plain Hugging Face model (the checkpoint's own class, eager attention, eval mode,
        on CPU, this model's dtype) holding this model's current weights, free of any backend
        wrappers: what `save_pretrained` and weight surgery such as head removal need."""
        original = self._backend.hf_model
        fresh = type(original)._from_config(copy.deepcopy(original.config), attn_implementation="eager")
        fresh.to(self.dtype)
        current = unwrapped_parameters(original)
        fresh.load_state_dict({name: current[name].cpu() for name in fresh.state_dict()}, strict=True)
        return fresh.eval()

    # ------------------------------------------------------------------ tokens

    def to_tokens(self, text: str | Sequence[str], prepend_bos: bool | None = None) -> Int[torch.Tensor, "batch pos"]:
        """Tokenize text (a list is right-padded). Causal models get one BOS token first (EOS
        when the tokenizer has no BOS; `prepend_bos=False` for none); encoders get their
        tokenizer's own [CLS] ... [SEP]. See `interp.models.tokens`."""
        return self.tokenize(text, prepend_bos=prepend_bos)[0]

    def tokenize(self, prompts: str | Sequence[str] | torch.Tensor, attention_mask: torch.Tensor | None = None,
                 prepend_bos: bool | None = None) -> tuple[Int[torch.Tensor, "batch pos"], Bool[torch.Tensor, "batch pos"]]:
        """`tokens [batch, pos]` (on the model's device) and a bool `mask [batch, pos]` from
        texts (each tokenized alone, then right-padded) or from a `[batch, pos]` token tensor
        with an optional 0/1 `attention_mask`."""
        if isinstance(prompts, torch.Tensor):
            if prepend_bos is not None:
                raise ValueError("prepend_bos applies to texts; token tensors are used as given")
            tokens = self._tokens(prompts)
            if attention_mask is None:
                return tokens, torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
            return tokens, _mask(attention_mask, tokens).bool()
        if attention_mask is not None:
            raise ValueError("attention_mask goes with a token tensor; texts are padded and masked here")
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            raise ValueError("at least one text is needed, got an empty list")
        rows = [encode_text(self.tokenizer, text, self.cfg.is_causal, prepend_bos) for text in prompts]
        tokens, mask = pad_batch(rows, pad_token_id(self.tokenizer))
        return self._tokens(tokens), mask.to(self.device)

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

    def __call__(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `[batch, pos, d_vocab]`; for an encoder without an LM head, final hidden
        states `[batch, pos, d_model]` (see `cfg.has_lm_head`)."""
        return self.run(tokens, attention_mask=attention_mask)[0]

    def run(self, tokens: torch.Tensor, interventions: Sequence[Intervention] = (), capture: Iterable[Site | str] = (),
            attention_mask: torch.Tensor | None = None, stop_early: bool = False) -> tuple[torch.Tensor | None, Cache]:
        """One forward pass with `interventions` applied (in order, per site) and the sites in
        `capture` kept. Returns `(output, cache)`: output as for `__call__`, the cache holding
        the captured sites (after their interventions). Gradients flow unless disabled, so
        attribution methods run through here too.

        `stop_early=True` (TransformerLens's `stop_at_layer`, found from the sites): the pass
        may stop once every captured and intervened site is computed, so capturing
        `resid_pre(2)` runs blocks 0 and 1 only; the output is then None."""
        if not isinstance(stop_early, bool):
            raise TypeError(f"stop_early must be True or False, got {stop_early!r}")
        tokens = self._tokens(tokens)
        interventions = list(interventions)
        for item in interventions:
            if not isinstance(item, Intervention):
                raise TypeError(f"interventions must be Intervention objects (interp.models.interventions), "
                                f"got {type(item).__name__}")
            self._check_site(item.site)
        sites = [self._check_site(parse(s)) for s in capture]
        out, store = self._backend.run(tokens, _mask(attention_mask, tokens), interventions, sites, stop_early)
        return (None if stop_early else out), Cache(store, self)

    def run_with_cache(self, tokens: torch.Tensor, sites: Iterable[Site | str] | None = None,
                       attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, Cache]:
        """Run once without gradients, keeping `sites` (default: every site of every layer)."""
        with torch.no_grad():
            return self.run(tokens, capture=self.all_sites() if sites is None else sites, attention_mask=attention_mask)

    def all_sites(self) -> list[Site]:
        """Every site a full cache holds: embeddings, output, and per layer the residual
        stream, sublayer inputs/outputs and every head's q, k, v, z, scores and pattern (those
        this model's backend can read)."""
        kinds = ["resid_pre", "resid_post", "attn_out", "mlp_in", "mlp_out", "q", "k", "v", "z", "scores", "pattern"]
        if not self.cfg.parallel:
            kinds.insert(1, "resid_mid")
        every = [Site("embed"), Site("logits")] + [Site(kind, layer) for layer in range(self.cfg.n_layers) for kind in kinds]
        return [site for site in every if self._backend.supports(site, intervene=False) is None]

    def collect(self, prompts: Sequence[str] | torch.Tensor, sites: Iterable[Site | str],
                attention_mask: torch.Tensor | None = None, batch_size: int = 32) -> Collected:
        """Run many prompts in batches of `batch_size` (texts are tokenized one by one and
        right-padded, see `tokenize`) and keep `sites`, as float32 on the CPU."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        sites = [parse(s) for s in sites]
        if not sites:
            raise ValueError("collect needs at least one site")
        tokens, mask = self.tokenize(prompts, attention_mask)
        chunks: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
        for start in range(0, len(tokens), batch_size):
            rows = slice(start, start + batch_size)
            _, cache = self.run_with_cache(tokens[rows], sites=sites, attention_mask=mask[rows].long())
            for s in sites:
                chunks[s].append(cache[s].detach().float().cpu())
        ids = self.tokenizer.convert_ids_to_tokens
        str_tokens = [ids(row[keep].tolist()) for row, keep in zip(tokens.cpu(), mask.cpu())]
        return Collected({s: torch.cat(c) for s, c in chunks.items()}, tokens.cpu(), mask.cpu(), str_tokens)

    def _check_site(self, site: Site) -> Site:
        c = self.cfg
        if site.layer is not None:
            check_layer(site.layer, c.n_layers)
        if site.head is not None:
            if site.kind in KV_KINDS:
                if not 0 <= site.head < c.n_kv_heads:
                    raise IndexError(f"key/value head {site.head} is out of range at {site}: this model has "
                                     f"key/value heads 0..{c.n_kv_heads - 1} ({c.n_heads} query heads)")
            else:
                check_head(site.head, c.n_heads)
        reason = self._backend.supports(site, intervene=False)
        if reason is not None:
            raise ValueError(f"{site}: {reason}")
        return site

    # ------------------------------------------------------------------ sentence encoders

    def pooled_embedding(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         normalize: bool = True, interventions: Sequence[Intervention] = ()
                         ) -> Float[torch.Tensor, "batch d_model"]:
        """Mean of the final hidden states over unmasked positions, L2-normalised: the
        sentence embedding of sentence-transformers models such as all-MiniLM-L6-v2.
        Gradients flow (wrap in `torch.no_grad()` when none are needed)."""
        if self.cfg.is_causal:
            raise ValueError("pooled_embedding is for encoders (sentence embeddings); this model is causal")
        if self.cfg.has_lm_head:
            raise ValueError("pooled_embedding reads final hidden states; this encoder's output is its "
                             "language-model head's logits")
        tokens = self._tokens(tokens)
        mask = torch.ones_like(tokens) if attention_mask is None else _mask(attention_mask, tokens)
        hidden = self.run(tokens, interventions=interventions, attention_mask=mask)[0].float()
        weights = mask[..., None].float()
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    def encode(self, texts: Sequence[str], normalize: bool = True, interventions: Sequence[Intervention] = ()
               ) -> Float[torch.Tensor, "batch d_model"]:
        """Sentence embeddings of `texts` (padded together): see `pooled_embedding`. Without
        interventions it runs without gradients."""
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("encode takes a non-empty list of strings")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.cfg.n_ctx, return_tensors="pt")
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(interventions)):
            return self.pooled_embedding(enc["input_ids"], enc["attention_mask"], normalize=normalize,
                                         interventions=interventions)

    # ------------------------------------------------------------------ weights

    def _layer(self, layer: int):
        return self.weights.layers[check_layer(layer, self.cfg.n_layers)]

    def _pick(self, stacked: torch.Tensor, head: int | None, kv_heads: bool = False) -> torch.Tensor:
        if head is None:
            return stacked
        return stacked[check_head(head, self.cfg.n_kv_heads if kv_heads else self.cfg.n_heads)]

    def _per_query_head(self, kv: torch.Tensor) -> torch.Tensor:
        """Key/value-head tensors `[kv_head, ...]` repeated to one per query head."""
        return kv.repeat_interleave(self.cfg.n_heads // self.cfg.n_kv_heads, dim=0)

    def _require_pre_ln(self) -> None:
        if not self.cfg.pre_ln:
            raise ValueError(f"processed (norm-folded) weights are defined for pre-norm models only; "
                             f"{self.cfg.name} ({self.cfg.architecture}) puts LayerNorm after each sublayer")

    @property
    def _layernorm(self) -> bool:
        return self.arch.norm == "layernorm"

    def _norm_scale(self, norm) -> torch.Tensor:
        return norm.weight.detach() + self.arch.norm_offset

    def _reading(self, which: str, layer: int, head: int | None, processed: bool, kv_heads: bool) -> torch.Tensor:
        c, w = self.cfg, self._layer(layer)
        n = c.n_heads if which == "q" else c.n_kv_heads
        weight = getattr(w, f"w_{which}").detach().view(n, c.d_head, c.d_model).transpose(1, 2)  # [n, d_model, d_head]
        if processed:
            self._require_pre_ln()
            weight = self._norm_scale(w.attn_norm)[None, :, None] * weight
            if self._layernorm:
                weight = weight - weight.mean(dim=1, keepdim=True)
        if which != "q" and not kv_heads:
            weight = self._per_query_head(weight)
        return self._pick(weight, head, kv_heads)

    def W_Q(self, layer: int, head: int | None = None, *, processed: bool = False) -> Float[torch.Tensor, "... d_model d_head"]:
        """Query weights `[d_model, d_head]` (or `[head, d_model, d_head]` for a whole layer)."""
        return self._reading("q", layer, head, processed, False)

    def W_K(self, layer: int, head: int | None = None, *, processed: bool = False,
            kv_heads: bool = False) -> Float[torch.Tensor, "... d_model d_head"]:
        """Key weights `[d_model, d_head]` of the key/value head that query head `head` reads
        (or `[head, d_model, d_head]`, one per query head). `kv_heads=True`: indexed by
        key/value head, `[kv_head, d_model, d_head]` for a whole layer."""
        return self._reading("k", layer, head, processed, kv_heads)

    def W_V(self, layer: int, head: int | None = None, *, processed: bool = False,
            kv_heads: bool = False) -> Float[torch.Tensor, "... d_model d_head"]:
        """Value weights, indexed as `W_K`."""
        return self._reading("v", layer, head, processed, kv_heads)

    def W_O(self, layer: int, head: int | None = None, *, processed: bool = False) -> Float[torch.Tensor, "... d_head d_model"]:
        """Output weights `[d_head, d_model]` (or `[head, d_head, d_model]`)."""
        c = self.cfg
        weight = self._layer(layer).w_o.detach().view(c.d_model, c.n_heads, c.d_head).permute(1, 2, 0)
        if processed:
            self._require_pre_ln()
            if self._layernorm:
                weight = weight - weight.mean(dim=-1, keepdim=True)
        return self._pick(weight, head)

    def _raw_bias(self, which: str, layer: int) -> torch.Tensor:
        c = self.cfg
        n = c.n_heads if which == "q" else c.n_kv_heads
        bias = getattr(self._layer(layer), f"b_{which}")
        if bias is None:
            return torch.zeros(n, c.d_head, dtype=self.dtype, device=self.device)
        return bias.detach().view(n, c.d_head)

    def _bias(self, which: str, layer: int, head: int | None, processed: bool, kv_heads: bool) -> torch.Tensor:
        bias = self._raw_bias(which, layer)
        if processed:
            bias = torch.zeros_like(bias) if which == "v" else self._norm_folded_bias(which, layer)
        if which != "q" and not kv_heads:
            bias = self._per_query_head(bias)
        return self._pick(bias, head, kv_heads)

    def _norm_folded_bias(self, which: str, layer: int) -> torch.Tensor:
        """`b + norm.b @ W` (per key/value head for k, v): the bias once a LayerNorm's bias is folded in."""
        self._require_pre_ln()
        norm = self._layer(layer).attn_norm
        bias = self._raw_bias(which, layer)
        if norm.bias is None:
            return bias
        c = self.cfg
        n = c.n_heads if which == "q" else c.n_kv_heads
        weight = getattr(self._layer(layer), f"w_{which}").detach().view(n, c.d_head, c.d_model)
        return bias + torch.einsum("d,hed->he", norm.bias.detach(), weight)

    def b_Q(self, layer: int, head: int | None = None, *, processed: bool = False) -> torch.Tensor:
        """Query bias `[d_head]` (or `[head, d_head]`); zeros when the model has none."""
        return self._bias("q", layer, head, processed, False)

    def b_K(self, layer: int, head: int | None = None, *, processed: bool = False, kv_heads: bool = False) -> torch.Tensor:
        """Key bias, indexed as `W_K`."""
        return self._bias("k", layer, head, processed, kv_heads)

    def b_V(self, layer: int, head: int | None = None, *, processed: bool = False, kv_heads: bool = False) -> torch.Tensor:
        """Value bias, indexed as `W_K`; zero when processed (folded into b_O)."""
        return self._bias("v", layer, head, processed, kv_heads)

    def b_O(self, layer: int, *, processed: bool = False) -> Float[torch.Tensor, "d_model"]:
        """The attention layer's output bias `[d_model]`, shared by its heads."""
        b = self._layer(layer).b_o
        bias = torch.zeros(self.cfg.d_model, dtype=self.dtype, device=self.device) if b is None else b.detach()
        if processed:
            self._require_pre_ln()
            folded_v = self._per_query_head(self._norm_folded_bias("v", layer))
            bias = bias + torch.einsum("he,hed->d", folded_v, self.W_O(layer))
            if self._layernorm:
                bias = bias - bias.mean()
        return bias

    def OV(self, layer: int, head: int | None = None, *, processed: bool = False) -> FactoredMatrix:
        """OV circuit W_V @ W_O of a query head as a `FactoredMatrix` `[d_model, d_model]`
        (never materialised unless asked; `.AB` does); a whole layer gives `[head, d_model, d_model]`."""
        return FactoredMatrix(self.W_V(layer, head, processed=processed), self.W_O(layer, head, processed=processed))

    def QK(self, layer: int, head: int | None = None, *, processed: bool = False) -> FactoredMatrix:
        """QK circuit W_Q @ W_K.T of a query head as a `FactoredMatrix` `[d_model, d_model]`:
        the bilinear form between a query's and a key's normalised residual vectors (before the
        attention scale and, in rotary models, before the position-dependent rotation)."""
        return FactoredMatrix(self.W_Q(layer, head, processed=processed),
                              self.W_K(layer, head, processed=processed).transpose(-2, -1))

    def W_E(self, *, processed: bool = False) -> Float[torch.Tensor, "d_vocab d_model"]:
        """Token embedding matrix (Gemma multiplies it by sqrt(d_model) at run time; this is
        the stored matrix). Processed, in LayerNorm models: centred over d_model."""
        w = self.weights.w_e.detach()
        if processed:
            self._require_pre_ln()
            if self._layernorm:
                w = w - w.mean(dim=-1, keepdim=True)
        return w

    def W_U(self, *, processed: bool = False) -> Float[torch.Tensor, "d_model d_vocab"]:
        """Unembedding matrix. For an encoder without a trained LM head (e.g. `minilm`) this
        is the tied token embedding `W_E.T`, the matrix its pretraining used to unembed.
        Processed: the final norm's scale folded in, centred over the vocabulary (and over
        d_model in LayerNorm models)."""
        if not self.cfg.has_lm_head:
            if processed:
                self._require_pre_ln()
            return self.weights.w_e.detach().T
        w = self.weights.w_u.detach().T
        if processed:
            self._require_pre_ln()
            w = self._norm_scale(self.weights.final_norm)[:, None] * w
            if self._layernorm:
                w = w - w.mean(dim=0, keepdim=True)
            w = w - w.mean(dim=-1, keepdim=True)
        return w

    def mlp(self, layer: int, resid: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_model"]:
        """Block `layer`'s MLP sublayer (its norm included) applied to residual vectors
        `[..., d_model]`, as the model computes it: e.g. MAPS's "first MLP on the embeddings"."""
        check_layer(layer, self.cfg.n_layers)
        try:
            return self.functional().mlp(layer, resid.to(self.device, self.dtype))
        except UnsupportedArchitecture as err:
            raise ValueError(f"model.mlp needs the plain-tensor forward, which this model lacks: {err}") from err


def _mask(attention_mask: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a tensor of shape {tuple(tokens.shape)}, got {type(attention_mask).__name__}")
    if attention_mask.shape != tokens.shape:
        raise ValueError(f"attention_mask must have the tokens' shape {tuple(tokens.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    return attention_mask.to(tokens.device)
