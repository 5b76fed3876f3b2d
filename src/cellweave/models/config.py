"""Model configs from TOML mappings: one parser shared by every model's ``Config.from_dict``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from ..errors import InputError


def config_from_dict(cls: type, values: Mapping[str, Any], source: str, weights_cls: type | None = None) -> Any:
    """A config dataclass from a (TOML) mapping, with an optional nested ``weights`` table; unknown keys (top
    level and among the weights) are refused by name."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(source, f"[model] {unknown[0]}", "unknown setting", f"use one of: {', '.join(sorted(known))}")
    values = dict(values)
    if weights_cls is not None and "weights" in values:
        wk = {f.name for f in fields(weights_cls)}
        bad = sorted(set(values["weights"]) - wk)
        if bad:
            raise InputError(source, f"[model.weights] {bad[0]}", "unknown loss weight", f"use one of: {', '.join(sorted(wk))}")
        values["weights"] = weights_cls(**values["weights"])
    return cls(**values)
