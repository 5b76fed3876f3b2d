"""A run directory: the resolved config (TOML), the trainer's files, and the outputs.

Layout::

    RUN/config.toml          resolved settings and inputs (data, never code)
    RUN/checkpoint.pt        trainer checkpoint (weights, optimizers, RNG, stream position)
    RUN/losses.csv           loss log;  RUN/loss_curves.png  its plot
    RUN/model.json           what is needed to rebuild the module (feature lists, link matrices' shapes)
    RUN/embeddings/<m>.zarr  AnnData Zarr per modality: obs_names = input cell ids, obsm['X_cellweave']
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from ..data.atomic import atomic_write_bytes
from ..errors import InputError

CONFIG = "config.toml"


def write_config(run_dir: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Write ``config`` as TOML (``None`` values are left out: TOML has no null)."""
    path = Path(run_dir) / CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, tomli_w.dumps(_drop_none(config)).encode())
    return path


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML config file; a clear error names the file and the parse problem."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "config", "no such file", "pass an existing TOML file (or a run directory)") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, "config", f"not valid TOML ({exc})", "fix the syntax at the position given") from None


def read_run_config(run_dir: str | os.PathLike, method: str) -> dict[str, Any]:
    """A run directory's config, refused (naming the run's method) when another method wrote it."""
    cfg = read_config(run_dir)
    if cfg.get("method") != method:
        raise InputError(Path(run_dir), "config.toml", f"a {cfg.get('method')!r} run, not a {method} one",
                         f"pass a run written by `cellweave fit --method {method}`")
    return cfg


def _drop_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_drop_none(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
