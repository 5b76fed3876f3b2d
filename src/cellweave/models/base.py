"""What every cellweave model shares: inputs, a run directory, the Trainer, and streamed per-cell outputs.

The user API is the same for every method, in the conventions of scvi-tools::

    model = SCMODAL({"rna": adata_rna, "adt": adata_adt})   # or SCMODAL(mdata), paths, stores, tiledbsoma objects
    model.fit(run_dir="run", device="cuda")                # steps fitted to the data, stops once converged
    z = model.get_latent_representation(modality="rna")     # numpy (n_cells, n_latent), in the cells' order
    model.get_latent_representation(modality="rna", key_added="X_cellweave")  # also adata.obsm['X_cellweave']
    paths = model.embed()                                   # out of core: RUN/embeddings/<modality>.zarr
    model.history                                           # the loss log as a pandas DataFrame
    model.save("model_dir")
    model = SCMODAL.load("model_dir")                       # or SCMODAL.load("run") for a fit's run directory

A model subclass says how to build its training module and its streams; this base checks the inputs
(:func:`~cellweave.data.check.check_inputs`), runs training through the one :class:`~cellweave.train.Trainer`,
writes ``RUN/config.toml`` and each modality's feature record (``RUN/features/``), and writes embeddings chunk by
chunk to ``RUN/embeddings/<modality>.zarr`` (and back into SOMA ``obsm`` under the run's own key for SOMA inputs).

A model rebuilt from a run (:meth:`IntegrationModel.from_run`) reads every store aligned by name to the features
the run recorded (:mod:`cellweave.data.align`); :meth:`IntegrationModel.map_query` embeds new cells the same way
(:mod:`cellweave.models.mapping`).

Under ``torch.distributed`` (``torchrun``) every rank trains on its shard of the cells, rank 0 alone writes the
run's files, and every rank embeds its own rows of each embedding store.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset

from ..data import CellBatch, CellStream, ModalityStore, Preprocess
from ..data.align import MIN_OVERLAP, FeatureRecord, align_store
from ..data.check import check_inputs, check_obs_keys, open_store
from ..data.memory import AnnDataStore, as_store
from ..data.embeddings import EmbeddingWriter, write_soma_obsm
from ..data.output import API_OPTIONS, output_guard
from ..data.spec import StoreSpec, input_record
from ..errors import InputError
from ..train import Trainer, TrainingModule
from ..train.budget import AuthorsBudget, resolve_budget
from ..train.checkpoint import load as load_checkpoint
from ..train.convergence import Convergence
from ..train.distributed import on_rank_zero, rank
from ..train.trainer import CHECKPOINT, CHECKPOINT_MINUTES, TrainResult
from .inputs import StoreLike, expand_inputs, open_inputs
from .run import (CONFIG, FEATURES, read_feature_records, read_run_config, run_guard, soma_obsm_key, write_config,
                  write_feature_records)

if TYPE_CHECKING:
    from mudata import MuData

EMBEDDING_KEY = "X_cellweave"
EMBED_BATCH = 4096
#: Weights file of a directory written by :meth:`IntegrationModel.save`.
MODEL_FILE = "model.pt"
#: Loss log of a saved model.
HISTORY_FILE = "history.csv"
#: Where :meth:`IntegrationModel.save` copies in-memory inputs (relative to the saved directory).
SAVED_DATA = "data"
#: The resolved feature links of a saved model or run (whatever form they were given in).
LINKS_FILE = "links.tsv"
#: What a run's config records for an in-memory input (no path to reopen).
IN_MEMORY = "<in memory>"


class IntegrationModel(ABC):
    """Base of the user-facing models (``SCMODAL``, ``SCMRDR`` ...).

    Parameters
    ----------
    modalities
        Modality name -> data, or a ``MuData`` (its modalities by name). Data is a path (``.zarr``, ``.h5ad``,
        ``FILE.h5mu::MODALITY``, ``SOMA_DIR::MEASUREMENT``), a :class:`~cellweave.data.StoreSpec` (a SOMA
        measurement with its layer, obs/var filters and feature key, recorded in the run's config), a store, an
        ``AnnData`` (in memory: streamed from its ``X`` without a copy; backed: from its file), or a tiledbsoma
        ``Experiment`` / ``Measurement`` / ``ExperimentAxisQuery`` (see :func:`~cellweave.data.memory.as_store`).
        Every store is checked first (one streamed pass, cached beside the data): a damaged chunk, NaN/Inf,
        negative or fractional counts, empty cells of a counts modality or duplicate ids are refused with an
        ``InputError``.
    seed
        One seed for everything (weights, stream order); the same seed gives the same embedding on CPU.
    """

    method: str = ""
    grad_clip: float | None = None
    #: The training length of the method's reference code: the ceiling of ``max_steps="auto"``.
    authors_budget: AuthorsBudget = AuthorsBudget(steps=10_000)
    #: Passes over the data that ``max_steps="auto"`` and the convergence stop give at least (0: no floor).
    least_epochs: int = 0
    #: Steps that ``max_steps="auto"`` (above the authors' budget if need be) and the convergence stop give at least.
    least_steps: int = 0

    def __init__(self, modalities: Mapping[str, StoreLike] | MuData, seed: int = 0) -> None:
        modalities = expand_inputs(modalities)
        self.stores: dict[str, ModalityStore] = open_inputs(modalities)
        check_inputs(self.stores).raise_first()
        self.inputs = {m: _input_record(p, self.stores[m]) for m, p in modalities.items()}
        self.seed = seed
        self.module: TrainingModule | None = None
        self.run_dir: Path | None = None
        self.result: TrainResult | None = None
        self.device = torch.device("cpu")
        self.soma_keys: dict[str, str] = {}
        self._history: list[dict[str, Any]] | None = None

    @classmethod
    def from_settings(cls, modalities: Mapping[str, StoreLike], settings: Mapping[str, Any]) -> IntegrationModel:
        """Build from the CLI's settings (links, config, kinds, genes_bed, batch_key, seed, progress ...).

        Settings the model's constructor does not take are dropped when unset and refused when set, so
        ``--batch-key`` on a model without batch covariates is an error rather than silently ignored.
        """
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "modalities"}
        unknown = sorted(k for k, v in settings.items() if k not in accepted and k != "progress" and v not in (None, "auto"))
        if unknown:
            raise InputError(f"cellweave fit --method {cls.method}", unknown[0], "not a setting of this method",
                             f"drop it; {cls.__name__} takes: {', '.join(sorted(accepted))}")
        return cls(modalities, **{k: v for k, v in settings.items() if k in accepted})

    @classmethod
    def run_settings(cls, cfg: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
        """Constructor settings of a run, from its ``config.toml`` (models with files in the run add theirs)."""
        accepted = set(inspect.signature(cls.__init__).parameters)
        values = {k: cfg.get(k) for k in ("links", "links_augment", "kinds", "genes_bed", "batch_key", "label_key")}
        values |= {"config": cfg.get("model"), "seed": int(cfg.get("seed", 0))}
        return {k: v for k, v in values.items() if k in accepted and v is not None}

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str = "cpu",
                 modalities: Mapping[str, StoreLike] | None = None, min_overlap: float = MIN_OVERLAP) -> IntegrationModel:
        """The trained model of a run directory, every store aligned by name to the features the run recorded.

        Parameters
        ----------
        run_dir
            A run written by :meth:`fit`.
        device
            Where the weights go.
        modalities
            Data to read instead of the run's inputs (same modality names; paths, stores, AnnData, tiledbsoma
            objects; their features are aligned to the run's by name: permuted features give the same values,
            missing ones are filled, see :func:`~cellweave.data.align.align_store`). Needed for the modalities the
            run was trained on in memory (:meth:`load` does the same for a directory written by :meth:`save`).
        min_overlap
            Least share of the model's features each store must have.
        """
        run_dir = Path(run_dir)
        cfg = read_run_config(run_dir, cls.method)
        inputs = dict(cfg["inputs"]) | dict(modalities or {})
        records = read_feature_records(run_dir, list(inputs))
        kinds = cfg.get("matrix_kinds", {})  # given with --kind when the run was fitted
        stores = {}
        for m, spec in inputs.items():
            if isinstance(spec, str) and spec == IN_MEMORY:
                raise InputError(run_dir / CONFIG, f"inputs.{m}", "the model was trained on an in-memory object",
                                 f"pass data={{{m!r}: ...}} (or save the model with .save(DIR), which keeps a copy)")
            if isinstance(spec, ModalityStore):
                store = spec
            elif isinstance(spec, str | os.PathLike | StoreSpec | Mapping):
                store = open_store(spec, m, kinds.get(m))
            else:  # an object a notebook holds (AnnData, tiledbsoma ...)
                store = as_store(spec, m)
            store.modality = m
            stores[m] = align_store(store, records[m], min_overlap)
        model = cls(stores, **cls.run_settings(cfg, run_dir))
        model.records = records
        model.load_weights(run_dir, device)
        return model

    # ---- what a model defines ----------------------------------------------------------------------------
    @abstractmethod
    def build_module(self) -> TrainingModule:
        """A fresh training module (weights initialised from the current torch seed)."""

    @abstractmethod
    def train_stream(self) -> IterableDataset:
        """The training stream."""

    def val_stream(self) -> IterableDataset | None:
        """The validation stream (``None``: no validation)."""
        return None

    @abstractmethod
    def preprocess(self, modality: str) -> Preprocess:
        """The transform of ``modality``'s cells at inference (as in training)."""

    @abstractmethod
    def embed_batch(self, modality: str, batch: CellBatch) -> dict[str, torch.Tensor]:
        """Per-cell outputs of one batch, by obsm key (``X_cellweave`` first)."""

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """The resolved settings (written to ``RUN/config.toml``)."""

    def stream_options(self, modality: str) -> dict[str, Any]:
        """Extra :class:`~cellweave.data.CellStream` arguments at inference (batch key, feature space ...)."""
        return {}

    def input_features(self, modality: str) -> list[str] | None:
        """The features of ``modality``'s store the model reads (``None``: all); recorded with the run, the
        minimum overlap of a store read again is counted on them."""
        return None

    def feature_records(self) -> dict[str, FeatureRecord]:
        """Each modality's feature record: the run's when the model was rebuilt from one, else its stores'."""
        recorded = getattr(self, "records", None)
        if recorded is not None:
            return dict(recorded)
        return {m: FeatureRecord.of(s, self.input_features(m)) for m, s in self.stores.items()}

    def obs_keys_used(self) -> list[str]:
        """Obs columns the model reads from every modality (its ``batch_key`` and ``label_key`` when set)."""
        return [k for k in (getattr(self, "batch_key", None), getattr(self, "label_key", None)) if k is not None]

    # ---- training -----------------------------------------------------------------------------------------
    def fit(self, max_steps: int | str = "auto", run_dir: str | os.PathLike | None = None, device: str = "auto",
            precision: str = "auto", resume: bool = False, num_workers: int = 0, checkpoint_every: int | None = None,
            progress: bool = True, early_stopping_patience: int | None = None, val_every: int | None = None,
            log_every: int = 10, max_epochs: int | None = None,
            checkpoint_minutes: float | None = CHECKPOINT_MINUTES,
            convergence: Convergence | str | None = "auto", overwrite: bool = False) -> TrainResult:
        """Train (one minibatch per modality per step) until the budget is spent or the loss has converged.

        Parameters
        ----------
        max_steps
            Training steps, or ``"auto"``: fitted to the data (see :mod:`cellweave.train.budget`), at most the
            authors' budget (:attr:`authors_budget`) and at least the method's :attr:`least_steps`.
        run_dir
            Where the checkpoint, config, loss log and outputs go (``None``: keep nothing on disk). As with
            ``cellweave fit --out``, an existing run is refused unless ``overwrite`` or ``resume``, and the run is
            locked while training: a second writer (another process or thread) is refused naming the holder's pid
            (see :func:`~cellweave.models.run.run_guard`).
        device, precision
            See :class:`~cellweave.train.Trainer`.
        resume
            Continue the run in ``run_dir`` exactly where it stopped. A run killed before its first checkpoint
            (``config.toml`` but no ``checkpoint.pt``) starts again from step 0.
        overwrite
            Replace an existing run in ``run_dir``: the old run is moved aside and removed when training ends; if
            training fails before the new run's first checkpoint, the old run is put back as it was.
        num_workers
            DataLoader workers reading the stores.
        checkpoint_every
            Steps between checkpoints (besides ``checkpoint_minutes``).
        progress
            Show a progress bar with the loss terms.
        early_stopping_patience, val_every
            Validation-based early stopping (for models with a validation split).
        log_every
            Steps per loss-log row.
        max_epochs
            Passes over the training data instead of a step count (with ``max_steps="auto"`` only).
        checkpoint_minutes
            Wall time between checkpoints (default 10 minutes; ``None``: by steps only). A checkpoint is always
            written at the end.
        convergence
            ``"auto"`` (default): stop once the smoothed training loss no longer improves
            (:meth:`Convergence.for_data <cellweave.train.convergence.Convergence.for_data>`: windows of one
            epoch, at least 100 steps); a :class:`~cellweave.train.convergence.Convergence` to tune it; ``None``:
            run the whole budget.

        Returns
        -------
        TrainResult
            With ``stop_reason`` (``max_steps``, ``converged`` or ``early_stopping``); the run's ``config.toml``
            records the settings (``[train]``), the resolved budget and stop rule (``[budget]``) and, once training
            ends, where and why it stopped (``[result]``).
        """
        self.run_dir = None if run_dir is None else Path(run_dir)
        problems = check_obs_keys(self.stores, self.obs_keys_used())
        if problems:
            raise problems[0]
        if convergence is not None and convergence != "auto" and not isinstance(convergence, Convergence):
            raise InputError(type(self).__name__, "convergence", f"must be 'auto', None or a Convergence, got {convergence!r}",
                             "pass convergence='auto', None, or cellweave.train.convergence.Convergence(...)")
        with self.hold_run(run_dir, overwrite, resume):
            if resume and self.run_dir is not None and not (self.run_dir / CHECKPOINT).exists() and (self.run_dir / CONFIG).exists():
                warnings.warn(f"{self.run_dir} has no checkpoint yet (the run stopped before its first one): training starts "
                              "from step 0", stacklevel=2)
                resume = False
            if resume and self.run_dir is not None and (self.run_dir / FEATURES).is_dir():
                self._check_recorded_features(read_feature_records(self.run_dir, list(self.stores)))
            train_data = self.train_stream()
            budget = resolve_budget(max_steps, max_epochs, len(train_data), self.authors_budget,
                                    where=f"{type(self).__name__}.fit", least_epochs=self.least_epochs,
                                    least_steps=self.least_steps)
            if convergence == "auto":
                convergence = Convergence.for_data(budget.steps_per_epoch, self.least_epochs, self.least_steps)
            torch.manual_seed(self.seed)
            self.module = self.build_module()
            train = {"max_steps": max_steps, "max_epochs": max_epochs, "device": str(device), "precision": precision,
                     "num_workers": num_workers, "checkpoint_every": checkpoint_every,
                     "checkpoint_minutes": "off" if checkpoint_minutes is None else checkpoint_minutes,
                     "convergence": "off" if convergence is None else "auto"}
            resolved = {"budget": budget.as_dict() | {"convergence": convergence.as_dict() if convergence is not None else "off",
                                                      "monitor": self.module.convergence_terms()}}
            if self.run_dir is not None and rank() == 0:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self.save_extras(self.run_dir)  # the run directory is then loadable: Model.load(run_dir)
                soma = any(_is_soma(_unaligned(s)) for s in self.stores.values())
                given = {m: s.kind for m, s in self.stores.items() if s.kind_given}  # --kind: kept for resume
                extra = ({"matrix_kinds": given} if given else {}) | {"soma_obsm_key": soma_obsm_key(self.run_dir) if soma else None}
                write_config(self.run_dir, self.config_dict() | extra | resolved | {"train": train})
                write_feature_records(self.run_dir, self.feature_records())
            trainer = Trainer(budget.max_steps, device=device, precision=precision, grad_clip=self.grad_clip, seed=self.seed,
                              num_workers=num_workers, checkpoint_every=checkpoint_every, run_dir=self.run_dir,
                              progress=progress, log_every=log_every, early_stopping_patience=early_stopping_patience,
                              val_every=val_every, checkpoint_minutes=checkpoint_minutes, convergence=convergence)
            self.device = trainer.device
            self.result = trainer.fit(self.module, train_data, self.val_stream(), resume=resume)
            self._history = list(self.result.history)
            if self.run_dir is not None and rank() == 0:
                write_config(self.run_dir, self.config_dict() | extra | resolved | {"train": train, "result": self.result.summary()})
            return self.result

    def hold_run(self, run_dir: str | os.PathLike | None, overwrite: bool = False,
                 resume: bool = False) -> contextlib.AbstractContextManager:
        """The run directory's output guard for the API (:func:`~cellweave.models.run.run_guard`; nothing without a
        run directory): entered by :meth:`fit`, and by a subclass that writes into the run before training."""
        if run_dir is None:
            return contextlib.nullcontext()
        return run_guard(run_dir, overwrite, resume, options=API_OPTIONS, where=f"{type(self).__name__}.fit")

    def _check_recorded_features(self, records: Mapping[str, FeatureRecord]) -> None:
        """Refuse stores whose features are not laid out as the run recorded them (weights would meet other genes)."""
        for m, record in records.items():
            store = self.stores[m]
            if [str(v) for v in store.var_names] != record.var_names:
                raise InputError(store.path, "var_names", f"the features of modality {m!r} differ from those the run "
                                 f"recorded ({store.n_vars} vs {len(record.var_names)}, or another order)",
                                 "rebuild the model with from_run(RUN, modalities=...) (it aligns them by name), or "
                                 "use `cellweave fit --resume`")

    def load_weights(self, run_dir: str | os.PathLike, device: str = "cpu") -> None:
        """Load trained weights into a freshly built module: ``model.pt`` of a directory written by :meth:`save`,
        else the checkpoint of a run directory (``checkpoint.pt``)."""
        self.run_dir = Path(run_dir)
        saved = self.run_dir / MODEL_FILE
        payload = torch.load(saved, map_location="cpu", weights_only=True) if saved.exists() else load_checkpoint(self.run_dir / CHECKPOINT)
        torch.manual_seed(self.seed)
        self.module = self.build_module()
        self.module.load_state_dict(payload["model"])
        self.device = torch.device(device)

    def _require_module(self) -> TrainingModule:
        if self.module is None:
            raise InputError(type(self).__name__, "module", "the model is not trained",
                             f"call .fit(...) first, or {type(self).__name__}.load(DIR)")
        return self.module

    # ---- the scvi-tools-style user API ----------------------------------------------------------------------
    @property
    def history(self) -> pd.DataFrame:
        """The loss log as a DataFrame, one row per logged step (``step``, ``epoch``, the loss terms, ``val_`` terms,
        learning rates), as in ``RUN/losses.csv``; empty before training."""
        if self._history is None and self.run_dir is not None:
            for name in (HISTORY_FILE, "losses.csv"):
                if (self.run_dir / name).exists():
                    self._history = pd.read_csv(self.run_dir / name).to_dict("records")
                    break
        return pd.DataFrame(self._history or [])

    def _modality(self, name: str | None) -> str:
        """``name`` checked against the model's modalities (``None``: the only one)."""
        if name is None:
            if len(self.stores) == 1:
                return next(iter(self.stores))
            raise InputError(type(self).__name__, "modality", f"the model has {len(self.stores)} modalities",
                             f"pass modality= one of {list(self.stores)}")
        if name not in self.stores:
            raise InputError(type(self).__name__, "modality", f"unknown modality {name!r}", f"use one of {list(self.stores)}")
        return name

    @torch.no_grad()
    def get_latent_representation(self, data: StoreLike | None = None, modality: str | None = None,
                                  batch_size: int = EMBED_BATCH, key_added: str | None = None,
                                  min_overlap: float = MIN_OVERLAP) -> np.ndarray:
        """The latent representation of every cell of one modality, in memory.

        Parameters
        ----------
        data
            The cells: ``None`` for the modality's training input, or new cells of the same modality (an AnnData,
            a path, a store, a tiledbsoma object). Their features are aligned by name to the model's
            (:func:`~cellweave.data.align.align_store`: another order is fine, missing features are filled as
            unmeasured with a warning); they need the obs columns the model uses (``batch_key``, with batches seen
            in training). They are transformed as in training.
        modality
            Which modality (may be omitted for a one-modality model).
        batch_size
            Cells per forward pass.
        key_added
            Also store the array in ``obsm[key_added]`` of the AnnData the cells came from (an in-memory one;
            e.g. ``"X_cellweave"``, the key :meth:`embed` writes). For data on disk use :meth:`embed`.
        min_overlap
            Least share of the model's features new cells must have.

        Returns
        -------
        numpy.ndarray
            ``(n_cells, n_latent)`` float32, rows in the cells' order.
        """
        m = self._modality(modality)
        module = self._require_module()
        store = self.stores[m] if data is None else self._query_store(m, data, min_overlap)
        serving = contextlib.nullcontext() if data is None else self.serving(m, store, getattr(self, "batch_key", None))
        out: np.ndarray | None = None
        module.to(self.device).eval()
        try:
            with serving:
                for b in self.iter_batches(m, batch_size):
                    z = self.embed_batch(m, b)[EMBEDDING_KEY].float().cpu().numpy()
                    if out is None:
                        out = np.zeros((store.n_obs, z.shape[1]), dtype=np.float32)
                    out[b.rows.cpu().numpy()] = z
        finally:
            module.train()
        assert out is not None  # a store holds at least one cell (checked when opened)
        if key_added is not None:
            source = _unaligned(store)
            if not isinstance(source, AnnDataStore):
                raise InputError(source.path, f"obsm['{key_added}']", "not an in-memory AnnData",
                                 "use .embed() to write embeddings of data on disk, or drop key_added")
            source.adata.obsm[key_added] = out
        return out

    def _query_store(self, modality: str, data: StoreLike, min_overlap: float) -> ModalityStore:
        """New cells of ``modality``: opened, checked, and aligned by name to the model's features."""
        store = open_inputs({modality: data})[modality]
        check_inputs({modality: store}).raise_first()
        problems = check_obs_keys({modality: store}, self.obs_keys_used())
        if problems:
            raise problems[0]
        return align_store(store, self.feature_records()[modality], min_overlap)

    def save_extras(self, directory: Path) -> None:
        """Hook: write what :meth:`load` / :meth:`from_run` need beyond the config, weights and feature records
        (reductions, link tables ...); called for every run directory and by :meth:`save`."""

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Save the trained model so that :meth:`load` rebuilds it: config, weights, loss log, feature records,
        what the method needs (reductions, link tables), and a Zarr copy of every in-memory input
        (``data/<modality>.zarr``; inputs on disk are referenced by path, not copied). Written under a temporary
        name and renamed, under the same output guard as :meth:`fit`: an existing ``directory`` (an empty one
        excepted) is refused unless ``overwrite``, and a directory another process is writing (a running fit, a
        save) is refused naming that process's pid.

        Parameters
        ----------
        directory
            Where to save (created).
        overwrite
            Replace an existing ``directory`` (also a run directory: the saved model then replaces the run); the old
            content stays whole until the new one is complete.

        Returns
        -------
        Path
            ``directory``.
        """
        from ..data.atomic import atomic_output
        from ..data.store import StoreSource
        from ..data.write_zarr import write_zarr

        module = self._require_module()
        with output_guard(directory, overwrite, options=API_OPTIONS), atomic_output(directory, overwrite) as tmp:
            tmp.mkdir(parents=True)
            inputs = dict(self.inputs)
            for m, store in self.stores.items():
                if isinstance(_unaligned(store), AnnDataStore):
                    write_zarr(StoreSource(_unaligned(store)), tmp / SAVED_DATA / f"{m}.zarr")
                    inputs[m] = f"{SAVED_DATA}/{m}.zarr"
            self.save_extras(tmp)
            write_config(tmp, self.config_dict() | {"inputs": inputs})
            write_feature_records(tmp, self.feature_records())
            torch.save({"model": {k: v.detach().cpu() for k, v in module.state_dict().items()}}, tmp / MODEL_FILE)
            pd.DataFrame(self._history or []).to_csv(tmp / HISTORY_FILE, index=False)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, data: Mapping[str, StoreLike] | MuData | None = None,
             device: str = "cpu", min_overlap: float = MIN_OVERLAP) -> Any:
        """A trained model from a directory written by :meth:`save`, or from the run directory of :meth:`fit`.

        Parameters
        ----------
        directory
            The saved model or run directory.
        data
            Inputs to use instead of the recorded ones (a mapping by modality name, or a MuData), aligned by name
            to the recorded features: needed for the in-memory inputs of a run directory (:meth:`save` keeps a
            copy of them; a run does not).
        device
            Where the weights go.
        min_overlap
            Least share of the model's features each input must have.

        Raises
        ------
        InputError
            When the directory was written by another method, or an in-memory input is neither saved nor given.
        """
        directory = Path(directory)
        cfg = read_run_config(directory, cls.method)
        given = expand_inputs(data) if data is not None else {}
        unknown = sorted(set(given) - set(cfg["inputs"]))
        if unknown:
            raise InputError(directory, "inputs", f"modalities {unknown} are not the model's", f"use {list(cfg['inputs'])}")
        inputs: dict[str, Any] = {}
        for m, recorded in cfg["inputs"].items():
            if m in given:
                inputs[m] = given[m]
            elif isinstance(recorded, str) and recorded != IN_MEMORY and not Path(recorded.split("::", 1)[0]).is_absolute():
                inputs[m] = str(directory / recorded)
        return cls.from_run(directory, device, modalities=inputs, min_overlap=min_overlap)

    # ---- inference ------------------------------------------------------------------------------------------
    def iter_batches(self, modality: str, batch_size: int = EMBED_BATCH, preprocess: Preprocess | None = None,
                     **options: Any) -> Iterator[CellBatch]:
        """Cells of ``modality`` in store order, transformed as in training, on the model's device."""
        store = self.stores[modality]
        stream = CellStream(store, batch_size, shuffle=False, preprocess=preprocess or self.preprocess(modality),
                            rank=0, world_size=1, **(self.stream_options(modality) | options))
        for b in stream:
            yield b.to(self.device)

    @torch.no_grad()
    def write_imputed(self, source: str, target: str, var_names: Any, out: str | os.PathLike | None, overwrite: bool,
                      predict: Any) -> Path:
        """Stream ``predict(batch)`` for every cell of ``source`` into ``X`` of an AnnData Zarr store (default
        ``RUN/imputed/<source>_to_<target>.zarr``) whose obs are the source cells and var ``var_names``.
        """
        if out is None:
            if self.run_dir is None:
                raise InputError(type(self).__name__, "out", "no output path and no run directory", "pass out=...")
            out = self.run_dir / "imputed" / f"{source}_to_{target}.zarr"
        with EmbeddingWriter(out, self.stores[source], {}, var_names=var_names, overwrite=overwrite) as writer:
            for b in self.iter_batches(source):
                writer.write(b.rows.cpu().numpy(), {"X": predict(b).float().cpu().numpy()})
        return Path(out)

    @torch.no_grad()
    def embed(self, out_dir: str | os.PathLike | None = None, modalities: Sequence[str] | None = None,
              overwrite: bool = True, write_soma: bool = True, progress: bool = True) -> dict[str, Path]:
        """Embed every cell, streamed, into ``out_dir/<modality>.zarr`` (default ``RUN/embeddings``).

        Each store is an AnnData Zarr store whose obs_names are the input cell ids and whose
        ``obsm['X_cellweave']`` holds the latent (plus any model-specific keys). For a SOMA input the latent is
        also written into the measurement's ``obsm`` under the run's own key (``X_cellweave_<run name>``, see
        :func:`~cellweave.models.run.soma_obsm_key`; ``X_cellweave`` without a run directory), kept in
        :attr:`soma_keys`. A store appears complete or not at all: it is written under a temporary name and
        renamed at the end.

        Under ``torch.distributed`` every rank embeds its own rows (whole chunks) of each store and rank 0
        renames it once all ranks are done (see :class:`~cellweave.data.embeddings.EmbeddingWriter`); call it
        on every rank.

        Returns
        -------
        dict
            Modality -> path of its embedding store.
        """
        from tqdm.auto import tqdm

        module = self._require_module()
        module.to(self.device).eval()
        if out_dir is None:
            if self.run_dir is None:
                raise InputError(type(self).__name__, "out_dir", "no output directory and no run directory",
                                 "pass out_dir=... (or fit with run_dir=...)")
            out_dir = self.run_dir / "embeddings"
        out_dir = Path(out_dir)
        paths = {}
        for m in modalities or list(self.stores):
            store = self.stores[m]
            probe = next(self.iter_batches(m, batch_size=1, rows=np.arange(1)))
            widths = {k: v.shape[1] for k, v in self.embed_batch(m, probe).items()}
            path = out_dir / f"{m}.zarr"
            with EmbeddingWriter(path, store, widths, overwrite=overwrite) as writer:
                a, b = writer.row_range
                with tqdm(total=b - a, desc=f"embed {m}", unit="cells", disable=not progress or rank() != 0) as bar:
                    for batch in self.iter_batches(m, rows=np.arange(a, b)) if b > a else ():
                        out = {k: v.float().cpu().numpy() for k, v in self.embed_batch(m, batch).items()}
                        writer.write(batch.rows.cpu().numpy(), out)
                        bar.update(len(batch))
            soma = _unaligned(store)
            if write_soma and _is_soma(soma):
                key = EMBEDDING_KEY if self.run_dir is None else soma_obsm_key(self.run_dir)
                on_rank_zero(lambda soma=soma, path=path, key=key: write_soma_obsm(soma, key, _obsm_array(path)))
                self.soma_keys[m] = key
            paths[m] = path
        module.train()
        return paths


    # ---- query mapping --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def serving(self, modality: str, store: ModalityStore, batch_key: str | None = None) -> Iterator[None]:
        """Read ``store`` (aligned to the model's features) as ``modality`` inside the block; the model's own store
        is back afterwards. ``batch_key``: the store's batch column (models with batch covariates)."""
        old = self.stores[modality]
        self.stores[modality] = store
        try:
            yield
        finally:
            self.stores[modality] = old

    def adapt_to_query(self, stores: Mapping[str, ModalityStore], batch_key: str | None, max_steps: int,
                       progress: bool) -> dict[str, Any]:
        """Fit what the query needs besides the trained weights (models with batch covariates: parameters of new
        batches, everything else frozen); returns a summary. Without batch covariates: nothing."""
        return {}

    def save_query_state(self, out_dir: str | os.PathLike) -> Path | None:
        """Write what :meth:`adapt_to_query` fitted into a mapping's output directory (nothing here)."""
        return None

    def map_query(self, queries: Mapping[str, StoreLike], out_dir: str | os.PathLike, batch_key: str | None = None,
                  label_key: str | None = None, min_overlap: float = MIN_OVERLAP, max_steps: int = 500, k: int = 30,
                  overwrite: bool = True, progress: bool = True) -> dict[str, Path]:
        """Embed new cells into the trained latent space without changing the model (see
        :func:`cellweave.models.mapping.map_query`)."""
        from .mapping import map_query

        return map_query(self, queries, out_dir, batch_key=batch_key, label_key=label_key, min_overlap=min_overlap,
                         max_steps=max_steps, k=k, overwrite=overwrite, progress=progress)


class SavesLinkTable:
    """Mixin of the models whose ``links`` (modality pair -> :class:`~cellweave.links.FeatureLinks`) come from a
    feature table: a run or saved model keeps the resolved table (``links.tsv``) and is rebuilt from it."""

    links: dict

    def save_extras(self, directory: Path) -> None:
        """The resolved links table (``links.tsv``)."""
        from ..links import write_links

        super().save_extras(directory)  # type: ignore[misc]
        if self.links:
            write_links(directory / LINKS_FILE, list(self.links.values()))

    @classmethod
    def run_settings(cls, cfg: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
        """The run's settings, its links read back from the table it saved."""
        out = super().run_settings(cfg, run_dir)  # type: ignore[misc]
        if (run_dir / LINKS_FILE).exists():
            out["links"] = run_dir / LINKS_FILE
        return out


def _unaligned(store: ModalityStore) -> ModalityStore:
    """The store under an alignment view (the store itself otherwise)."""
    return getattr(store, "base", store)


def _input_record(given: Any, store: ModalityStore) -> str | dict[str, str]:
    """What a run's config records for an input: its path or spec (:func:`~cellweave.data.spec.input_record`;
    for an object read from a file, the store's), or :data:`IN_MEMORY`."""
    if isinstance(_unaligned(store), AnnDataStore):
        return IN_MEMORY
    return input_record(given if isinstance(given, str | os.PathLike | StoreSpec | Mapping) else store)


def _is_soma(store: ModalityStore) -> bool:
    """Whether ``store`` is a SOMA measurement (without importing tiledbsoma when no SOMA store was opened)."""
    module = sys.modules.get("cellweave.data.soma_store")
    return module is not None and isinstance(store, module.SomaStore)


def _obsm_array(path: Path, key: str = EMBEDDING_KEY):
    """``obsm[key]`` of an embedding store as a lazy Zarr array (read block by block)."""
    import zarr

    return zarr.open_group(str(path), mode="r")["obsm"][key]


def read_embedding(path: str | os.PathLike, key: str = EMBEDDING_KEY, rows: np.ndarray | None = None) -> np.ndarray:
    """``obsm[key]`` of an embedding store written by :meth:`IntegrationModel.embed` (all rows or ``rows``)."""
    import zarr

    try:
        arr = zarr.open_group(str(path), mode="r")["obsm"][key]
    except (FileNotFoundError, KeyError) as exc:
        raise InputError(path, f"obsm['{key}']", "no such embedding", "run .embed() first or pass the right key") from exc
    return np.asarray(arr[:] if rows is None else arr.get_orthogonal_selection((rows, slice(None))))
