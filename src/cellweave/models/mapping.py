"""Query mapping: new cells embedded into a trained latent space, the reference left as it is.

Each query store is aligned by name to the features the run recorded (:func:`~cellweave.data.align.align_store`:
permuted features give the same values, missing ones are filled as unmeasured with a warning, too few are
refused), checked like any input, and embedded with the trained weights and the run's preprocessing statistics.
A model with batch covariates first fits parameters for the query's new batches with everything else frozen
(:meth:`~cellweave.models.base.IntegrationModel.adapt_to_query`). With a label key, the reference cells' labels
are transferred to the query cells by a kNN vote in the latent space, with the share of votes as confidence.

Outputs under ``OUT``: ``embeddings/<modality>.zarr`` (AnnData Zarr, ``obsm['X_cellweave']``, as ``fit`` writes
them), ``labels/<modality>.tsv`` (``cell, predicted, confidence[, true]``) and ``mapping.json`` (the run, each
query input, the share of the model's features it had, the new batches fitted) and, for new batches, their
parameters (scMRDR: ``query_batches.pt``, read back by ``load_query_state``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..data import ModalityStore
from ..data.align import MIN_OVERLAP, align_store
from ..data.atomic import atomic_write_bytes
from ..data.check import check_inputs, check_obs_keys, open_store
from ..data.spec import input_record
from ..errors import InputError
from .inputs import StoreLike

if TYPE_CHECKING:
    from .base import IntegrationModel

LABELS = "labels"
#: What a mapping records: the run, each query input, the share of the model's features it had, the adaptation.
MAPPING = "mapping.json"


def map_query(model: IntegrationModel, queries: Mapping[str, StoreLike], out_dir: str | os.PathLike,
              batch_key: str | None = None, label_key: str | None = None, min_overlap: float = MIN_OVERLAP,
              max_steps: int = 500, k: int = 30, overwrite: bool = True, progress: bool = True) -> dict[str, Path]:
    """Embed the cells of ``queries`` into ``model``'s latent space (the model's weights are not changed).

    Parameters
    ----------
    model
        A trained model (fitted, or rebuilt with :meth:`~cellweave.models.base.IntegrationModel.from_run`).
    queries
        Modality name (one of the model's) -> store or path of the new cells.
    out_dir
        Output directory (``embeddings/``, ``labels/``); never the run directory itself.
    batch_key
        Obs column of the query's batches (models with batch covariates: unseen batches get new parameters).
    label_key
        Obs column of the reference cells to transfer (needs the run's embeddings, ``RUN/embeddings``).
    min_overlap
        Least share of the model's features a query store must have.
    max_steps
        Steps of the new batches' fit (models with batch covariates).
    k
        Neighbours of the label vote.
    overwrite
        Replace existing outputs.
    progress
        Show progress bars.

    Returns
    -------
    dict
        Modality -> embedding store of its query cells. Transferred labels are in ``model.query_labels``.
    """
    from ..downstream import transfer_labels
    from .base import IntegrationModel

    model._require_module()
    out_dir = Path(out_dir)
    if model.run_dir is not None and out_dir.resolve() == Path(model.run_dir).resolve():
        raise InputError(out_dir, "out", "is the run directory (its embeddings are the reference's)",
                         "write the query's outputs to another directory")
    unknown = [m for m in queries if m not in model.stores]
    if unknown:
        raise InputError("query", "modality", f"{unknown[0]!r} is not a modality of the model ({', '.join(model.stores)})",
                         "name each query store after the model's modality it measures")
    records = model.feature_records()
    stores: dict[str, ModalityStore] = {}
    for m, spec in queries.items():
        store = spec if isinstance(spec, ModalityStore) else open_store(spec, m)
        store.modality = m
        stores[m] = align_store(store, records[m], min_overlap)
    check_inputs(stores).raise_first()
    problems = check_obs_keys(stores, [batch_key])
    if problems:
        raise problems[0]
    reference = {}
    if label_key is not None:
        if model.run_dir is None:
            raise InputError(type(model).__name__, "label_key", "no run directory holding the reference embeddings",
                             "fit with run_dir=... (or load the model from its run) to transfer labels")
        reference = {m: Path(model.run_dir) / "embeddings" / f"{m}.zarr" for m in stores}
        for m, path in reference.items():
            if not path.exists():
                raise InputError(path, "embedding", f"no reference embedding of modality {m!r}", "run model.embed() first")
    model.query_summary = model.adapt_to_query(stores, batch_key, max_steps, progress)
    paths: dict[str, Path] = {}
    for m, store in stores.items():
        with model.serving(m, store, batch_key):
            # the base embedding only: a model's own extras (FactVAE's joint store) describe the reference run
            paths |= IntegrationModel.embed(model, out_dir / "embeddings", [m], overwrite=overwrite, progress=progress)
    record = {"run": None if model.run_dir is None else str(Path(model.run_dir).resolve()), "method": model.method,
              "batch_key": batch_key, "label_key": label_key, "adaptation": model.query_summary,
              "modalities": {m: {"input": input_record(spec), "embedding": str(paths[m]),
                                 "matched_by": stores[m].matched_by,
                                 "features_present": float(stores[m].present[pd.Index(records[m].var_names).get_indexer(
                                     records[m].model_features)].mean()),
                                 "soma_obsm_key": model.soma_keys.get(m)} for m, spec in queries.items()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = model.save_query_state(out_dir)
    record["adaptation"] = dict(record["adaptation"]) | ({"parameters": saved.name} if saved is not None else {})
    atomic_write_bytes(out_dir / MAPPING, json.dumps(record, indent=1).encode())
    model.query_labels = {}
    for m, path in reference.items():
        table = transfer_labels(path, paths[m], label_key, k=k)
        target = out_dir / LABELS / f"{m}.tsv"
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, table.rename_axis("cell").to_csv(sep="\t").encode())
        model.query_labels[m] = table
    return paths


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """A label table written by :func:`map_query` (indexed by cell id)."""
    return pd.read_csv(path, sep="\t", index_col="cell")
