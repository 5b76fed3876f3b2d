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

A run is written under :func:`run_guard` (by ``cellweave fit`` and by ``model.fit(run_dir=...)`` alike): an existing
run is refused unless replaced or resumed, and one process at a time writes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from ..data.align import FeatureRecord
from ..data.atomic import atomic_write_bytes
from ..data.output import CLI_OPTIONS, output_guard
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


def run_guard(run_dir: str | os.PathLike, overwrite: bool = False, resume: bool = False,
              options: tuple[str, str] = CLI_OPTIONS, where: str = "cellweave fit") -> contextlib.AbstractContextManager:
    """The output guard of a training run (:func:`~cellweave.data.output.output_guard`), held while it is written.

    An existing run is refused unless ``overwrite`` (replaced; the old run comes back if the new one fails before
    its first checkpoint) or ``resume`` (continued in place); a second writer is refused naming the holder's pid.
    Under ``torch.distributed`` only rank 0 holds it (rank 0 alone writes the run's files).

    Parameters
    ----------
    run_dir
        The run directory.
    overwrite, resume
        Replace, or continue, an existing run (not both).
    options
        How a refusal names ``overwrite`` and ``resume`` (command-line flags or the API's keyword arguments).
    where
        Who asks (named by the refusal of ``overwrite`` with ``resume``).

    Raises
    ------
    InputError
        Both ``overwrite`` and ``resume``; an existing run; another writer; a run directory that cannot be written.
    """
    from ..train.distributed import rank
    from ..train.trainer import CHECKPOINT

    if resume and overwrite:
        raise InputError(where, f"{options[1].split('=')[0]}/{options[0].split('=')[0]}", "both given",
                         f"pass {options[1]} to continue the run, or {options[0]} to replace it")
    if os.environ.get("RANK", "0") != "0" or rank() != 0:
        return contextlib.nullcontext(Path(run_dir))
    return output_guard(run_dir, overwrite=overwrite, resume=resume, in_place=True, options=options,
                        keep_partial=lambda run: (run / CHECKPOINT).exists())


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


#: Top-level settings of a config: key -> what its value must be.
SETTINGS: dict[str, str] = {
    "method": "a string", "seed": "an integer", "inputs": "a table", "links": "a string", "links_augment": "a string",
    "kinds": "a table", "matrix_kinds": "a table", "genes_bed": "a string", "batch_key": "a string",
    "label_key": "a string", "model": "a table", "train": "a table",
}
#: What ``cellweave fit`` records in RUN/config.toml beside the settings (read back, never used as settings).
RECORDS = frozenset({"soma_obsm_key", "learned_links", "features", "pairs", "reductions", "likelihoods", "batches",
                     "validation_cells", "budget", "result"})
#: The [train] table: key -> (number type, least value, words also accepted); ``None``: any string.
TRAIN: dict[str, tuple[type | None, float, tuple[str, ...]] | None] = {
    "max_steps": (int, 1, ("auto",)), "max_epochs": (int, 1, ()), "num_workers": (int, 0, ()),
    "checkpoint_every": (int, 1, ()), "checkpoint_minutes": (float, 0, ("off",)), "convergence": (None, 0, ("auto", "off")),
    "device": None, "precision": None}
_TYPES = {"a string": str, "an integer": int, "a table": dict}


def check_config(cfg: Mapping[str, Any], source: str | os.PathLike) -> None:
    """Refuse unknown sections and keys (listing the valid ones) and values of the wrong type or range.

    The ``[model]`` table is checked by the method's config class (``Config.from_dict``); this checks the rest.

    Raises
    ------
    InputError
        The first problem, in one line naming the key.
    """
    for key, value in cfg.items():
        if key in RECORDS:
            continue
        if key not in SETTINGS:
            raise InputError(source, key, "unknown setting or section",
                             f"use one of: {', '.join(sorted(SETTINGS))} (a run's config may also hold {', '.join(sorted(RECORDS))})")
        want = _TYPES[SETTINGS[key]]
        if not isinstance(value, want) or isinstance(value, bool):
            raise InputError(source, key, f"must be {SETTINGS[key]}, got {value!r}", f"give {key} as {SETTINGS[key]}")
    if isinstance(cfg.get("seed"), int) and cfg["seed"] < 0:
        raise InputError(source, "seed", f"must be zero or more, got {cfg['seed']!r}", "e.g. seed = 0")
    for key in ("kinds", "matrix_kinds"):
        for name, value in cfg.get(key, {}).items():
            if not isinstance(value, str):
                raise InputError(source, f"[{key}] {name}", f"must be a string, got {value!r}", "e.g. rna = \"counts\"")
            if key == "matrix_kinds" and value not in ("counts", "normalized"):
                raise InputError(source, f"[{key}] {name}", f"unknown matrix kind {value!r}", "use one of counts, normalized")
    for key, value in cfg.get("train", {}).items():
        if key not in TRAIN:
            raise InputError(source, f"[train] {key}", "unknown setting", f"use one of: {', '.join(sorted(TRAIN))}")
        rule = TRAIN[key]
        if rule is None:
            if not isinstance(value, str):
                raise InputError(source, f"[train] {key}", f"must be a string, got {value!r}", f'e.g. {key} = "auto"')
            continue
        kind, least, words = rule
        if isinstance(value, str) and value in words:
            continue
        number = {int: "an integer", float: "a number", None: None}[kind]
        what = " or ".join([w for w in [number] if w] + [f"'{w}'" for w in words])
        numeric = (int, float) if kind is float else (int,)
        if kind is None or not isinstance(value, numeric) or isinstance(value, bool):
            raise InputError(source, f"[train] {key}", f"must be {what}, got {value!r}",
                             f"e.g. {key} = {repr(words[0]).replace(chr(39), chr(34)) if words else max(int(least), 1) * 100}")
        if value < least or (kind is float and value <= least):
            raise InputError(source, f"[train] {key}", f"must be {'above' if kind is float else 'at least'} {least:g}, got {value!r}",
                             f"set {key} to {'more than ' if kind is float else ''}{least:g}{'' if kind is float else ' or more'}")


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
