"""Interventions: declarative changes to a site's activation during a forward pass.

    m.run(tokens, interventions=[Zero(sites.z(3, 5)), Patch(sites.resid_pre(2), source=other_cache)],
          capture=[sites.head_out(4, 1)])

Each intervention names a site (optionally one head, see `interp.models.sites`) and,
optionally, `positions` (an int, a list of ints, or a slice of the sequence axis; for
`scores`/`pattern` they select query positions). It is plain data, so the same analysis
code runs on any backend. Interventions on one site apply in the order given. Gradients
flow through all of them (a `Scale` with a tensor factor that requires grad is how head
gates are built).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Union

import torch

from .sites import Site

if TYPE_CHECKING:
    from .cache import Cache

Positions = Union[int, list, slice, None]


@dataclass(frozen=True)
class Intervention:
    """Base: where the intervention acts. Subclasses say what it does."""

    site: Site
    positions: Positions = None

    def __post_init__(self):
        if not isinstance(self.site, Site):
            raise TypeError(f"{type(self).__name__}.site must be a Site (see interp.models.sites), "
                            f"got {type(self.site).__name__}")
        check_positions(self.positions)

    def apply(self, selected: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        """The new value of the selected part of the activation. `source` is the same part
        of a `Patch`'s source activation (None for other interventions)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Zero(Intervention):
    """Set the activation to 0."""

    def apply(self, selected, source):
        return torch.zeros_like(selected)


@dataclass(frozen=True)
class Mean(Intervention):
    """Replace the activation by `value` (e.g. its mean over a dataset), broadcast to the
    selected part: for `z(l, h)` a `[d_head]` vector, for `resid_pre(l)` a `[d_model]` one,
    or `[pos, ...]` for a per-position mean."""

    value: torch.Tensor = None

    def __post_init__(self):
        super().__post_init__()
        _check_tensor(self, "value", self.value)

    def apply(self, selected, source):
        return self.value.to(selected.device, selected.dtype).expand_as(selected)


@dataclass(frozen=True)
class Patch(Intervention):
    """Replace the activation by the same site's activation in another run: `source` is a
    `Cache` of that run, or the activation itself (the site's full shape, all heads)."""

    source: Union["Cache", torch.Tensor] = None

    def __post_init__(self):
        super().__post_init__()
        if self.source is None:
            raise ValueError("Patch needs a source: a Cache of another run or the site's activation")

    def source_activation(self) -> torch.Tensor:
        """The source's activation of this site, all heads, full shape."""
        if isinstance(self.source, torch.Tensor):
            return self.source
        return self.source[self.site.all_heads]

    def apply(self, selected, source):
        if source.shape != selected.shape:
            raise ValueError(f"Patch of {self.site}: the source activation has shape {tuple(source.shape)}, the "
                             f"patched run {tuple(selected.shape)} (prompts of the same shape are needed)")
        return source.to(selected.device, selected.dtype)


@dataclass(frozen=True)
class Add(Intervention):
    """Add `value` (broadcast to the selected part), e.g. a steering vector `[d_model]`."""

    value: torch.Tensor = None

    def __post_init__(self):
        super().__post_init__()
        _check_tensor(self, "value", self.value)

    def apply(self, selected, source):
        return selected + self.value.to(selected.device, selected.dtype)


@dataclass(frozen=True)
class Scale(Intervention):
    """Multiply by `factor`, a number or a tensor broadcast to the selected part (a gate)."""

    factor: Union[float, torch.Tensor] = 1.0

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.factor, torch.Tensor):
            _check_tensor(self, "factor", self.factor)
        elif isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or self.factor != self.factor:
            raise TypeError(f"Scale.factor must be a finite number or a tensor, got {self.factor!r}")

    def apply(self, selected, source):
        factor = self.factor.to(selected.device, selected.dtype) if isinstance(self.factor, torch.Tensor) else self.factor
        return selected * factor


@dataclass(frozen=True)
class Splice(Intervention):
    """Replace the activation by `fn(activation)`, e.g. an SAE's reconstruction. `fn` gets
    the selected part and must return a tensor of the same shape."""

    fn: Callable[[torch.Tensor], torch.Tensor] = None

    def __post_init__(self):
        super().__post_init__()
        if not callable(self.fn):
            raise TypeError(f"Splice.fn must be callable, got {type(self.fn).__name__}")

    def apply(self, selected, source):
        out = self.fn(selected)
        if not isinstance(out, torch.Tensor) or out.shape != selected.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"Splice at {self.site}: fn must return a tensor of shape {tuple(selected.shape)}, got {got}")
        return out


def check_positions(positions: Positions) -> None:
    """Positions are None (all), an int, a non-empty list of ints, or a slice."""
    if positions is None or isinstance(positions, slice):
        return
    items = positions if isinstance(positions, list) else [positions]
    if isinstance(positions, list) and not positions:
        raise ValueError("positions must not be an empty list (None means every position)")
    for p in items:
        if isinstance(p, bool) or not isinstance(p, int):
            raise TypeError(f"positions must be an int, a list of ints or a slice, got {positions!r}")


def _check_tensor(intervention: Intervention, field: str, value) -> None:
    name = f"{type(intervention).__name__}.{field}"
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if value.is_floating_point() and not bool(torch.isfinite(value.detach()).all()):
        raise ValueError(f"{name} holds NaN or infinite values")


def select(activation: torch.Tensor, site: Site, positions: Positions) -> tuple:
    """The index of `site`'s head and `positions` within its activation (`activation[index]`
    is the selected part). Checks both against the activation's shape."""
    index: list = [slice(None)] * activation.ndim
    if site.head is not None:
        axis = site.head_axis
        if not 0 <= site.head < activation.shape[axis]:
            what = "key/value head" if site.kind in ("k", "v") else "head"
            raise IndexError(f"{what} {site.head} is out of range at {site.all_heads}: it has "
                             f"{what}s 0..{activation.shape[axis] - 1}")
        index[axis] = site.head
    if positions is not None:
        pos_axis = 2 if site.kind in ("scores", "pattern") else 1
        n_pos = activation.shape[pos_axis]
        items = positions if isinstance(positions, list) else None if isinstance(positions, slice) else [positions]
        for p in items or []:
            if not -n_pos <= p < n_pos:
                raise IndexError(f"position {p} is out of range at {site}: the prompts have {n_pos} positions")
        index[pos_axis] = positions
    return tuple(index)


def apply_all(activation: torch.Tensor, site: Site, interventions: list[Intervention],
              sources: dict[int, torch.Tensor]) -> torch.Tensor:
    """The activation of `site` (all heads) after `interventions` (each naming this site or
    one of its heads), in order. `sources[i]` is the source activation of interventions[i]
    when it is a Patch. Never modifies `activation` in place (autograd may need it)."""
    out = activation
    for i, intervention in enumerate(interventions):
        index = select(out, intervention.site, intervention.positions)
        selected = out[index]
        source = sources[i][index] if i in sources else None
        new = intervention.apply(selected, source)
        out = out.clone()  # a fresh tensor each time: `selected` may be saved for backward
        out[index] = new
    return out
