"""SAELens 6's folder format: `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`).

    save_sae(sae, "runs/sae/layer3")      # what SAELens's SAE.load_from_disk reads
    sae = load_sae("path/from/saelens")   # an SAE of the registered class for cfg["architecture"]

Weights: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in], and threshold
[d_sae] for "jumprelu". A BatchTopK SAE is written as a JumpReLU whose threshold is its learned
global threshold for every latent (SAELens does the same), so it loads back as a JumpReLU SAE.
`cfg.json` holds the inference fields of SAELens's config of that architecture plus `metadata`
(`model_name`, `hook_name`, ... when known; `sae_lens_version` is the SAELens release whose
format this writer follows and was checked against; `training_architecture` and its details).
The optional `sparsity.safetensors` holds {"sparsity": log10 feature density [d_sae]}.
Writes are atomic: a folder is written beside the target and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from analyses.sae.base import SAE
from analyses.sae.config import DTYPES, sae_class

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
# The SAELens release whose format this module writes (benchmarks/saelens_interop.py checks it).
SAELENS_FORMAT_VERSION = "6.54.12"
# Keys SAELens 5 and earlier kept at the top level of cfg.json and SAELens 6 keeps in metadata.
_LEGACY_METADATA_KEYS = ("model_name", "hook_name", "hook_head_index", "context_size", "prepend_bos",
                         "seqpos_slice", "dataset_path", "exclude_special_tokens", "neuronpedia_id",
                         "model_from_pretrained_kwargs", "sae_lens_training_version")


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike):
    """Yields a fresh temporary folder beside `folder`; on success it replaces `folder` by a
    rename, so a reader sees either the old folder or the complete new one, never a partial one.
    On error the temporary folder is removed and `folder` is left as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        for path in tmp.rglob("*"):  # make the contents durable before they become visible
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
            os.rename(folder, old)
        os.rename(tmp, folder)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def inference_state_dict(sae: SAE) -> dict[str, torch.Tensor]:
    """The tensors SAELens's inference SAE of `sae.cfg.saved_architecture()` holds."""
    out = {name: getattr(sae, name).detach() for name in ("W_enc", "W_dec", "b_enc", "b_dec")}
    if sae.cfg.saved_architecture() == "jumprelu":
        if sae.architecture == "jumprelu":
            out["threshold"] = sae.threshold.detach()
        else:  # batchtopk: one global threshold
            out["threshold"] = torch.full_like(sae.b_enc, float(sae.topk_threshold)).detach()
    return {name: t.contiguous().cpu() for name, t in out.items()}


def save_sae(sae: SAE, folder: str | os.PathLike, *, sparsity: torch.Tensor | None = None) -> Path:
    """Write `sae` as a SAELens 6 folder (atomically); `sparsity`: log10 feature density [d_sae]."""
    cfg = sae.cfg.inference_dict()
    cfg["metadata"].setdefault("sae_lens_version", SAELENS_FORMAT_VERSION)
    cfg["metadata"].setdefault("sae_lens_training_version", None)
    cfg["metadata"]["written_by"] = "headlab"
    if sparsity is not None and tuple(sparsity.shape) != (sae.cfg.d_sae,):
        raise ValueError(f"sparsity must have shape [d_sae={sae.cfg.d_sae}], got {list(sparsity.shape)}")
    with atomic_folder(folder) as tmp:
        save_file(inference_state_dict(sae), str(tmp / WEIGHTS_FILENAME))
        (tmp / CFG_FILENAME).write_text(json.dumps(cfg, indent=2))
        if sparsity is not None:
            save_file({"sparsity": sparsity.detach().float().contiguous().cpu()}, str(tmp / SPARSITY_FILENAME))
    return Path(folder)


def read_cfg(folder: str | os.PathLike) -> dict:
    path = Path(folder) / CFG_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CFG_FILENAME} in {folder} (an SAELens SAE folder holds {CFG_FILENAME} and {WEIGHTS_FILENAME})")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def read_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(folder) / WEIGHTS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILENAME} in {folder}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is truncated or not a safetensors file ({path.stat().st_size} bytes): {e}") from None


def config_from_dict(cfg: dict, *, device: str | None = None, dtype: str | None = None):
    """The config object for a `cfg.json` dict (dispatching on `architecture`)."""
    missing = [key for key in ("architecture", "d_in", "d_sae") if key not in cfg]
    if missing:
        raise ValueError(f"cfg.json lacks the required field(s) {missing}; it has {sorted(cfg)}")
    cls = sae_class(cfg["architecture"])
    config_cls = cls.config_class
    required = [name for name in config_cls.inference_fields if name == "k"]
    missing = [key for key in required if key not in cfg]
    if missing:
        raise ValueError(f"cfg.json of a {cfg['architecture']!r} SAE lacks the field(s) {missing}")
    metadata = dict(cfg.get("metadata") or {})
    for key in _LEGACY_METADATA_KEYS:
        if key in cfg and key not in metadata:
            metadata[key] = cfg[key]
    names = {f.name for f in fields(config_cls)} - {"metadata"}
    kwargs = {name: cfg[name] for name in names if name in cfg}
    # training details SAELens keeps in metadata (e.g. a BatchTopK's k) are not the loaded
    # architecture's fields; the inference fields above are all an SAE needs to run
    if device is not None:
        kwargs["device"] = device
    if dtype is not None:
        kwargs["dtype"] = dtype
    if kwargs.get("dtype", "float32") not in DTYPES:
        raise ValueError(f"cfg.json has dtype {kwargs['dtype']!r}; known: {sorted(DTYPES)}")
    kwargs["dtype"] = str(DTYPES[kwargs.get("dtype", "float32")]).removeprefix("torch.")
    return cls, config_cls(**kwargs, metadata=metadata)


def load_sae(folder: str | os.PathLike, *, device: str = "cpu", dtype: str | None = None) -> SAE:
    """Load a SAELens-format SAE folder into the registered class of its `architecture`, on
    `device` (default "cpu", whatever cfg.json says, as SAELens's `load_from_disk`) and in
    `dtype` (default: cfg.json's)."""
    return sae_from_tensors(read_cfg(folder), read_weights(folder), str(Path(folder) / WEIGHTS_FILENAME),
                            device=device, dtype=dtype)


def sae_from_tensors(cfg: dict, weights: dict[str, torch.Tensor], source: str, *, device: str = "cpu",
                     dtype: str | None = None) -> SAE:
    """An SAE from a `cfg.json` dict and its inference tensors (named as in SAELens's weights
    file), each checked for name, shape and finiteness; `source` names where they came from."""
    cls, config = config_from_dict(cfg, device=device, dtype=dtype)
    weights = dict(weights)
    if "log_threshold" in weights and "threshold" not in weights:  # SAELens < 6 JumpReLU files
        weights["threshold"] = weights.pop("log_threshold").exp()
    sae = cls(config)
    expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
    if set(weights) != set(expected):
        raise ValueError(f"{source} holds tensors {sorted(weights)}; a {config.architecture!r} "
                         f"SAE needs {sorted(expected)}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"{name} in {source} has shape {list(weights[name].shape)}; "
                             f"cfg.json (d_in={config.d_in}, d_sae={config.d_sae}) needs {list(shape)}")
        if not torch.isfinite(weights[name]).all():
            raise ValueError(f"{name} in {source} contains NaN or inf")
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(weights[name])
    return sae


def load_sparsity(folder: str | os.PathLike) -> torch.Tensor | None:
    """log10 feature density [d_sae] from `sparsity.safetensors`, or None if the folder has none."""
    path = Path(folder) / SPARSITY_FILENAME
    if not path.exists():
        return None
    try:
        return load_file(str(path))["sparsity"]
    except (SafetensorError, OSError, KeyError) as e:
        raise ValueError(f"{path} is truncated or lacks the 'sparsity' tensor: {e}") from None
