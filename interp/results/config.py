"""Analysis configs: dataclasses whose fields state, once, each option's type, default, help
and domain. The command line is generated from them, the library functions take their
defaults from them, and constructing one checks every field::

    @dataclass(frozen=True)
    class HeadsConfig(Config):
        n_sequences: int = option(64, "probe sequences", ge=1)
        kinds: tuple[str, ...] = option(KINDS, "which scores", choices=KINDS, min_items=1)

    HeadsConfig(n_sequences=0)   # ValueError: n_sequences (--n-sequences) must be an int >= 1, got 0

Supported field types: `int`, `float`, `str`, `bool`, `X | None` of those, tuples `tuple[X, ...]`
(on the command line: several values), and `tuple[tuple[int, int], ...]` for (layer, head)
pairs (written `L.H` on the command line). Domains: `choices`, bounds `ge gt le lt`,
`min_items max_items` for tuples, and `index` ("layer" or "head") for values that must name
a layer or head of the model (checked against the model when the analysis runs, see
`check_indices`). Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

INDEX_KINDS = ("layer", "head")
_MISSING = dataclasses.MISSING


def option(default: Any, help: str, *, choices: tuple | None = None, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None,
           min_items: int | None = None, max_items: int | None = None, index: str | None = None) -> Any:
    """A config field: its default (immutable: use a tuple for several values), a help text for
    the command line, and its domain (see the module docstring)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError(f"a config default must be immutable (a tuple, not a {type(default).__name__})")
    if index is not None and index not in INDEX_KINDS:
        raise ValueError(f"index must be one of {INDEX_KINDS}, got {index!r}")
    metadata = {"help": help, "choices": None if choices is None else tuple(choices), "ge": ge, "gt": gt,
                "le": le, "lt": lt, "min_items": min_items, "max_items": max_items, "index": index}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class FieldSpec:
    """One config field as the checks and the command line see it: `base` is the value type
    (int, float, str, bool, or "head" for a (layer, head) pair), `many` whether the field holds
    a tuple of them, `optional` whether None is allowed."""

    name: str
    base: Any
    many: bool
    optional: bool
    default: Any
    help: str
    choices: tuple | None
    ge: float | None
    gt: float | None
    le: float | None
    lt: float | None
    min_items: int | None
    max_items: int | None
    index: str | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        return f"{self.name} ({self.flag})"

    def describe(self) -> str:
        """The domain in words, e.g. "an int >= 1" or "a list of 1 to 8 texts"."""
        one = self._describe_one()
        if self.many:
            if self.min_items and self.max_items:
                count = f"{self.min_items} to {self.max_items} "
            elif self.min_items == 1:
                count = "one or more "
            elif self.min_items:
                count = f"at least {self.min_items} "
            elif self.max_items:
                count = f"at most {self.max_items} "
            else:
                count = ""
            text = f"a list of {count}values, each {one}"
        else:
            text = one
        return text + (", or None" if self.optional else "")

    def _describe_one(self) -> str:
        if self.base == "head":
            return "a (layer, head) pair of ints >= 0"
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        noun = {int: "an int", float: "a finite number", str: "a string", bool: "True or False"}[self.base]
        bounds = [f"{sign} {value:g}" for sign, value in ((">=", self.ge), (">", self.gt), ("<=", self.le),
                                                           ("<", self.lt)) if value is not None]
        return noun + (" " + " and ".join(bounds) if bounds else "")

    def check(self, value: Any) -> Any:
        """`value` normalised (lists become tuples, ints given for floats become floats), or a
        ValueError / TypeError naming this field, its domain and the value."""
        if value is None:
            if self.optional:
                return None
            raise self._error(value, TypeError)
        if not self.many:
            return self._check_one(value)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise self._error(value, TypeError)
        if self.min_items is not None and len(value) < self.min_items:
            raise self._error(value)
        if self.max_items is not None and len(value) > self.max_items:
            raise self._error(value)
        return tuple(self._check_one(item) for item in value)

    def _check_one(self, value: Any) -> Any:
        if self.base == "head":
            if (not isinstance(value, (tuple, list)) or len(value) != 2
                    or not all(_is_int(v) and v >= 0 for v in value)):
                raise self._error(value, TypeError if not isinstance(value, (tuple, list)) else ValueError)
            return (int(value[0]), int(value[1]))
        if self.base is bool:
            if not isinstance(value, bool):
                raise self._error(value, TypeError)
            return value
        if self.base is int:
            if not _is_int(value):
                raise self._error(value, TypeError)
            value = int(value)
        elif self.base is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self._error(value, TypeError)
            value = float(value)
            if not math.isfinite(value):
                raise self._error(value)
        elif self.base is str:
            if not isinstance(value, str):
                raise self._error(value, TypeError)
        if self.choices is not None and value not in self.choices:
            raise self._error(value)
        for bound, ok in ((self.ge, lambda b: value >= b), (self.gt, lambda b: value > b),
                          (self.le, lambda b: value <= b), (self.lt, lambda b: value < b)):
            if bound is not None and not ok(bound):
                raise self._error(value)
        return value

    def _error(self, value: Any, kind: type[Exception] = ValueError) -> Exception:
        return kind(f"{self.label} must be {self.describe()}, got {value!r}")

    def out_of_domain(self) -> list[Any]:
        """Values this field refuses: wrong types, non-integers, NaN, each bound crossed, an
        unknown choice, too few or too many items (for the input sweep of the tests)."""
        bad_one = self._bad_one()
        if not self.many:
            return bad_one + ([] if self.optional else [None])
        good = self._good_one()
        bad = ["not-a-list"] + [(item,) for item in bad_one]
        if self.min_items:
            bad.append(())
        if self.max_items is not None:
            bad.append((good,) * (self.max_items + 1))
        return bad

    def _bad_one(self) -> list[Any]:
        if self.base == "head":
            return [(0,), (0, 1.5), (-1, 0), "0.1"]
        if self.base is bool:
            return ["yes", 1]
        if self.choices is not None:
            return ["no-such-choice" if self.base is str else _beyond(self.choices)]
        bad: list[Any] = []
        if self.base is int:
            bad += [1.5, True, "3"]
        elif self.base is float:
            bad += [math.nan, math.inf, "0.5"]
        else:
            bad += [3]
        step = 1 if self.base is int else 0.5
        bad += [b - step for b in (self.ge,) if b is not None] + [b for b in (self.gt, self.lt) if b is not None]
        bad += [b + step for b in (self.le,) if b is not None]
        return bad

    def _good_one(self) -> Any:
        if self.base == "head":
            return (0, 0)
        if self.choices is not None:
            return self.choices[0]
        if self.base is str:
            return "text"
        low = next((b for b in (self.ge, self.gt) if b is not None), 0)
        return {int: int(low) + 1, float: float(low) + 0.5, bool: True}[self.base]


def _beyond(choices: tuple) -> Any:
    numbers = [c for c in choices if isinstance(c, (int, float))]
    return max(numbers) + 1 if numbers else "no-such-choice"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Config:
    """Base of analysis configs (frozen dataclasses of `option` fields): constructing one checks
    every field and stores lists as tuples, so a config is always in its domain."""

    def __post_init__(self):
        for spec in field_specs(type(self)):
            object.__setattr__(self, spec.name, spec.check(getattr(self, spec.name)))

    def as_kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments (tuples kept)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def as_parameters(self) -> dict[str, Any]:
        """The fields as JSON values (tuples become lists), for a bundle's parameters."""
        return {name: _jsonable(value) for name, value in self.as_kwargs().items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def field_specs(config: type) -> list[FieldSpec]:
    """The `FieldSpec` of every field of the config class `config`."""
    if not (isinstance(config, type) and dataclasses.is_dataclass(config) and issubclass(config, Config)):
        raise TypeError(f"an analysis config must be a dataclass subclassing interp.results.Config, got {config!r}")
    hints = typing.get_type_hints(config)
    specs = []
    for f in dataclasses.fields(config):
        if f.default is _MISSING:
            raise TypeError(f"{config.__name__}.{f.name} needs a default (declare it with option(...))")
        if "help" not in f.metadata:
            raise TypeError(f"{config.__name__}.{f.name} must be declared with option(default, help, ...)")
        base, many, optional = _parse_type(hints[f.name], f"{config.__name__}.{f.name}")
        meta = f.metadata
        specs.append(FieldSpec(f.name, base, many, optional, f.default, meta["help"], meta["choices"], meta["ge"],
                               meta["gt"], meta["le"], meta["lt"], meta["min_items"], meta["max_items"],
                               meta["index"]))
    return specs


def _parse_type(hint: Any, where: str) -> tuple[Any, bool, bool]:
    """(base, many, optional) of a field's annotation."""
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{where}: unsupported type {hint!r}")
        hint, optional = rest[0], True
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        if len(items) == 2 and items[1] is Ellipsis:
            inner = items[0]
            if typing.get_origin(inner) is tuple and typing.get_args(inner) == (int, int):
                return "head", True, optional
            if inner in (int, float, str, bool):
                return inner, True, optional
        raise TypeError(f"{where}: tuples must be tuple[int|float|str, ...] or tuple[tuple[int, int], ...], "
                        f"got {hint!r}")
    if hint in (int, float, str, bool):
        return hint, False, optional
    raise TypeError(f"{where}: unsupported type {hint!r} (int, float, str, bool, their tuples, or X | None)")


def check_indices(config: Config, n_layers: int, n_heads: int) -> None:
    """Check the fields declared with `index` against a model of `n_layers` x `n_heads`:
    IndexError naming the field and the model's range. (Their sign and integrality are
    already checked when the config is built.)"""
    for spec in field_specs(type(config)):
        value = getattr(config, spec.name)
        if value is None or spec.index is None:
            continue
        for item in (value if spec.many else (value,)):
            pair = item if spec.base == "head" else ((item, 0) if spec.index == "layer" else (0, item))
            layer, head = pair
            if layer >= n_layers or (spec.base == "head" or spec.index == "head") and head >= n_heads:
                raise IndexError(f"{spec.label} names {item!r}, outside this model: layers 0..{n_layers - 1}, "
                                 f"heads 0..{n_heads - 1}")
