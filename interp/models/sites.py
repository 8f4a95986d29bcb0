"""Sites: the places in a model where activations are read or changed, spelled once.

A `Site` names one activation of a forward pass: a kind, and the layer (and head) it
belongs to. Analyses speak only in sites; each backend maps them to its own locations
(TransformerLens hook names for the `lens` backend). Shapes (`pos` = sequence position):

    embed                 [batch, pos, d_model]   token embeddings (scaled, for Gemma; for BERT the
                                                  embedding block's LayerNormed output)
    resid_pre(l)          [batch, pos, d_model]   residual stream entering block l
    resid_mid(l)          [batch, pos, d_model]   between attention and MLP (sequential blocks only)
    resid_post(l)         [batch, pos, d_model]   leaving block l
    attn_out(l)           [batch, pos, d_model]   attention sublayer output (after any post-norm)
    mlp_in(l)             [batch, pos, d_model]   the residual the MLP reads, before its norm
    mlp_out(l)            [batch, pos, d_model]   MLP sublayer output (after any post-norm)
    q(l, h)               [batch, pos, head, d_head]      queries, before rotary embeddings
    k(l, h), v(l, h)      [batch, pos, kv_head, d_head]   keys (before rotary) and values
    z(l, h)               [batch, pos, head, d_head]      attention-weighted values, before W_O
    scores(l, h)          [batch, head, q, k]     pre-softmax attention scores
    pattern(l, h)         [batch, head, q, k]     post-softmax attention
    head_out(l, h)        [batch, pos, head, d_model] each head's write, z @ W_O, without b_O
    q_in/k_in/v_in(l, h)  [batch, pos, head, d_model] a head's query/key/value input, before
                          the norm (one copy per head: what edge-level circuit methods split)
    logits                [batch, pos, d_vocab]   output (final hidden states for an encoder
                          without a language-model head)

`head` selects one head of a per-head site (None: all heads). Keys and values are indexed by
**key/value head** (`cfg.n_kv_heads` of them): under grouped-query attention query head h
reads key/value head `cfg.kv_head(h)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LAYER_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_in", "mlp_out")
HEAD_KINDS = ("q", "k", "v", "z", "scores", "pattern", "head_out", "q_in", "k_in", "v_in")
KV_KINDS = ("k", "v")
GLOBAL_KINDS = ("embed", "logits")
KINDS = GLOBAL_KINDS + LAYER_KINDS + HEAD_KINDS


@dataclass(frozen=True, order=True)
class Site:
    """One activation: `kind` (see the module docstring), `layer`, and for per-head kinds
    optionally one `head` (a key/value head for k and v)."""

    kind: str
    layer: int | None = None
    head: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown site kind {self.kind!r}; known kinds: {', '.join(KINDS)}")
        for label in ("layer", "head"):
            value = getattr(self, label)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"site {label} must be an int or None, got {value!r}")
        if self.kind in GLOBAL_KINDS:
            if self.layer is not None or self.head is not None:
                raise ValueError(f"site {self.kind!r} belongs to no layer or head")
        elif self.layer is None:
            raise ValueError(f"site {self.kind!r} needs a layer")
        if self.head is not None and self.kind not in HEAD_KINDS:
            raise ValueError(f"site {self.kind!r} is not per head; got head={self.head}")

    @property
    def per_head(self) -> bool:
        return self.kind in HEAD_KINDS

    @property
    def all_heads(self) -> "Site":
        """The same site with every head (what a backend reads before selecting one)."""
        return Site(self.kind, self.layer) if self.head is not None else self

    @property
    def head_axis(self) -> int | None:
        """Axis of the head in this site's activation, or None."""
        if not self.per_head:
            return None
        return 1 if self.kind in ("scores", "pattern") else 2

    def __str__(self) -> str:
        if self.layer is None:
            return self.kind
        return f"{self.kind}({self.layer})" if self.head is None else f"{self.kind}({self.layer}, {self.head})"


def embed() -> Site:
    return Site("embed")


def logits() -> Site:
    return Site("logits")


def resid_pre(layer: int) -> Site:
    return Site("resid_pre", layer)


def resid_mid(layer: int) -> Site:
    return Site("resid_mid", layer)


def resid_post(layer: int) -> Site:
    return Site("resid_post", layer)


def attn_out(layer: int) -> Site:
    return Site("attn_out", layer)


def mlp_in(layer: int) -> Site:
    return Site("mlp_in", layer)


def mlp_out(layer: int) -> Site:
    return Site("mlp_out", layer)


def q(layer: int, head: int | None = None) -> Site:
    return Site("q", layer, head)


def k(layer: int, head: int | None = None) -> Site:
    """Keys of key/value head `head` (all of them when None)."""
    return Site("k", layer, head)


def v(layer: int, head: int | None = None) -> Site:
    """Values of key/value head `head` (all of them when None)."""
    return Site("v", layer, head)


def z(layer: int, head: int | None = None) -> Site:
    return Site("z", layer, head)


def scores(layer: int, head: int | None = None) -> Site:
    return Site("scores", layer, head)


def pattern(layer: int, head: int | None = None) -> Site:
    return Site("pattern", layer, head)


def head_out(layer: int, head: int | None = None) -> Site:
    return Site("head_out", layer, head)


def q_in(layer: int, head: int | None = None) -> Site:
    return Site("q_in", layer, head)


def k_in(layer: int, head: int | None = None) -> Site:
    return Site("k_in", layer, head)


def v_in(layer: int, head: int | None = None) -> Site:
    return Site("v_in", layer, head)


# TransformerLens hook names <-> sites. `hook_result` is TransformerLens's per-head output.
_TL_LAYER = {"hook_resid_pre": "resid_pre", "hook_resid_mid": "resid_mid", "hook_resid_post": "resid_post",
             "hook_attn_out": "attn_out", "hook_mlp_in": "mlp_in", "hook_mlp_out": "mlp_out",
             "hook_q_input": "q_in", "hook_k_input": "k_in", "hook_v_input": "v_in",
             "attn.hook_q": "q", "attn.hook_k": "k", "attn.hook_v": "v", "attn.hook_z": "z",
             "attn.hook_attn_scores": "scores", "attn.hook_pattern": "pattern", "attn.hook_result": "head_out"}
_TL_GLOBAL = {"hook_embed": "embed", "hook_unembed": "logits"}
_TL_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")


def parse(name: "str | Site") -> Site:
    """A site from a `Site`, a site string as `str(site)` prints it ("z(3, 5)", "resid_pre(2)",
    "embed"), or a TransformerLens hook name ("blocks.2.hook_resid_pre", "blocks.0.attn.hook_z")."""
    if isinstance(name, Site):
        return name
    if not isinstance(name, str):
        raise TypeError(f"a site is a Site or a string, got {type(name).__name__}")
    text = name.strip()
    if text in _TL_GLOBAL:
        return Site(_TL_GLOBAL[text])
    match = _TL_NAME.match(text)
    if match and match.group(2) in _TL_LAYER:
        return Site(_TL_LAYER[match.group(2)], int(match.group(1)))
    call = re.fullmatch(r"(\w+)(?:\((\s*-?\d+\s*)(?:,(\s*-?\d+\s*))?\))?", text)
    if call and call.group(1) in KINDS:
        layer = int(call.group(2)) if call.group(2) is not None else None
        head = int(call.group(3)) if call.group(3) is not None else None
        return Site(call.group(1), layer, head)
    raise ValueError(f"cannot read {name!r} as a site: write it as e.g. 'resid_pre(2)', 'z(3, 5)', 'embed', "
                     f"or as a TransformerLens hook name such as 'blocks.2.hook_resid_pre'")


def hook_name(site: Site) -> str:
    """The TransformerLens hook name of a site (per-head selection dropped)."""
    for name, kind in _TL_GLOBAL.items():
        if kind == site.kind:
            return name
    suffix = next(name for name, kind in _TL_LAYER.items() if kind == site.kind)
    return f"blocks.{site.layer}.{suffix}"
