"""Read embeddings to evaluate: an ``obsm`` entry and ``obs`` from AnnData files, Zarr stores or SOMA.

- ``.h5ad`` and ``.zarr`` (AnnData layout): ``obsm[key]`` and ``obs`` are read with ``anndata.io.read_elem``
  from the open group; ``X`` is never read.
- ``SOMA_DIR::MEASUREMENT``: ``ms[MEASUREMENT].obsm[key]`` and the experiment's ``obs`` rows of that
  measurement (``has_<measurement>`` when present).
- Several stores (one per modality, as a run writes ``RUN/embeddings/<modality>.zarr``) are concatenated
  and get a ``modality`` column (the modality recorded in each store, else its file name).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError

DEFAULT_OBSM_KEY = "X_cellweave"
MODALITY_COLUMN = "modality"
LOSS_CURVE = "loss_curves.png"


@dataclass
class Embedding:
    """One embedding to evaluate.

    Attributes
    ----------
    name
        Name in tables and file names.
    X
        ``(n_cells, n_dims)`` float32 embedding.
    obs
        Cell metadata, one row per cell of ``X``.
    source
        Where it was read from (for messages).
    X_pre
        The unintegrated representation (``--pre-obsm-key``) for PCR comparison, or ``None``.
    loss_curve
        The run's loss curve image, when there is one.
    modality_key
        The obs column holding each store's modality when several stores were concatenated.
    """

    name: str
    X: np.ndarray
    obs: pd.DataFrame
    source: str
    X_pre: np.ndarray | None = None
    loss_curve: Path | None = None
    modality_key: str | None = None


def _dense(value, source: str, field: str) -> np.ndarray:
    if isinstance(value, pd.DataFrame):
        value = value.to_numpy()
    if sp.issparse(value):
        value = value.toarray()
    value = np.asarray(value)
    if value.ndim != 2 or not np.issubdtype(value.dtype, np.number):
        raise InputError(source, field, f"is not a numeric (cells x dims) matrix (shape {value.shape}, {value.dtype})",
                         "store the embedding as a 2-D numeric array")
    return np.ascontiguousarray(value, dtype=np.float32)


def _check_units(node, source: str, label: str) -> None:
    """A Zarr array's every chunk is present and decodes (zarr would read a missing chunk as zeros)."""
    import zarr

    if isinstance(node, zarr.Array):
        from ..data.check import first_bad_unit

        bad = first_bad_unit(source, label, node)
        if bad is not None:
            raise bad


def _read_group(group, source: str, keys: Sequence[str | None]) -> tuple[list[np.ndarray | None], pd.DataFrame]:
    """``obsm[key]`` for each key (None passes through) and ``obs`` of an open h5py/zarr AnnData group."""
    available = sorted(group["obsm"].keys()) if "obsm" in group else []
    out = []
    for key in keys:
        if key is None:
            out.append(None)
            continue
        if key not in available:
            raise InputError(source, f"obsm['{key}']", f"no such embedding (obsm has: {', '.join(available) or 'nothing'})",
                             "pass --obsm-key with one of these")
        _check_units(group["obsm"][key], source, f"obsm/{key}")
        out.append(_dense(ad.io.read_elem(group["obsm"][key]), source, f"obsm['{key}']"))
    if "obs" not in group:
        raise InputError(source, "obs", "the store has no obs table", "write obs (AnnData layout)")
    obs = ad.io.read_elem(group["obs"])
    obs.index = obs.index.astype(str)
    return out, obs


def _modality_name(group, default: str) -> str:
    if "uns" in group and "cellweave" in group["uns"]:
        meta = ad.io.read_elem(group["uns"]["cellweave"])
        if isinstance(meta, dict) and meta.get("modality"):
            return str(meta["modality"])
    return default


def _read_soma(spec: str, keys: Sequence[str | None]) -> tuple[list[np.ndarray | None], pd.DataFrame, str]:
    import tiledbsoma as soma

    from ..data.soma_store import JOINID, OBS_ID

    experiment, measurement = spec.rsplit("::", 1)
    if not Path(experiment).exists() and "://" not in experiment:
        raise InputError(experiment, "experiment", "no such path", "pass SOMA_DIR::MEASUREMENT of an existing experiment")
    with soma.Experiment.open(experiment) as exp:
        measurements = sorted(exp.ms.keys())
        if measurement not in measurements:
            raise InputError(experiment, f"ms['{measurement}']",
                             f"no such measurement (this experiment has: {', '.join(measurements) or 'none'})",
                             "pass one of the measurements present")
        meas = exp.ms[measurement]
        available = sorted(meas.obsm.keys()) if "obsm" in meas else []
        obs = exp.obs.read().concat().to_pandas()
        obs = obs.sort_values(JOINID).reset_index(drop=True)
        has = f"has_{measurement}"
        if has in obs.columns:
            obs = obs[obs[has].astype(bool)].reset_index(drop=True)
        joinids = obs[JOINID].to_numpy(dtype=np.int64)
        out = []
        for key in keys:
            if key is None:
                out.append(None)
                continue
            if key not in available:
                raise InputError(spec, f"obsm['{key}']", f"no such embedding (obsm has: {', '.join(available) or 'nothing'})",
                                 "pass --obsm-key with one of these")
            arr = meas.obsm[key]
            width = int(arr.shape[1])
            if isinstance(arr, soma.DenseNDArray):
                full = arr.read((slice(None), slice(None))).to_numpy()
                values = np.asarray(full)[joinids]
            else:
                table = arr.read().tables().concat()
                rows = table["soma_dim_0"].to_numpy()
                cols = table["soma_dim_1"].to_numpy()
                data = table["soma_data"].to_numpy()
                position = pd.Index(joinids).get_indexer(rows)
                keep = position >= 0
                values = np.zeros((len(joinids), width), dtype=np.float32)
                values[position[keep], cols[keep]] = data[keep]
            out.append(_dense(values, spec, f"obsm['{key}']"))
    id_column = OBS_ID if OBS_ID in obs.columns else None
    index = obs[id_column].astype(str) if id_column else obs[JOINID].astype(str)
    obs = obs.drop(columns=[c for c in (JOINID, id_column) if c] + [c for c in obs.columns if c.startswith("has_")])
    obs.index = pd.Index(index.to_numpy(), name=None)
    return out, obs, measurement


def _read_one(path: str, keys: Sequence[str | None]) -> tuple[list[np.ndarray | None], pd.DataFrame, str]:
    """Arrays for ``keys``, obs, and the modality name of one store."""
    if "::" in path:
        return _read_soma(path, keys)
    p = Path(path)
    if not p.exists():
        raise InputError(p, "path", "does not exist", "pass an existing .h5ad file, .zarr store or SOMA_DIR::MEASUREMENT")
    if p.suffix == ".h5ad":
        import h5py

        with h5py.File(p, "r") as f:
            arrays, obs = _read_group(f, str(p), keys)
            return arrays, obs, _modality_name(f, p.stem)
    if p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists()):
        import zarr

        root = zarr.open_group(str(p), mode="r")
        arrays, obs = _read_group(root, str(p), keys)
        return arrays, obs, _modality_name(root, p.stem)
    raise InputError(p, "format", "not an .h5ad file, Zarr AnnData store or SOMA measurement",
                     "pass an AnnData .h5ad/.zarr or SOMA_DIR::MEASUREMENT")


def read_embedding(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    obsm_key: str = DEFAULT_OBSM_KEY,
    *,
    name: str | None = None,
    pre_obsm_key: str | None = None,
    modality_key: str = MODALITY_COLUMN,
) -> Embedding:
    """Read one embedding from one store, or from several stores (one per modality) concatenated.

    Parameters
    ----------
    paths
        ``.h5ad``, ``.zarr`` or ``SOMA_DIR::MEASUREMENT``; several for one store per modality.
    obsm_key
        The embedding's ``obsm`` key.
    name
        Name in reports (default: the obsm key for one store, else the stores' common folder name).
    pre_obsm_key
        ``obsm`` key of the unintegrated representation (e.g. ``X_pca``) for PCR comparison.
    modality_key
        Column to hold each store's modality when several stores are given (kept when obs has it already).

    Raises
    ------
    InputError
        Missing paths or keys (naming the keys there are), non-numeric or mismatched embeddings.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise InputError("evaluate", "--embedding", "no input given", "pass at least one store")
    parts = [_read_one(str(p), [obsm_key, pre_obsm_key]) for p in items]
    where = ", ".join(map(str, items))
    widths = {arrays[0].shape[1] for arrays, _, _ in parts}
    if len(widths) > 1:
        raise InputError(where, f"obsm['{obsm_key}']", f"the stores' embeddings differ in width {sorted(widths)}",
                         "evaluate stores of the same run (one shared latent space)")
    if pre_obsm_key and len({arrays[1].shape[1] for arrays, _, _ in parts}) > 1:
        raise InputError(where, f"obsm['{pre_obsm_key}']", "the stores' unintegrated representations differ in width",
                         "use a representation shared by all stores, or leave --pre-obsm-key out")
    X = np.concatenate([arrays[0] for arrays, _, _ in parts])
    X_pre = np.concatenate([arrays[1] for arrays, _, _ in parts]) if pre_obsm_key else None
    if len(parts) == 1:
        obs = parts[0][1]
    else:
        frames = []
        for _, frame, modality in parts:
            frame = frame.copy()
            if modality_key not in frame.columns:
                frame[modality_key] = modality
            frames.append(frame)
        obs = pd.concat(frames, axis=0, join="outer")
    if len(obs) != X.shape[0]:
        raise InputError(", ".join(map(str, items)), "obs", f"{len(obs)} obs rows but {X.shape[0]} embedding rows",
                         "write obs and obsm of the same cells")
    if name is None:
        name = obsm_key if len(items) == 1 else Path(str(items[0]).split("::")[0]).resolve().parent.name or obsm_key
    return Embedding(name=name, X=X, obs=obs, source=", ".join(map(str, items)), X_pre=X_pre,
                     modality_key=modality_key if len(parts) > 1 else None)


def read_run(run: str | os.PathLike, obsm_key: str = DEFAULT_OBSM_KEY, *, pre_obsm_key: str | None = None,
             modality_key: str = MODALITY_COLUMN) -> Embedding:
    """Read a run directory: every ``RUN/embeddings/*.zarr`` (one per modality) and ``RUN/loss_curves.png``.

    Raises
    ------
    InputError
        When the run has no embedding stores.
    """
    run = Path(run)
    stores = sorted((run / "embeddings").glob("*.zarr")) if (run / "embeddings").is_dir() else []
    if not stores:
        raise InputError(run, "embeddings/", "no embedding stores (*.zarr) in the run",
                         "pass the directory of a finished run, or the stores with --embedding")
    emb = read_embedding(stores, obsm_key, name=run.resolve().name, pre_obsm_key=pre_obsm_key, modality_key=modality_key)
    emb.source = str(run)
    curve = run / LOSS_CURVE
    emb.loss_curve = curve if curve.exists() else None
    return emb
