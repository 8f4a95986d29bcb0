"""`load_model`: a hub name, a local Hugging Face folder, or an embedded name -> `HookedModel`.

Every path builds the Hugging Face model and tokenizer first (a local folder never touches
the network), runs a short probe through it, then hands it to the backend and runs the same
probe through the hooked model: a disagreement beyond a dtype-aware tolerance is refused
with the measured difference (`check=False` skips it). Attention runs in eager mode, so
patterns are real.
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
BACKENDS = ("lens",)

# Largest |hooked - Hugging Face| output allowed by the parity check, relative to the
# output's scale (max |output|, at least 1). float32 bridges measure ~1e-6 here.
PARITY_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}


class ParityError(ValueError):
    """The hooked model's output differs from the plain Hugging Face model's."""


def load_model(name_or_path: str | Path, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, backend: str = "lens", check: bool = True) -> HookedModel:
    """Load a model for analysis.

    Args:
        name_or_path: an embedded name (see `list_models()`: "minilm", "zoo/induction-2l", ...),
            a local folder holding a Hugging Face model (config.json + weights + tokenizer;
            loads with no network), or a hub name such as "gpt2" (needs internet).
        device: where to put it; default CUDA when available, else CPU.
        dtype: parameter dtype (default float32).
        backend: what runs the model: "lens" (TransformerLens 4's TransformerBridge).
        check: run the parity probe (hooked model vs plain Hugging Face) and refuse a model
            on which they disagree. Turn off only if you know why they differ.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
    dtype = dtype or torch.float32
    if dtype not in PARITY_TOLERANCE:
        raise ValueError(f"dtype must be one of {', '.join(str(d) for d in PARITY_TOLERANCE)}, got {dtype}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = str(name_or_path)
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
    hf_model, tokenizer, has_lm_head = _load_hf(source, name, dtype, local)
    return _wrap(name, hf_model.to(device), tokenizer, has_lm_head, device, dtype, check)


def _load_hf(source: str | Path, name: str, dtype: torch.dtype, local: bool):
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
    if getattr(config, "pruned_heads", None):
        raise ValueError(f"{source} holds a model with heads removed (config.pruned_heads), so its layers "
                         f"have different numbers of heads, which the hooked wrapper cannot represent; "
                         f"load it with analyses.head_removal.load_pruned")
    describe(config)  # refuses an undescribed family before anything heavy is loaded
    is_encoder = config.model_type in ENCODER_TYPES
    auto = AutoModelForMaskedLM if is_encoder else AutoModelForCausalLM
    with warnings.catch_warnings(), _quiet_transformers():
        warnings.simplefilter("ignore")
        hf_model, info = auto.from_pretrained(source, dtype=dtype, attn_implementation="eager",
                                              local_files_only=local, output_loading_info=True)
    missing = list(info.get("missing_keys", []))
    head_prefixes = ("cls.", "lm_head.", "lm_head", "vocab_", "pred_", "generator_")
    body_missing = [k for k in missing if not k.startswith(head_prefixes)]
    if body_missing:
        raise ValueError(f"{source} lacks weights the model needs: {body_missing[:5]}"
                         f"{' ...' if len(body_missing) > 5 else ''}")
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    return hf_model.eval(), tokenizer, not missing


def _wrap(name: str, hf_model, tokenizer, has_lm_head: bool, device: torch.device, dtype: torch.dtype,
          check: bool) -> HookedModel:
    from transformer_lens.model_bridge import TransformerBridge

    arch = describe(hf_model.config)
    probe = _probe_tokens(tokenizer, arch, device) if check else None
    if check:
        with torch.no_grad():
            expected = _hf_output(hf_model, probe, has_lm_head)
    with warnings.catch_warnings(), _quiet_transformers():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer,
                                                     device=device, dtype=dtype)
    bridge.eval()
    weights = read_weights(hf_model, arch)
    cfg = ModelConfig(
        name=name, architecture=type(hf_model).__name__, family=arch.family, n_layers=arch.n_layers,
        n_heads=arch.n_heads, n_kv_heads=arch.n_kv_heads, d_model=arch.d_model, d_head=arch.d_head,
        d_mlp=arch.d_mlp, d_vocab=arch.d_vocab, n_ctx=arch.n_ctx, is_causal=arch.is_causal,
        has_lm_head=has_lm_head, pre_ln=arch.block != "post_norm", parallel=arch.block == "parallel",
    )
    model = HookedModel(LensBackend(bridge, hf_model, arch, weights, has_lm_head), arch, weights, tokenizer, cfg)
    if check:
        with torch.no_grad():
            got = model(probe)
        _compare(expected, got, name, arch.family, dtype)
    return model


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


def _compare(expected: torch.Tensor, got: torch.Tensor, name: str, family: str, dtype: torch.dtype) -> None:
    scale = max(1.0, float(expected.abs().max()))
    diff = float((expected.float() - got.float()).abs().max())
    tolerance = PARITY_TOLERANCE[dtype] * scale
    if not diff <= tolerance:  # also catches NaN
        raise ParityError(
            f"{name} ({family}, {dtype}): the hooked model's output differs from Hugging Face's by up to {diff:.3g} "
            f"(tolerance {tolerance:.3g}, outputs up to {scale:.3g}) on a probe of {tuple(expected.shape[:2])} tokens, "
            f"so every analysis on it would be wrong. This is a TransformerLens bridge mismatch for this "
            f"configuration (known for GPT-2 with scale_attn_weights=False). Pass check=False only if you know "
            f"the difference does not matter for your analysis.")


class _quiet_transformers:
    """Silence transformers' load-time chatter (e.g. the untrained MLM head of a sentence
    encoder, which `ModelConfig.has_lm_head` records instead)."""

    def __enter__(self):
        self._logger = logging.getLogger("transformers")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
