"""SAE configurations (SAELens 6 field names) and the registry of architectures.

Each architecture has one config dataclass: the fields SAELens writes to `cfg.json` for the
inference SAE (`d_in`, `d_sae`, `dtype`, `device`, `apply_b_dec_to_input`,
`normalize_activations`, `reshape_activations`, `metadata`, and architecture fields such as
`k`), followed by the training fields of SAELens's `*TrainingSAEConfig` of the same
architecture (`l1_coefficient`, `aux_loss_coefficient`, `jumprelu_bandwidth`, ...).
`inference_dict()` is what goes into `cfg.json`; the training fields go into
`metadata["training_architecture_details"]`, as SAELens does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from analyses.sae.base import SAE

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
# SAELens also writes "torch.float32" etc.
DTYPES.update({f"torch.{name}": dtype for name, dtype in list(DTYPES.items())})

# "expected_average_only_in" is the convention of rescaling activations to norm sqrt(d_in) during
# training and folding the factor into the weights afterwards; an SAE whose factor has been
# folded says "none". Run-time normalisations (layer_norm, constant_norm_rescale, whitening) are
# SAELens options headlab does not implement, so loading such an SAE is refused.
NORMALIZE_ACTIVATIONS = ("none",)
# "hook_z" marks an attention-output SAE (SAELens reshapes [..., n_heads, d_head] itself); here
# it is only recorded: encode takes z already flattened to [..., n_heads * d_head].
RESHAPE_ACTIVATIONS = ("none", "hook_z")


@dataclass(kw_only=True)
class SAEConfig:
    """Fields shared by every architecture (SAELens's `SAEConfig` + `TrainingSAEConfig`)."""

    architecture: ClassVar[str] = ""
    # names of the architecture-specific fields that belong in the inference cfg.json
    inference_fields: ClassVar[tuple[str, ...]] = ()

    d_in: int
    d_sae: int
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    metadata: dict[str, Any] = field(default_factory=dict)
    # training: norm of each decoder row at initialisation (Anthropic's April 2024 update);
    # architectures that keep decoder rows unit-norm ignore it
    decoder_init_norm: float | None = 0.1

    def __post_init__(self):
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.normalize_activations not in NORMALIZE_ACTIVATIONS:
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r} is not supported by headlab "
                f"(supported: {NORMALIZE_ACTIVATIONS}); fold the normalisation into the weights first")
        if self.reshape_activations not in RESHAPE_ACTIVATIONS:
            raise ValueError(f"reshape_activations must be one of {RESHAPE_ACTIVATIONS}, got {self.reshape_activations!r}")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        if self.decoder_init_norm is not None and not self.decoder_init_norm > 0:
            raise ValueError(f"decoder_init_norm must be positive or None, got {self.decoder_init_norm!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def _check_coefficient(self, name: str) -> None:
        value = getattr(self, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def _check_steps(self, name: str) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")

    def inference_dict(self) -> dict[str, Any]:
        """The `cfg.json` of the inference SAE, as SAELens 6 writes it."""
        base = ("d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                "reshape_activations")
        out = {name: getattr(self, name) for name in base + self.inference_fields}
        out["metadata"] = {**self.metadata, "training_architecture": self.architecture,
                           "training_architecture_details": self.training_details()}
        out["architecture"] = self.saved_architecture()
        return out

    def training_details(self) -> dict[str, Any]:
        skip = {"d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                "reshape_activations", "metadata", *self.inference_fields}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def saved_architecture(self) -> str:
        """The architecture an inference loader sees (BatchTopK is saved as JumpReLU)."""
        return self.architecture


_REGISTRY: dict[str, type[SAE]] = {}


def register(cls: type[SAE]) -> type[SAE]:
    """Class decorator: make an SAE class loadable by its `architecture` name."""
    name = cls.config_class.architecture
    if name in _REGISTRY:
        raise ValueError(f"architecture {name!r} is already registered by {_REGISTRY[name].__name__}")
    _REGISTRY[name] = cls
    return cls


def sae_class(architecture: str) -> type[SAE]:
    """The SAE class registered under `architecture` ("standard", "topk", "batchtopk", "jumprelu")."""
    import analyses.sae  # noqa: F401  (importing the package registers every architecture)

    if architecture not in _REGISTRY:
        raise ValueError(f"unknown SAE architecture {architecture!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[architecture]


def architectures() -> list[str]:
    import analyses.sae  # noqa: F401

    return sorted(_REGISTRY)
