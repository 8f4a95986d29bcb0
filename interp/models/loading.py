"""`load_model`: a hub name, a local Hugging Face folder, or an embedded name -> `HookedModel`.

Every path builds the Hugging Face model and tokenizer first, then hands both to
TransformerLens's `TransformerBridge.boot_transformers`, so a local folder never touches the
network. Attention runs in eager mode, so patterns are real.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from ..zoo.registry import EMBEDDED, get_embedded
from .config import ModelConfig
from .hooked import HookedModel

# Encoders are booted through their masked-LM class, which is what the bridge adapts.
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "mpnet"}
PRE_LN_ENCODERS: set[str] = set()


def load_model(name_or_path: str | Path, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None) -> HookedModel:
    """Load a model for analysis.

    Args:
        name_or_path: an embedded name (see `list_models()`: "minilm", "zoo/induction-2l", ...),
            a local folder holding a Hugging Face model (config.json + weights + tokenizer;
            loads with no network), or a hub name such as "gpt2" (needs internet).
        device: where to put it; default CUDA when available, else CPU.
        dtype: parameter dtype (default float32).
    """
    dtype = dtype or torch.float32
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
    return _wrap(name, hf_model, tokenizer, has_lm_head, device, dtype)


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


def _wrap(name: str, hf_model, tokenizer, has_lm_head: bool, device: torch.device, dtype: torch.dtype) -> HookedModel:
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings(), _quiet_transformers():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer,
                                                     device=device, dtype=dtype)
    bridge.eval()
    c = bridge.cfg
    model_type = hf_model.config.model_type
    is_causal = model_type not in ENCODER_TYPES
    cfg = ModelConfig(
        name=name, architecture=type(hf_model).__name__, n_layers=c.n_layers, n_heads=c.n_heads,
        d_model=c.d_model, d_head=c.d_head, d_vocab=c.d_vocab, n_ctx=c.n_ctx, is_causal=is_causal,
        has_lm_head=has_lm_head, pre_ln=is_causal or model_type in PRE_LN_ENCODERS,
    )
    return HookedModel(bridge, hf_model, bridge.tokenizer, cfg)


class _quiet_transformers:
    """Silence transformers' load-time chatter (e.g. the untrained MLM head of a sentence
    encoder, which `ModelConfig.has_lm_head` records instead)."""

    def __enter__(self):
        self._logger = logging.getLogger("transformers")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
