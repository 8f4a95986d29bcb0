"""Embedded models that load offline: `minilm` and the project's own `zoo/*` models."""

from .registry import DEFAULT_MODEL, EMBEDDED, EmbeddedModel, get_embedded, list_models

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "EmbeddedModel", "get_embedded", "list_models"]
