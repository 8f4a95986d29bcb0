"""The `nnsight` backend: nnsight 0.8's `TransformersModel` over the Hugging Face model (the
class nnsight 0.8 renamed from `LanguageModel`; same object, same remote key), run locally
(one device, or several with `device_map`) or on an NDIF server (`remote=True`).

**Where sites live.** `MODULE_PATHS` maps each family to its Hugging Face modules; a site is
the input or output of one of them (first element of a tuple output):

    embed         output of the token embedding (BERT: of the whole embeddings module)
    resid_pre     input of the block            resid_post  output of the block
    q, k, v       output of the query/key/value projection(s), viewed as heads (before rotary)
    z             input of the output projection (o_proj / c_proj / dense), viewed as heads
    head_out      z @ W_O (the output projection's weight); edited at that projection's output
                  by adding the change
    attn_out      output of the attention sublayer (Gemma2: of post_attention_layernorm)
    resid_mid     resid_pre + attn_out, edited as attn_out := new - resid_pre (so both the MLP's
                  input and the residual stream that skips the MLP change, as on the lens backend)
    mlp_in        input of the MLP's norm (BERT: of output.LayerNorm, as the lens bridge's ln2)
    mlp_out       output of the MLP sublayer (Gemma2: of post_feedforward_layernorm)
    scores        input of the softmax inside the model's eager attention function
    pattern       output of that softmax

Scores and patterns are reached with nnsight's `source` drilling: the attention module's
call of its attention function (`attention_interface_1`, transformers' eager
`eager_attention_forward`) and the `softmax` inside it. The attention module does return
its weights, but only after they have been used, so an edit there could not change z;
editing the softmax's output does. Its input already holds the additive mask (masked
entries are the dtype's minimum, as on the lens backend) and, in Gemma2, the soft-capping.
In low precision the pattern is the softmax's own output (fp32 in Llama-style functions,
before the cast back to the model's dtype). Under an attention mask, positions are counted
as the lens backend counts them (`_position_ids`).

**Differences from the lens backend**, where its bridge does not do what the site says:
on BERT its `scores` are the post-softmax pattern (here: the softmax's input), it refuses
pattern/scores edits (here: they change z), and it adds head_out changes after the attention
block's LayerNorm (here: at the output projection, before the residual add and LayerNorm,
so zeroing head_out equals zeroing z). On every family the lens backend captures and edits
attn_out and resid_mid before it applies head_out edits of the same layer (one hook point);
here they come in the model's order, head_out first.

**What runs where.** The interventions are compiled here, on the caller's machine, into
plain data (module paths, index tuples, tensors, numbers, Splice functions); the code that
reads and edits activations inside the trace (`run_stops` and the functions below it) uses
only torch and builtins, because on NDIF it runs inside the server's sandbox, which admits
little else, and is shipped by value (the server does not have headlab). Several forward
passes go into one nnsight `session` (one request to NDIF), chunked by `session_bytes`; only
the saved captures and outputs come back, so gradients do not (remote runs refuse
interventions whose tensors require grad).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..architectures import Architecture
from ..interventions import Add, Intervention, Mean, Patch, Scale, Splice, Zero, select
from ..sites import Site

# NDIF's guide to remote work asks for "a few dozen megabytes" of saved data per request, and
# a request is one job on the server, killed after its execution timeout (3600 s by default
# in NDIF's deployment code); forward passes worth a few dozen MB of activations take far
# less than that, so the byte budget is the one that binds.
DEFAULT_SESSION_BYTES = 32 * 2**20

# transformers 5's attention modules call the attention function they look up as
# `attention_interface(...)`: nnsight names the lookup `attention_interface_0` and the call
# `attention_interface_1`; inside the eager function the softmax is `nn_functional_softmax_0`.
ATTENTION_CALL = "attention_interface_1"
SOFTMAX = "nn_functional_softmax_0"


class WeightsUnavailable(ValueError):
    """A weight was asked for that is not held here: the model runs on NDIF, or device_map
    offloaded part of it to disk or CPU (where accelerate keeps only a placeholder)."""


@dataclass(frozen=True)
class ModulePaths:
    """Where one family's sites live, as module paths below the base model (`{l}`: layer).

    `qkv` is one fused projection (`qkv_layout` "gpt2": q|k|v concatenated, "neox": per head
    [q k v]) or three projections ("split"). `o_proj_layout` is "linear" (weight `[d_model,
    head * d_head]`) or "conv1d" (GPT-2, `[head * d_head, d_model]`). `mlp_first`: the MLP's
    output comes before `mlp_in`'s module runs (BERT, whose `mlp_in` is the LayerNorm that adds
    the MLP's output to the residual). A field left None is a site this family lacks.
    """

    embed: str | None
    layer: str | None
    qkv: tuple[str, ...] | None
    qkv_layout: str
    attention: str | None
    o_proj: str | None
    o_proj_layout: str
    attn_out: str | None
    mlp_in: str | None
    mlp_out: str | None
    mlp_first: bool = False


_LLAMA = ModulePaths(
    embed="embed_tokens", layer="layers.{l}",
    qkv=("layers.{l}.self_attn.q_proj", "layers.{l}.self_attn.k_proj", "layers.{l}.self_attn.v_proj"),
    qkv_layout="split", attention="layers.{l}.self_attn", o_proj="layers.{l}.self_attn.o_proj",
    o_proj_layout="linear", attn_out="layers.{l}.self_attn", mlp_in="layers.{l}.post_attention_layernorm",
    mlp_out="layers.{l}.mlp")

MODULE_PATHS: dict[str, ModulePaths] = {
    "gpt2": ModulePaths(
        embed="wte", layer="h.{l}", qkv=("h.{l}.attn.c_attn",), qkv_layout="gpt2", attention="h.{l}.attn",
        o_proj="h.{l}.attn.c_proj", o_proj_layout="conv1d", attn_out="h.{l}.attn", mlp_in="h.{l}.ln_2",
        mlp_out="h.{l}.mlp"),
    "gpt_neox": ModulePaths(
        embed="embed_in", layer="layers.{l}", qkv=("layers.{l}.attention.query_key_value",), qkv_layout="neox",
        attention="layers.{l}.attention", o_proj="layers.{l}.attention.dense", o_proj_layout="linear",
        attn_out="layers.{l}.attention", mlp_in="layers.{l}.post_attention_layernorm", mlp_out="layers.{l}.mlp"),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gemma2": ModulePaths(
        embed="embed_tokens", layer="layers.{l}", qkv=_LLAMA.qkv, qkv_layout="split", attention=_LLAMA.attention,
        o_proj=_LLAMA.o_proj, o_proj_layout="linear", attn_out="layers.{l}.post_attention_layernorm",
        mlp_in="layers.{l}.pre_feedforward_layernorm", mlp_out="layers.{l}.post_feedforward_layernorm"),
    "bert": ModulePaths(
        embed="embeddings", layer="encoder.layer.{l}",
        qkv=("encoder.layer.{l}.attention.self.query", "encoder.layer.{l}.attention.self.key",
             "encoder.layer.{l}.attention.self.value"),
        qkv_layout="split", attention="encoder.layer.{l}.attention.self",
        o_proj="encoder.layer.{l}.attention.output.dense", o_proj_layout="linear",
        attn_out="encoder.layer.{l}.attention", mlp_in="encoder.layer.{l}.output.LayerNorm",
        mlp_out="encoder.layer.{l}.output.dense", mlp_first=True),
}

# The ModulePaths field each site kind needs.
_NEEDS = {"embed": "embed", "resid_pre": "layer", "resid_post": "layer", "q_in": "layer", "k_in": "layer",
          "v_in": "layer", "q": "qkv", "k": "qkv", "v": "qkv", "scores": "attention", "pattern": "attention",
          "z": "o_proj", "head_out": "o_proj", "attn_out": "attn_out", "resid_mid": "attn_out",
          "mlp_in": "mlp_in", "mlp_out": "mlp_out", "logits": None}

# One job: tokens, forward keyword arguments, then what `run_stops` takes.
Job = tuple


class NNsightBackend:
    """Runs a Hugging Face model through nnsight (see the module docstring).

    Args:
        model: an nnsight `TransformersModel` over the Hugging Face model (weights local, on
            one device or spread by `device_map`; or a weightless meta model for NDIF).
        arch: the model's architecture description.
        has_lm_head: False for an encoder without a language-model head (the output is then
            the last block's output).
        remote: False (run here), True (NDIF, the host in nnsight's config), a host URL,
            "local" (nnsight's dry run of the remote path: the request is serialized and
            deserialized with local modules hidden, then run here), or an nnsight backend
            object to run sessions with.
        session_bytes: the most bytes (uploaded tensors + saved activations and outputs,
            estimated) one session may carry; a single larger run goes alone.
    """

    name = "nnsight"

    def __init__(self, model, arch: Architecture, has_lm_head: bool, remote: Any = False,
                 session_bytes: int = DEFAULT_SESSION_BYTES):
        if arch.family not in MODULE_PATHS:
            raise ValueError(f"the nnsight backend has no module paths for family {arch.family!r}; "
                             f"families: {', '.join(sorted(MODULE_PATHS))}")
        if isinstance(session_bytes, bool) or not isinstance(session_bytes, int) or session_bytes < 1:
            raise ValueError(f"session_bytes must be a positive int, got {session_bytes!r}")
        if not hasattr([], "save"):
            raise RuntimeError("the nnsight backend needs nnsight's `.save()` on every object (nnsight's "
                               "CONFIG.APP.PYMOUNT, on by default), which NDIF's servers also use; it is off here")
        self.model, self.arch, self.has_lm_head = model, arch, has_lm_head
        self.remote, self.session_bytes = remote, session_bytes
        self.paths = MODULE_PATHS[arch.family]
        hf = model._module
        prefix = getattr(hf, "base_model_prefix", "")
        self._base = f"{prefix}." if prefix and isinstance(getattr(hf, prefix, None), nn.Module) else ""
        self._checked_attention = False

    @classmethod
    def wrap(cls, hf_model: nn.Module, tokenizer, arch: Architecture, has_lm_head: bool,
             remote: Any = False) -> "NNsightBackend":
        """Wrap a loaded Hugging Face model (and a copy of its tokenizer: nnsight sets its
        padding side) in nnsight's `TransformersModel`."""
        import copy

        from nnsight import TransformersModel

        task = "text-generation" if arch.is_causal else "fill-mask"  # the masked-LM class encoders load as
        with warnings.catch_warnings():
            # BERT's submodules named `output` are mounted as `E_output` (see `_path`), with a warning each.
            warnings.filterwarnings("ignore", message=".*submodule named 'output'")
            model = TransformersModel(hf_model, task=task, tokenizer=copy.deepcopy(tokenizer))
        return cls(model, arch, has_lm_head, remote)

    @classmethod
    def on_ndif(cls, repo_id: str, tokenizer, arch: Architecture, dtype: torch.dtype,
                remote: Any = True) -> "NNsightBackend":
        """A backend for a hub model that runs on NDIF: a meta (weightless) copy here, with
        eager attention, which every request asks the server for (nnsight sends the copy's
        attention implementation along; the default, sdpa, has no softmax to read patterns at).
        The tokenizer is passed in because nnsight 0.8.1's meta build cannot find it under
        transformers 5 (it reads pipeline flags that transformers 5 removed)."""
        import copy

        from nnsight import TransformersModel

        model = TransformersModel(repo_id, task="text-generation", dtype=dtype, attn_implementation="eager",
                                  tokenizer=copy.deepcopy(tokenizer))
        return cls(model, arch, has_lm_head=True, remote=remote)

    # ------------------------------------------------------------------ protocol

    @property
    def hf_model(self) -> nn.Module:
        if self.model._module.get_input_embeddings().weight.is_meta:
            raise WeightsUnavailable("this model runs on NDIF (remote=True): its Hugging Face module here is a "
                                     "weightless meta copy, so there is nothing to copy or read weights from")
        return self.model._module

    @property
    def device(self) -> torch.device:
        """Where token tensors go: the input embedding's device (CPU for a model on NDIF)."""
        weight = self.model._module.get_input_embeddings().weight
        return torch.device("cpu") if weight.is_meta else weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model._module.get_input_embeddings().weight.dtype

    def supports(self, site: Site, intervene: bool) -> str | None:
        a = self.arch
        if site.layer is not None and not 0 <= site.layer < a.n_layers:
            return f"layer {site.layer} is out of range: this model has layers 0..{a.n_layers - 1}"
        if site.kind == "resid_mid" and a.block == "parallel":
            return ("this model runs attention and MLP in parallel (GPT-NeoX), so there is no residual stream "
                    "between them: use resid_pre, attn_out, mlp_in or mlp_out")
        if intervene and site.kind in ("q_in", "k_in", "v_in"):
            return (f"{site.kind} edits one head's input alone, which needs split inputs: the nnsight backend has "
                    f"one shared input per layer (edge-level methods in interp.patching split them)")
        needed = _NEEDS[site.kind]
        if needed is not None and getattr(self.paths, needed) is None:
            return (f"the nnsight backend's module table for {a.family} (MODULE_PATHS in "
                    f"interp.models.backends.nnsight) has no {needed} path, so {site.kind} is not reachable")
        if site.kind == "head_out" and self._offloaded(self.paths.o_proj.format(l=site.layer)):
            return (f"head_out is z @ W_O, and device_map offloaded layer {site.layer}'s W_O (accelerate holds only a "
                    f"placeholder here): capture z instead, or load without offloading")
        return None

    def _offloaded(self, template: str) -> bool:
        """Whether device_map offloaded this module's weight (a placeholder in a model that
        otherwise has weights here; a model on NDIF has none here and is not offloaded)."""
        hf = self.model._module
        if hf.get_input_embeddings().weight.is_meta:
            return False
        return hf.get_submodule(self._base + template).weight.is_meta

    def run(self, tokens, attention_mask, interventions: Sequence[Intervention], capture: Sequence[Site],
            stop_early: bool = False):
        # stop_early is a permission, not a duty: this backend always runs the whole model
        return self.run_many([(tokens, attention_mask, interventions, capture)])[0]

    def run_many(self, runs: Sequence[tuple]) -> list[tuple[torch.Tensor, dict[Site, torch.Tensor]]]:
        """Several forward passes, `runs` = [(tokens, attention_mask, interventions, capture)],
        packed into as few nnsight sessions (NDIF requests) as `session_bytes` allows.
        Returns one (output, {site: activation}) per run, in order."""
        prepared = [self._prepare(*run) for run in runs]
        results: list = []
        for chunk in self._chunks(prepared):
            results.extend(self._execute([job for job, _, _ in chunk]))
        return [(out, {sites[key]: value for key, value in captured.items()})
                for (_, sites, _), (out, captured) in zip(prepared, results)]

    # ------------------------------------------------------------------ planning (here)

    def _check(self, site: Site, intervene: bool) -> None:
        reason = self.supports(site, intervene)
        if reason is not None:
            raise ValueError(f"cannot {'intervene on' if intervene else 'capture'} {site}: {reason}")

    def _prepare(self, tokens, attention_mask, interventions, capture) -> tuple[Job, dict[str, Site], int]:
        """One run as a job for `run_stops`, the sites by key, and its estimated bytes."""
        for intervention in interventions:
            self._check(intervention.site, True)
        for site in capture:
            self._check(site, False)
        batch, n_pos = tokens.shape
        edits: dict[str, list] = {}
        for intervention in interventions:
            whole = intervention.site.all_heads
            edits.setdefault(str(whole), []).append(self._compile(intervention, self._shape(whole, batch, n_pos)))
        wanted = {str(site.all_heads) for site in capture}
        sites = {str(site.all_heads): site.all_heads for site in capture}
        stops = self._stops({Site(*_parse_key(key)) for key in {*edits, *wanted}})
        kwargs: dict[str, Any] = {}
        if attention_mask is not None:
            kwargs = {"attention_mask": attention_mask, "position_ids": _position_ids(attention_mask)}
        if self.arch.is_causal:
            kwargs["use_cache"] = False
        self._refuse_remote_gradients(edits)
        size = self._bytes(tokens, edits, wanted, batch, n_pos)
        return (tokens, kwargs, stops, edits, wanted), sites, size

    def _compile(self, intervention: Intervention, shape: tuple[int, ...]) -> tuple:
        """An intervention as (kind, index, payload, label): plain data `apply_edits` runs."""
        site = intervention.site
        meta = torch.empty(shape, device="meta")
        index = select(meta, site, intervention.positions)
        label = str(site)
        if isinstance(intervention, Zero):
            return "zero", index, None, label
        if isinstance(intervention, Mean):
            return "set", index, intervention.value, label
        if isinstance(intervention, Patch):
            source = intervention.source_activation()[index]
            selected = meta[index]
            if source.shape != selected.shape:
                raise ValueError(f"Patch of {site}: the source activation has shape {tuple(source.shape)}, the "
                                 f"patched run {tuple(selected.shape)} (prompts of the same shape are needed)")
            return "set", index, source, label
        if isinstance(intervention, Add):
            return "add", index, intervention.value, label
        if isinstance(intervention, Scale):
            return "mul", index, intervention.factor, label
        if isinstance(intervention, Splice):
            return "fn", index, intervention.fn, label
        raise TypeError(f"the nnsight backend runs Zero, Mean, Patch, Add, Scale and Splice interventions; "
                        f"got {type(intervention).__name__}")

    def _shape(self, site: Site, batch: int, n_pos: int) -> tuple[int, ...]:
        """The full shape of a site's activation (all heads)."""
        a = self.arch
        d_out = a.d_vocab if self.has_lm_head else a.d_model
        return {"logits": (batch, n_pos, d_out), "q": (batch, n_pos, a.n_heads, a.d_head),
                "z": (batch, n_pos, a.n_heads, a.d_head), "k": (batch, n_pos, a.n_kv_heads, a.d_head),
                "v": (batch, n_pos, a.n_kv_heads, a.d_head), "scores": (batch, a.n_heads, n_pos, n_pos),
                "pattern": (batch, a.n_heads, n_pos, n_pos), "head_out": (batch, n_pos, a.n_heads, a.d_model),
                "q_in": (batch, n_pos, a.n_heads, a.d_model), "k_in": (batch, n_pos, a.n_heads, a.d_model),
                "v_in": (batch, n_pos, a.n_heads, a.d_model)}.get(site.kind, (batch, n_pos, a.d_model))

    def _path(self, template: str, layer: int | None = None) -> str:
        """A module path below the model as nnsight's envoys spell it (a submodule named
        like a value nnsight serves, such as BERT's `output`, is mounted as `E_output`)."""
        from nnsight import Envoy

        parts = (self._base + template.format(l=layer)).split(".")
        return ".".join(f"{Envoy.OVERLOAD_PREFIX}{p}" if inspect.isdatadescriptor(getattr(Envoy, p, None)) else p
                        for p in parts)

    def _stops(self, needed: set[Site]) -> list[tuple]:
        """The (path, port, handlers) stops `run_stops` visits, in execution order."""
        p, a = self.paths, self.arch
        stops: list[tuple] = []

        def add(path, port, handlers):
            if handlers:
                stops.append((path, port, tuple(handlers)))

        def key(kind, layer=None):
            return str(Site(kind, layer))

        if Site("embed") in needed:
            add(self._path(p.embed), "output", [("site", key("embed"), 0)])
        for layer in range(a.n_layers):
            has = {s.kind for s in needed if s.layer == layer}
            at = lambda template: self._path(template, layer)  # noqa: E731
            pre = [("site", key("resid_pre", layer), 0)] if "resid_pre" in has else []
            pre += [("save", "pre")] if "resid_mid" in has else []
            pre += [("per_head", key(kind, layer), a.n_heads) for kind in ("q_in", "k_in", "v_in") if kind in has]
            add(at(p.layer), "input", pre)
            if has & {"q", "k", "v"}:
                if p.qkv_layout == "split":
                    for kind, path, n in zip("qkv", p.qkv, (a.n_heads, a.n_kv_heads, a.n_kv_heads)):
                        add(at(path), "output", [("site", key(kind, layer), n)] if kind in has else [])
                else:
                    keys = tuple(key(kind, layer) for kind in "qkv")
                    add(at(p.qkv[0]), "output", [("qkv", p.qkv_layout, keys, a.n_heads, a.n_kv_heads)])
            if has & {"scores", "pattern"}:
                self._check_attention()
                softmax = f"{at(p.attention)}.source.{ATTENTION_CALL}.source.{SOFTMAX}"
                add(softmax, "input", [("site", key("scores", layer), 0)] if "scores" in has else [])
                add(softmax, "output", [("site", key("pattern", layer), 0)] if "pattern" in has else [])
            z = [("site", key("z", layer), a.n_heads)] if "z" in has else []
            add(at(p.o_proj), "input", z + ([("save", "z")] if "head_out" in has else []))
            if "head_out" in has:
                add(at(p.o_proj), "output",
                    [("head_out", key("head_out", layer), at(p.o_proj), p.o_proj_layout, a.n_heads)])
            attn = [("site", key("attn_out", layer), 0)] if "attn_out" in has else []
            mid = [("resid_mid", key("resid_mid", layer))] if "resid_mid" in has else []
            add(at(p.attn_out), "output", attn + mid)
            mlp = [(at(p.mlp_in), "input", [("site", key("mlp_in", layer), 0)] if "mlp_in" in has else []),
                   (at(p.mlp_out), "output", [("site", key("mlp_out", layer), 0)] if "mlp_out" in has else [])]
            for stop in reversed(mlp) if p.mlp_first else mlp:
                add(*stop)
            post = [("site", key("resid_post", layer), 0)] if "resid_post" in has else []
            last = layer == a.n_layers - 1 and not self.has_lm_head
            add(at(p.layer), "output", post + ([("output",)] if last else []))
        if self.has_lm_head:
            add("", "logits", [("output",)])
        return stops

    def _check_attention(self) -> None:
        """The attention modules must call their attention function where nnsight names it
        `ATTENTION_CALL` (checked once, on layer 0, against the installed transformers)."""
        if self._checked_attention:
            return
        envoy = self.model
        for part in self._path(self.paths.attention, 0).split("."):
            envoy = getattr(envoy, part)
        names = envoy.source.names
        if ATTENTION_CALL not in names:
            raise ValueError(f"scores/pattern are read inside the attention function, which "
                             f"{type(envoy._module).__name__}.forward is expected to call as {ATTENTION_CALL!r} "
                             f"(nnsight's name); this transformers version names its operations "
                             f"{[n for n in names if 'attention' in n]}")
        self._checked_attention = True

    # ------------------------------------------------------------------ execution

    @property
    def _is_remote(self) -> bool:
        return self.remote is not False

    def _refuse_remote_gradients(self, edits: dict[str, list]) -> None:
        if not self._is_remote or not torch.is_grad_enabled():
            return
        for ops in edits.values():
            for _, _, payload, label in ops:
                if isinstance(payload, torch.Tensor) and payload.requires_grad:
                    raise ValueError(f"an intervention at {label} holds a tensor that requires grad, but gradients "
                                     f"do not come back from a remote run (only saved values do); run this "
                                     f"model locally for gradients, or detach the tensor")

    def _bytes(self, tokens, edits, wanted, batch: int, n_pos: int) -> int:
        """Estimated bytes one run moves: tensors sent up, captures and output sent back."""
        item = torch.empty((), dtype=self.dtype).element_size()
        up = tokens.numel() * tokens.element_size() + sum(
            payload.numel() * payload.element_size()
            for ops in edits.values() for _, _, payload, _ in ops if isinstance(payload, torch.Tensor))
        down = [self._shape(Site(*_parse_key(key)), batch, n_pos) for key in wanted]
        down.append(self._shape(Site("logits"), batch, n_pos))
        return up + item * sum(_numel(shape) for shape in down)

    def _chunks(self, prepared: list) -> list[list]:
        chunks: list[list] = []
        total = 0
        for item in prepared:
            if chunks and total + item[2] <= self.session_bytes:
                chunks[-1].append(item)
                total += item[2]
            else:
                chunks.append([item])
                total = item[2]
        return chunks

    def _session(self):
        """`model.session(...)` for this backend's place of execution."""
        if self.remote is False:
            return self.model.session()
        if self.remote is True or isinstance(self.remote, str):
            return self.model.session(remote=self.remote)
        return self.model.session(backend=self.remote)

    def _execute(self, jobs: list[Job]) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """Run `jobs` in one nnsight session; each job is one trace (one forward pass).

        For a remote run nnsight ships the session's body as source re-printed by
        `ast.unparse`; its in-process dry run (remote="local") runs that code against this
        file's own text, finding the inner `with model.trace` by line number. So the body keeps
        one statement per line and no blank or comment lines, which unparsing would drop."""
        model = self.model
        outputs = None
        with self._shipped_by_value():
            with self._session():
                outputs = []
                for tokens, kwargs, stops, edits, wanted in jobs:
                    with model.trace(tokens, **kwargs):
                        result = run_stops(model, stops, edits, wanted)
                    outputs.append(result)
                outputs.save()
        if outputs is None:
            raise RuntimeError("the nnsight session returned nothing (no saved outputs came back)")
        return outputs

    @contextlib.contextmanager
    def _shipped_by_value(self):
        """While a remote request is serialized, ship this module's functions by value (the
        server does not have headlab installed)."""
        if not self._is_remote:
            yield
            return
        import cloudpickle

        module = sys.modules[__name__]
        registered = module.__name__ in cloudpickle.list_registry_pickle_by_value()
        if not registered:
            cloudpickle.register_pickle_by_value(module)
        try:
            yield
        finally:
            if not registered:
                cloudpickle.unregister_pickle_by_value(module)


def _position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions `[batch, pos]` as the lens backend's TransformerBridge counts them: a row whose
    real tokens come after masked ones (left padding, a gap) counts from its first real token
    (masked slots before it get 0); other rows, unpadded or right-padded, count 0..n-1."""
    derived = (mask.long().cumsum(-1) - 1).clamp(min=0)
    arange = torch.arange(mask.shape[1], device=mask.device).expand_as(derived)
    shifted = ((derived != arange) & (mask != 0)).any(dim=1, keepdim=True)
    return torch.where(shifted, derived, arange)


def _parse_key(key: str) -> tuple[str, int | None]:
    """(kind, layer) of a site key as `str(Site)` writes it ("z(3)", "embed")."""
    if "(" not in key:
        return key, None
    kind, layer = key[:-1].split("(")
    return kind, int(layer)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class UnavailableWeights:
    """Stands in for `ModelWeights` when the weights are not held here: every field is
    refused with a `WeightsUnavailable` that says why (see `remote_weights`, `offloaded_weights`)."""

    def __init__(self, reason: str):
        self._reason = reason

    def __getattr__(self, field: str):
        if field.startswith("__"):
            raise AttributeError(field)
        raise WeightsUnavailable(self._reason)


_NO_WEIGHTS = ("so weight views (W_Q ... W_O, OV, QK, W_E, W_U, biases), the plain-tensor forward and the patching "
               "engine, which read them, are not available; activations and interventions work.")


def remote_weights(name: str) -> UnavailableWeights:
    return UnavailableWeights(f"{name} runs on NDIF (remote=True): its weights stay on the server, {_NO_WEIGHTS} Load "
                              f"it locally (backend='nnsight', device_map='auto' for several GPUs) to read weights.")


def offloaded_weights(name: str, offloaded: list[str]) -> UnavailableWeights:
    shown = ", ".join(offloaded[:3]) + (" ..." if len(offloaded) > 3 else "")
    return UnavailableWeights(f"{name}: device_map offloaded {len(offloaded)} weights ({shown}) to CPU or disk, where "
                              f"accelerate keeps only placeholders until a forward pass, {_NO_WEIGHTS} Give it enough "
                              f"GPU memory (or a device_map without offloading) to read weights.")


def require_api_key() -> None:
    """Raise unless nnsight has an NDIF API key (from NDIF_API_KEY or its config file)."""
    from nnsight import CONFIG

    if not CONFIG.API.APIKEY:
        raise ValueError("remote=True runs the model on NDIF, which needs an API key: set the environment variable "
                         "NDIF_API_KEY (or call nnsight.CONFIG.set_default_api_key(key) once; it is saved in "
                         "~/.config/nnsight/config.yaml). Keys are issued at https://login.ndif.us")



# ---------------------------------------------------------------------- inside the trace
# Everything below runs inside the nnsight trace: here for a local model, on the NDIF server
# for a remote one, where it is shipped by value and may use only torch and builtins.

def run_stops(root, stops, edits, wanted):
    """Visit `stops` (path, port, handlers) in the model's execution order, reading and
    editing activations; returns (output, {site key: activation})."""
    captured, scratch = {}, {}
    for path, _, _ in stops:
        if ".source." in path:
            # Instrument the module's forward now, before the model runs: drilling in once
            # its forward has started would miss the call of the attention function.
            resolve(root, path.split(".source.")[0]).source
    for path, port, handlers in stops:
        envoy = resolve(root, path)
        if port == "logits":
            raw = value = envoy.output.logits
        else:
            raw = envoy.input if port == "input" else envoy.output
            value = raw[0] if isinstance(raw, tuple) else raw
        new = value
        for handler in handlers:
            new = run_handler(root, handler, new, edits, wanted, captured, scratch)
        if new is not value:
            if port == "input":
                envoy.input = new
            else:
                envoy.output = (new, *raw[1:]) if isinstance(raw, tuple) else new
    out = site_value(scratch["output"], "logits", 0, edits, wanted, captured)
    return out, captured


def resolve(root, path):
    """The envoy at a dotted `path` below `root` (root itself for "")."""
    envoy = root
    for part in path.split(".") if path else ():
        envoy = getattr(envoy, part)
    return envoy


def run_handler(root, handler, value, edits, wanted, captured, scratch):
    """One handler of a stop: the activation after it (the same object when unchanged)."""
    kind = handler[0]
    if kind == "site":
        return site_value(value, handler[1], handler[2], edits, wanted, captured)
    if kind == "save":
        scratch[handler[1]] = value
        return value
    if kind == "output":
        scratch["output"] = value
        return value
    if kind == "per_head":
        if handler[1] in wanted:
            captured[handler[1]] = value.unsqueeze(2).expand(-1, -1, handler[2], -1)
        return value
    if kind == "qkv":
        layout, keys, n_heads, n_kv = handler[1:]
        parts = split_qkv(value, layout, n_heads, n_kv)
        new = [site_value(part, key, 0, edits, wanted, captured) for part, key in zip(parts, keys)]
        if all(a is b for a, b in zip(new, parts)):
            return value
        return join_qkv(new, layout)
    if kind == "head_out":
        key, weight_path, layout, n_heads = handler[1:]
        z = scratch["z"].unflatten(-1, (n_heads, -1))
        weight = resolve(root, weight_path).weight.detach()
        if layout == "conv1d":
            w_o = weight.view(n_heads, -1, weight.shape[-1])
        else:
            w_o = weight.view(weight.shape[0], n_heads, -1).permute(1, 2, 0)
        per_head = torch.einsum("bphe,hed->bphd", z, w_o.to(z.dtype))
        new = site_value(per_head, key, 0, edits, wanted, captured)
        return value if new is per_head else value + (new - per_head).sum(dim=2)
    if kind == "resid_mid":
        pre = scratch["pre"]
        mid = pre + value
        new = site_value(mid, handler[1], 0, edits, wanted, captured)
        return value if new is mid else new - pre
    raise ValueError(f"unknown handler {kind!r}")


def site_value(value, key, n_heads, edits, wanted, captured):
    """The activation of site `key` is `value` (viewed as `[..., n_heads, d_head]` when
    n_heads > 0): apply its edits, keep it if wanted, hand back the model's layout."""
    act = value.unflatten(-1, (n_heads, -1)) if n_heads else value
    new = apply_edits(act, edits.get(key, ()))
    if key in wanted:
        captured[key] = new
    if new is act:
        return value
    return new.flatten(-2) if n_heads else new


def apply_edits(act, ops):
    """`ops` (kind, index, payload, label) applied in order, never in place (autograd may
    need the old tensor): the semantics of Zero, Mean/Patch ("set"), Add, Scale ("mul") and
    Splice ("fn") in `interp.models.interventions`."""
    for kind, index, payload, label in ops:
        selected = act[index]
        if kind == "zero":
            new = torch.zeros_like(selected)
        elif kind == "set":
            new = payload.to(selected.device, selected.dtype).expand_as(selected)
        elif kind == "add":
            new = selected + payload.to(selected.device, selected.dtype)
        elif kind == "mul":
            factor = payload.to(selected.device, selected.dtype) if isinstance(payload, torch.Tensor) else payload
            new = selected * factor
        elif kind == "fn":
            new = payload(selected)
            if not isinstance(new, torch.Tensor) or new.shape != selected.shape:
                got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise ValueError(f"Splice at {label}: fn must return a tensor of shape {tuple(selected.shape)}, "
                                 f"got {got}")
        else:
            raise ValueError(f"unknown edit {kind!r}")
        act = act.clone()
        act[index] = new
    return act


def split_qkv(value, layout, n_heads, n_kv):
    """Queries, keys, values `[..., head, d_head]` from a fused projection's output."""
    if layout == "neox":  # per head: [q k v]
        heads = value.unflatten(-1, (n_heads, 3, -1))
        return heads[..., 0, :], heads[..., 1, :], heads[..., 2, :]
    d_head = value.shape[-1] // (n_heads + 2 * n_kv)
    q, k, v = value.split((n_heads * d_head, n_kv * d_head, n_kv * d_head), dim=-1)
    return q.unflatten(-1, (n_heads, -1)), k.unflatten(-1, (n_kv, -1)), v.unflatten(-1, (n_kv, -1))


def join_qkv(parts, layout):
    """The fused projection's layout from (q, k, v) `[..., head, d_head]`."""
    if layout == "neox":
        return torch.stack(parts, dim=-2).flatten(-3)
    return torch.cat([part.flatten(-2) for part in parts], dim=-1)
