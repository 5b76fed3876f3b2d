"""A run directory: the resolved config (TOML), the trainer's files, and the outputs.

Layout::

    RUN/config.toml          resolved settings and inputs (data, never code)
    RUN/checkpoint.pt        trainer checkpoint (weights, optimizers, RNG, stream position)
    RUN/losses.csv           loss log;  RUN/loss_curves.png  its plot
    RUN/model.json           what is needed to rebuild the module (feature lists, link matrices' shapes)
    RUN/features/<m>.npz     each modality's feature names (and ids), the features the model reads and the
                             preprocessing statistics it used: every later read aligns to them by name
    RUN/embeddings/<m>.zarr  AnnData Zarr per modality: obs_names = input cell ids, obsm['X_cellweave']

Embeddings of a SOMA input are also written into its measurement's ``obsm`` under the run's own key
(:func:`soma_obsm_key`, recorded in ``config.toml`` as ``soma_obsm_key``), so a second run never replaces the first.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from ..data.align import FeatureRecord
from ..data.atomic import atomic_write_bytes
from ..errors import InputError

CONFIG = "config.toml"
FEATURES = "features"
#: Prefix of the per-run ``obsm`` key of embeddings written into SOMA.
SOMA_KEY_PREFIX = "X_cellweave_"


def soma_obsm_key(run_dir: str | os.PathLike) -> str:
    """The ``obsm`` key a run writes its SOMA embeddings under: ``X_cellweave_<run directory name>`` (characters
    other than letters, digits, ``_``, ``-`` and ``.`` become ``_``)."""
    name = Path(os.path.abspath(run_dir)).name
    return SOMA_KEY_PREFIX + (re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "run")


def write_feature_records(run_dir: str | os.PathLike, records: Mapping[str, FeatureRecord]) -> None:
    """Write each modality's :class:`~cellweave.data.align.FeatureRecord` to ``RUN/features/<modality>.npz``."""
    for m, record in records.items():
        record.save(Path(run_dir) / FEATURES / f"{m}.npz")


def read_feature_records(run_dir: str | os.PathLike, modalities: list[str]) -> dict[str, FeatureRecord]:
    """The run's feature records of ``modalities`` (an error names a run that predates them)."""
    return {m: FeatureRecord.load(Path(run_dir) / FEATURES / f"{m}.npz") for m in modalities}


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
