"""`load_model`: a hub name, a local Hugging Face folder, or an embedded name -> `HookedModel`.

Every path builds the Hugging Face model and tokenizer first (a local folder never touches
the network), runs a short probe through it, then hands it to the backend and runs the same
probe through the hooked model: a disagreement beyond a dtype-aware tolerance is refused
with the measured difference (`check=False` skips it). Attention runs in eager mode, so
patterns are real.

Backends: "lens" (TransformerLens 4's TransformerBridge, one device) and "nnsight"
(`interp.models.backends.nnsight`: one device, several with `device_map`, or an NDIF server
with `remote=True`, where only a weightless copy of the model is built here).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from ..zoo.registry import EMBEDDED, get_embedded
from .architectures import describe, read_weights
from .backends.lens import LensBackend
from .config import ModelConfig
from .hooked import HookedModel
from .tokens import bos_token_id

# Encoders are booted through their masked-LM class, which is what the bridge adapts.
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "mpnet"}
BACKENDS = ("lens", "nnsight")

# Largest |hooked - Hugging Face| output allowed by the parity check, relative to the
# output's scale (max |output|, at least 1). float32 bridges measure ~1e-6 here; in float64
# TransformerLens's bridge runs GPT-NeoX ~1.5e-7 off (parts of its attention in float32), so
# float64 allows 1e-6: far below any wrongly described architecture (GPT-2 without attention
# scaling is ~1 off).
PARITY_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}


class ParityError(ValueError):
    """The hooked model's output differs from the plain Hugging Face model's."""


def load_model(name_or_path: str | Path, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, backend: str = "lens", check: bool = True,
               device_map: str | dict | None = None, remote: bool | str = False) -> HookedModel:
    """Load a model for analysis.

    Args:
        name_or_path: an embedded name (see `list_models()`: "minilm", "zoo/induction-2l", ...),
            a local folder holding a Hugging Face model (config.json + weights + tokenizer;
            loads with no network), or a hub name such as "gpt2" (needs internet).
        device: where to put it; default CUDA when available, else CPU.
        dtype: parameter dtype (default float32).
        backend: what runs the model: "lens" (TransformerLens 4's TransformerBridge) or
            "nnsight" (nnsight's TransformersModel; see `interp.models.backends.nnsight`).
        check: run the parity probe (hooked model vs plain Hugging Face) and refuse a model
            on which they disagree. Turn off only if you know why they differ.
        device_map: nnsight backend only, instead of `device`: Hugging Face's placement of the
            model's modules, e.g. "auto" (spread over every visible GPU, then CPU) or
            {"model.embed_tokens": 0, "model.layers.0": 0, ..., "lm_head": 1}; needs accelerate.
        remote: nnsight backend only. True runs the model on NDIF (the host in nnsight's
            config; a URL string picks another host); it needs an API key (NDIF_API_KEY) and a
            hub name, and builds only a weightless copy here, so weight views are refused.
            "local" loads the weights here and runs every forward pass through the same
            serialized requests nnsight would send to NDIF (a dry run of the remote path).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
    if backend != "nnsight" and device_map is not None:
        raise ValueError(f"device_map spreads a model over several devices, which the {backend} backend (one "
                         f"TransformerBridge on one device) does not do: use backend='nnsight'")
    if backend != "nnsight" and remote is not False:
        raise ValueError(f"remote execution (NDIF) runs through nnsight; the {backend} backend runs here: "
                         f"use backend='nnsight'")
    if not (isinstance(remote, bool) or remote == "local" or isinstance(remote, str)
            and remote.startswith(("http://", "https://"))):
        raise ValueError(f"remote must be False, True (NDIF), 'local' (a dry run of the remote path) or a host "
                         f"URL, got {remote!r}")
    if device_map is not None and device is not None:
        raise ValueError("pass either device (one device) or device_map (Hugging Face's placement of the "
                         "modules), not both")
    dtype = dtype or torch.float32
    if dtype not in PARITY_TOLERANCE:
        raise ValueError(f"dtype must be one of {', '.join(str(d) for d in PARITY_TOLERANCE)}, got {dtype}")
    name = str(name_or_path)
    if remote is not False and remote != "local":
        if device_map is not None or device is not None:
            raise ValueError("a remote model runs on NDIF's devices: device and device_map do not apply")
        if name in EMBEDDED or name.startswith("zoo/") or Path(name).expanduser().exists():
            raise ValueError(f"remote=True runs a model hosted on NDIF, named by its hub id (such as "
                             f"'EleutherAI/pythia-70m'); {name!r} is a local model, whose weights NDIF does not "
                             f"have. Load it without remote, or with remote='local' to run it here through the same "
                             f"requests")
        from .backends.nnsight import require_api_key

        require_api_key()
        return _load_remote(name, dtype, remote, check)
    if device_map is None:
        default = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device) if device is not None else torch.device(default)
    if name in EMBEDDED:
        source, local = get_embedded(name).folder, True
    elif name.startswith("zoo/"):
        get_embedded(name)  # raises, listing the embedded names
    elif Path(name).expanduser().is_dir():
        source, local = Path(name).expanduser().resolve(), True
    elif Path(name).expanduser().exists():
        raise ValueError(f"{name!r} is a file; load_model takes a folder holding a Hugging Face model "
                         f"(config.json, weights, tokenizer), an embedded name or a hub name")
    else:
        source, local = name, False
    hf_model, tokenizer, has_lm_head = _load_hf(source, name, dtype, local, device_map)
    if device_map is None:
        hf_model = hf_model.to(device)
    return _wrap(name, hf_model, tokenizer, has_lm_head, dtype, check, backend, remote)


def _load_config(source: str | Path, name: str, local: bool):
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as err:
        if local:
            raise ValueError(f"{source} does not hold a readable Hugging Face model: {err}") from err
        raise ValueError(
            f"unknown model {name!r}: it is not an embedded model ({', '.join(EMBEDDED)}), not a local "
            f"folder, and the Hugging Face hub did not provide it (hub names need internet). "
            f"Hub said: {str(err).splitlines()[0]}") from err
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{name!r} is an encoder-decoder model ({config.model_type}); headlab supports "
                         f"decoder-only and encoder-only transformers")
    describe(config)  # refuses an undescribed family before anything heavy is loaded
    return config


def _load_hf(source: str | Path, name: str, dtype: torch.dtype, local: bool, device_map=None):
    config = _load_config(source, name, local)
    if getattr(config, "pruned_heads", None):
        raise ValueError(f"{source} holds a model with heads removed (config.pruned_heads), so its layers "
                         f"have different numbers of heads, which the hooked wrapper cannot represent; "
                         f"load it with analyses.head_removal.load_pruned")
    is_encoder = config.model_type in ENCODER_TYPES
    auto = AutoModelForMaskedLM if is_encoder else AutoModelForCausalLM
    with warnings.catch_warnings(), _quiet_transformers():
        warnings.simplefilter("ignore")
        placement = {} if device_map is None else {"device_map": device_map}
        hf_model, info = auto.from_pretrained(source, dtype=dtype, attn_implementation="eager",
                                              local_files_only=local, output_loading_info=True, **placement)
    missing = list(info.get("missing_keys", []))
    head_prefixes = ("cls.", "lm_head.", "lm_head", "vocab_", "pred_", "generator_")
    body_missing = [k for k in missing if not k.startswith(head_prefixes)]
    if body_missing:
        raise ValueError(f"{source} lacks weights the model needs: {body_missing[:5]}"
                         f"{' ...' if len(body_missing) > 5 else ''}")
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    return hf_model.eval(), tokenizer, not missing


def _wrap(name: str, hf_model, tokenizer, has_lm_head: bool, dtype: torch.dtype, check: bool, backend: str,
          remote: bool | str) -> HookedModel:
    arch = describe(hf_model.config)
    device = hf_model.get_input_embeddings().weight.device
    probe = _probe_tokens(tokenizer, arch, device) if check else None
    if check:
        with torch.no_grad():
            expected = _hf_output(hf_model, probe, has_lm_head)
    if backend == "lens":
        runner = _lens_backend(name, hf_model, tokenizer, arch, has_lm_head, device, dtype)
        weights = runner.weights
    else:
        from .backends.nnsight import NNsightBackend, offloaded_weights

        runner = NNsightBackend.wrap(hf_model, tokenizer, arch, has_lm_head, remote=remote)
        offloaded = [n for n, p in hf_model.named_parameters() if p.is_meta]
        weights = offloaded_weights(name, offloaded) if offloaded else read_weights(hf_model, arch)
    cfg = _model_config(name, type(hf_model).__name__, arch, has_lm_head)
    model = HookedModel(runner, arch, weights, tokenizer, cfg)
    if check:
        with torch.no_grad():
            got = model(probe)
        _compare(expected, got, name, arch.family, dtype, backend)
    return model


def _lens_backend(name: str, hf_model, tokenizer, arch, has_lm_head: bool, device, dtype) -> LensBackend:
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings(), _quiet_transformers():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer,
                                                     device=device, dtype=dtype)
    bridge.eval()
    return LensBackend(bridge, hf_model, arch, read_weights(hf_model, arch), has_lm_head)


def _model_config(name: str, architecture: str, arch, has_lm_head: bool) -> ModelConfig:
    return ModelConfig(
        name=name, architecture=architecture, family=arch.family, n_layers=arch.n_layers,
        n_heads=arch.n_heads, n_kv_heads=arch.n_kv_heads, d_model=arch.d_model, d_head=arch.d_head,
        d_mlp=arch.d_mlp, d_vocab=arch.d_vocab, n_ctx=arch.n_ctx, is_causal=arch.is_causal,
        has_lm_head=has_lm_head, pre_ln=arch.block != "post_norm", parallel=arch.block == "parallel",
    )


def _load_remote(name: str, dtype: torch.dtype, remote: bool | str, check: bool) -> HookedModel:
    """A model that runs elsewhere (`remote`: see `NNsightBackend`): config and tokenizer from
    the hub, a weightless copy of the model here, weight views refused (`remote_weights`)."""
    from .backends.nnsight import NNsightBackend, remote_weights

    arch = describe(_load_config(name, name, local=False))
    if not arch.is_causal:
        raise ValueError(f"{name!r} is an encoder ({arch.family}); remote execution runs causal language models")
    tokenizer = AutoTokenizer.from_pretrained(name)
    runner = NNsightBackend.on_ndif(name, tokenizer, arch, dtype, remote)
    if check:
        warnings.warn(f"{name}: the parity check compares with the local Hugging Face model, which a remote model "
                      f"does not have (its weights are on NDIF); skipped", stacklevel=3)
    return HookedModel(runner, arch, remote_weights(name), tokenizer,
                       _model_config(name, type(runner.model._module).__name__, arch, has_lm_head=True))


def _probe_tokens(tokenizer, arch, device: torch.device) -> torch.Tensor:
    """Two prompts of seeded random ordinary tokens (BOS first for causal models)."""
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(min(arch.d_vocab, len(tokenizer))) if i not in special])
    n = min(12, arch.n_ctx - 1)
    gen = torch.Generator().manual_seed(0)
    tokens = ordinary[torch.randint(len(ordinary), (2, n), generator=gen)]
    first = bos_token_id(tokenizer) if arch.is_causal else tokenizer.cls_token_id
    if first is not None:
        tokens = torch.cat([torch.full((2, 1), first), tokens], dim=1)
    return tokens.to(device)


def _hf_output(hf_model, tokens: torch.Tensor, has_lm_head: bool) -> torch.Tensor:
    out = hf_model(tokens, output_hidden_states=not has_lm_head)
    return out.logits if has_lm_head else out.hidden_states[-1]


def _compare(expected: torch.Tensor, got: torch.Tensor, name: str, family: str, dtype: torch.dtype,
             backend: str) -> None:
    if not torch.isfinite(expected).all():
        raise ParityError(
            f"{name} ({family}, {dtype}): the Hugging Face model itself gives non-finite outputs (NaN or inf) on a "
            f"probe of {tuple(expected.shape[:2])} tokens: its weights hold NaN or inf, or overflow in {dtype}. "
            f"No analysis of it would mean anything; check the checkpoint (or load it in float32)")
    scale = max(1.0, float(expected.abs().max()))
    diff = float((expected.float() - got.float()).abs().max())
    tolerance = PARITY_TOLERANCE[dtype] * scale
    if not diff <= tolerance:  # also catches NaN
        raise ParityError(
            f"{name} ({family}, {dtype}): the hooked model's output differs from Hugging Face's by up to {diff:.3g} "
            f"(tolerance {tolerance:.3g}, outputs up to {scale:.3g}) on a probe of {tuple(expected.shape[:2])} tokens, "
            f"so every analysis on it would be wrong. {_MISMATCH[backend]} Pass check=False only if you know "
            f"the difference does not matter for your analysis.")


_MISMATCH = {"lens": "This is a TransformerLens bridge mismatch for this configuration (known for GPT-2 with "
                     "scale_attn_weights=False).",
             "nnsight": "The nnsight backend runs the Hugging Face model itself, so this is a bug in its wiring "
                        "(interp.models.backends.nnsight)."}


class _quiet_transformers:
    """Silence transformers' load-time chatter (e.g. the untrained MLM head of a sentence
    encoder, which `ModelConfig.has_lm_head` records instead)."""

    def __enter__(self):
        self._logger = logging.getLogger("transformers")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
