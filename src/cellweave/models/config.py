"""Model configs from TOML mappings: one parser shared by every model's ``Config.from_dict``.

Every key must be a field of the config (unknown keys are refused, listing the valid ones), and every value
must have the field's type (an integer where an ``int`` goes, a list of integers for hidden widths ...) and
lie in range: no setting is negative, and sizes (:data:`AT_LEAST_ONE`) are at least 1. A bad value is one
:class:`~cellweave.errors.InputError` naming the key, never a traceback from deep inside torch.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from ..errors import InputError

#: Integer settings that are sizes (widths, cells per step, neighbours, codes): at least 1.
AT_LEAST_ONE = frozenset({"n_latent", "hidden", "batch_size", "k", "d_u", "d_s", "n_codes", "n_components",
                          "rna_hidden", "atac_hidden", "d_steps", "n_top_features"})


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("nothing (leave it out)" if a is type(None) else _describe(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is dict:
        return f"a table of {_describe(args[1]).removeprefix('an ').removeprefix('a ')}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, list | tuple) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, Mapping) and all(isinstance(k, str) and _fits(v, args[1]) for k, v in value.items())
    if isinstance(hint, type) and is_dataclass(hint):
        return isinstance(value, hint | Mapping)
    return True


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, list | tuple):
        return [v for item in value for v in _numbers(item)]
    return []


def check_values(cls: type, values: Mapping[str, Any], source: str, section: str) -> None:
    """Refuse values of the wrong type or out of range for the fields of dataclass ``cls`` (see the module)."""
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING
                                                                     else None) for f in fields(cls)}
    for name, value in values.items():
        hint = hints.get(name, Any)
        where = f"[{section}] {name}"
        default = defaults.get(name)
        shown = default if not is_dataclass(default) else None
        if not _fits(value, hint):
            raise InputError(source, where, f"must be {_describe(hint)}, got {value!r}",
                             f"set {name} = {shown!r} (the default)" if shown is not None else f"give {name} as {_describe(hint)}")
        least = 1 if name in AT_LEAST_ONE else 0
        low = [v for v in _numbers(value) if v < least]
        if low:
            raise InputError(source, where, f"must be {'at least 1' if least else 'zero or more'}, got {value!r}",
                             f"set {name} = {shown!r} (the default)" if shown is not None else f"set {name} to {least} or more")


def config_from_dict(cls: type, values: Mapping[str, Any], source: str, weights_cls: type | None = None) -> Any:
    """A config dataclass from a (TOML) mapping, with an optional nested ``weights`` table; unknown keys (top
    level and among the weights) are refused by name, and values of the wrong type or out of range too."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(source, f"[model] {unknown[0]}", "unknown setting", f"use one of: {', '.join(sorted(known))}")
    check_values(cls, values, source, "model")
    values = dict(values)
    if weights_cls is not None and "weights" in values and not isinstance(values["weights"], weights_cls):
        wk = {f.name for f in fields(weights_cls)}
        bad = sorted(set(values["weights"]) - wk)
        if bad:
            raise InputError(source, f"[model.weights] {bad[0]}", "unknown loss weight", f"use one of: {', '.join(sorted(wk))}")
        check_values(weights_cls, values["weights"], source, "model.weights")
        values["weights"] = weights_cls(**values["weights"])
    return cls(**values)
