"""scMRDR for notebook and CLI users: any number of unpaired modalities, laid out over one gene-level feature space
and streamed through one disentangled beta-VAE (shared ``z_u``, modality-specific ``z_s``) with adversarial and
isometric regularisation and the masked reconstruction loss.

>>> model = SCMRDR({"rna": "rna.zarr", "adt": "adt.zarr", "atac": "atac.zarr"}, genes_bed="genes.bed",
...                batch_key="batch")                                            # doctest: +SKIP
>>> model.fit(max_steps=20_000, run_dir="run")                                  # doctest: +SKIP
>>> paths = model.embed()  # run/embeddings/<m>.zarr: obsm X_cellweave (z_u), X_cellweave_specific (z_s)  # doctest: +SKIP
>>> model.transfer_labels("rna", "atac", "cell_type", method="ot")             # doctest: +SKIP

The union space (:mod:`cellweave.models.union_space`): RNA genes by name, proteins onto their coding genes, ATAC
peaks summed into gene activity; the columns are the RNA's highly variable genes plus every gene of the protein
panel (the paper's tri-modal setting). Each modality is reconstructed only on the columns it measures.
"""

from __future__ import annotations

import contextlib
import io
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset

from ..data import CellBatch, ModalityStore, Preprocess, UnpairedStream
from ..errors import InputError
from ..links import FeatureLinks
from ..train.budget import AUTO_MIN_STEPS, AuthorsBudget
from ..train.trainer import TrainResult
from .base import EMBED_BATCH, IntegrationModel, SavesLinkTable
from .config import config_from_dict
from .inputs import StoreLike, checked_stats, modality_kind
from .scmrdr_module import COUNT_LIKELIHOODS, LIKELIHOODS, SCMRDRModule
from .scmrdr_query import QueryBatches, fit_query_batches
from .union_space import (
    GENE_LEVEL_KINDS,
    ModalitiesInTurn,
    UnionReader,
    UnionSpace,
    UnionStream,
    build_union_space,
    resolve_union_links,
)

if TYPE_CHECKING:
    from mudata import MuData

TRANSFER_METHODS = ("knn", "ot")
#: The new batches' parameters of a query mapping, in its output directory.
QUERY_BATCHES = "query_batches.pt"
#: Consecutive cells held out together by :func:`validation_split`.
VAL_RUN = 16


@dataclass
class SCMRDRConfig:
    """scMRDR settings; defaults follow the paper and the authors' code (see docs/methods/scmrdr.md).

    Attributes
    ----------
    d_u, d_s
        Widths of the shared and the modality-specific latent (20, 20).
    hidden
        Hidden widths of the encoders and the discriminator, reversed in the decoder ((128, 128)).
    dropout
        Dropout after each hidden layer (0.2).
    beta, gamma, lam
        Weights of the KL, isometric and adversarial terms (2, 5, 5). The paper's ablations are ``beta = 1``,
        ``gamma = 0`` and ``lam = 0``.
    use_mask
        Masked reconstruction loss over the union space; ``False`` is the paper's "w/o masked loss" ablation
        (unmeasured columns count as observed zeros).
    lr, weight_decay
        Adam settings (1e-3, 0).
    cosine_steps
        Anneal the learning rate to 0 over this many steps (cosine); ``None``: constant.
    batch_size
        Cells per modality per step (128).
    count_likelihood, normalized_likelihood
        Likelihood of count modalities (``"zinb"`` or ``"nb"``, or ``"gaussian"``) and of normalised ones
        (``"gaussian"``).
    likelihoods
        Per-modality overrides, by modality name.
    n_top_features
        Highly variable genes kept per gene-level count modality wider than this (500, about what the authors'
        threshold-based selection keeps); every gene of a smaller panel (proteins) joins the union. Wider unions
        integrated worse against the authors' code and on real CITE-seq cells (bench/RESULTS.md).
    val_fraction
        Share of each modality's cells held out, chosen by the seed, for early stopping on the whole validation
        loss (0.1; 0: no validation).
    patience
        Validations without improvement before stopping and restoring the best weights (``None``: never stop).
    """

    d_u: int = 20
    d_s: int = 20
    hidden: tuple[int, ...] = (128, 128)
    dropout: float = 0.2
    beta: float = 2.0
    gamma: float = 5.0
    lam: float = 5.0
    use_mask: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0
    cosine_steps: int | None = None
    batch_size: int = 128
    count_likelihood: str = "zinb"
    normalized_likelihood: str = "gaussian"
    likelihoods: dict[str, str] = field(default_factory=dict)
    n_top_features: int = 500
    val_fraction: float = 0.1
    patience: int | None = 10

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.likelihoods = dict(self.likelihoods)
        for name, value in (("count_likelihood", self.count_likelihood), ("normalized_likelihood", self.normalized_likelihood),
                            *((f"likelihoods.{m}", v) for m, v in self.likelihoods.items())):
            if value not in LIKELIHOODS:
                raise InputError("config", f"[model] {name}", f"unknown likelihood {value!r}", f"use one of {LIKELIHOODS}")
        if self.normalized_likelihood != "gaussian":
            raise InputError("config", "[model] normalized_likelihood", f"{self.normalized_likelihood!r} needs counts",
                             "use 'gaussian' for normalised values")
        for name, least in (("batch_size", 1), ("n_top_features", 1), ("d_u", 1), ("d_s", 1)):
            if int(getattr(self, name)) < least:
                raise InputError("config", f"[model] {name}", f"must be >= {least}, got {getattr(self, name)!r}",
                                 f"set {name} to {least} or more")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError("config", "[model] val_fraction", f"must be in [0, 1), got {self.val_fraction!r}",
                             "e.g. 0.1 (the paper), or 0 for no validation")
        if self.patience is not None and int(self.patience) < 1:
            raise InputError("config", "[model] patience", f"must be >= 1, got {self.patience!r}",
                             "set patience to 1 or more, or leave it unset to never stop early")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> SCMRDRConfig:
        """Build from a (TOML) mapping; unknown keys are an error naming the key."""
        return config_from_dict(cls, values, source)


def global_batches(stores: Mapping[str, ModalityStore], batch_key: str | None) -> tuple[list[str], dict[str, np.ndarray | None]]:
    """Batch categories shared by all modalities (sorted union) and each modality's per-cell codes into them.

    Raises
    ------
    InputError
        Naming the store and the key when a modality lacks the batch column.
    """
    if batch_key is None:
        return [], {m: None for m in stores}
    values = {}
    for m, store in stores.items():
        if batch_key not in store.obs_keys:
            raise InputError(store.path, f"obs['{batch_key}']", f"modality {m!r} has no batch column {batch_key!r} "
                             f"(its columns: {', '.join(store.obs_keys) or 'none'})",
                             "give every modality the batch column (batches are coded across all modalities), "
                             "or leave batch_key unset")
        values[m] = store.obs_column(batch_key).astype(str).to_numpy()
    categories = pd.Index(sorted(set().union(*(np.unique(v) for v in values.values()))))
    return categories.tolist(), {m: categories.get_indexer(v).astype(np.int64) for m, v in values.items()}


def validation_split(n_cells: int, fraction: float, seed: int, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows of one modality (sorted), drawn by ``(seed, modality)``.

    The validation cells are ``round(fraction x runs)`` random runs of :data:`VAL_RUN` consecutive cells: single
    scattered cells would cut every training read into one row range per held-out cell, and a store reads each
    range separately.
    """
    runs = np.arange(n_cells) // VAL_RUN
    n_runs = int(runs[-1]) + 1
    picked = np.random.default_rng([seed, zlib.crc32(modality.encode())]).permutation(n_runs)[: int(round(fraction * n_runs))]
    val = np.isin(runs, picked)
    if val.all():
        val[-1] = False
    return np.flatnonzero(~val), np.flatnonzero(val)


class SCMRDR(SavesLinkTable, IntegrationModel):
    """scMRDR (disentangled multi-omics integration): unpaired modalities, streamed, over a union feature space.

    Parameters
    ----------
    modalities
        Modality name -> data (AnnData, path, store, tiledbsoma object; see :class:`IntegrationModel`), or a
        MuData; two or more omics.
    links
        ``"auto"`` (proteins -> coding genes by the antibody table, peaks -> genes via ``genes_bed``), a links TSV,
        or :class:`~cellweave.links.FeatureLinks`. Modalities whose features are genes need none.
    config
        :class:`SCMRDRConfig` or a mapping of its fields (ablations: ``beta=1``, ``lam=0``, ``gamma=0``,
        ``use_mask=False``).
    kinds
        Modality kinds (``{"prot": "adt"}``): gene-level kinds share the gene axis, the others are linked; default:
        by name, as documented in :mod:`cellweave.models.inputs`; another name without an entry is an error.
    genes_bed
        Gene coordinates for ATAC gene activity.
    batch_key
        Obs column of every modality with the cells' batches (a decoder covariate); ``None``: no batch covariate.
    label_key
        Default obs column of :meth:`transfer_labels`.
    seed
        The one seed (weights, stream order, validation split).
    progress
        Show progress of the preprocessing pass.

    Raises
    ------
    InputError
        For a modality that overlaps nothing in the union space, a batch key missing from a modality, a
        normalised modality given a count likelihood, or bad settings.
    """

    method = "scmrdr"
    authors_budget = AuthorsBudget(epochs=200)  # the paper's 200 epochs
    # bench/RESULTS.md: on a 10k-cell atlas 5,000 steps (71 passes) reach the quality of 10,000 while the loss
    # flattens by ~1,400; on 200 cells the authors' 200 epochs are 200 steps, 0.04-0.06 FOSCTTM short of 10,000
    least_epochs = 75
    least_steps = AUTO_MIN_STEPS
    grad_clip = 1.0  # the authors clip the gradient norm at 1

    def __init__(self, modalities: Mapping[str, StoreLike] | MuData, links: str | os.PathLike | Sequence[FeatureLinks] | None = "auto",
                 config: SCMRDRConfig | Mapping[str, Any] | None = None, kinds: Mapping[str, str] | None = None,
                 genes_bed: str | os.PathLike | None = None, batch_key: str | None = None, label_key: str | None = None,
                 seed: int = 0, progress: bool = False) -> None:
        super().__init__(modalities, seed)
        self.config = config if isinstance(config, SCMRDRConfig) else SCMRDRConfig.from_dict(config or {})
        self.kinds = {m: modality_kind(m, kinds) for m in self.stores}
        self.genes_bed = None if genes_bed is None else str(Path(genes_bed).resolve())
        self.batch_key, self.label_key = batch_key, label_key
        self.links_spec = links if isinstance(links, str | os.PathLike) or links is None else "given"
        self.likelihoods = self._likelihoods()
        self.batch_categories, codes = global_batches(self.stores, batch_key)
        self.stats = {m: checked_stats(s, self.config.n_top_features, progress) for m, s in self.stores.items()}
        self.links = resolve_union_links(self.stores, links, self.kinds, genes_bed)
        self.space: UnionSpace = build_union_space(self.stores, self.kinds, self.links, self._selected())
        self.readers = {m: UnionReader(s, self.space, codes[m], self.batch_categories) for m, s in self.stores.items()}
        self.splits = {m: validation_split(s.n_obs, self.config.val_fraction, seed, m) for m, s in self.stores.items()}
        self.query_batches: QueryBatches | None = None

    def _likelihoods(self) -> dict[str, str]:
        c = self.config
        unknown = sorted(set(c.likelihoods) - set(self.stores))
        if unknown:
            raise InputError("config", "[model] likelihoods", f"modalities {unknown} are not among {list(self.stores)}",
                             "give likelihoods only for the modalities being integrated")
        out = {}
        for m, store in self.stores.items():
            lik = c.likelihoods.get(m, c.count_likelihood if store.kind == "counts" else c.normalized_likelihood)
            if store.kind != "counts" and lik in COUNT_LIKELIHOODS:
                raise InputError(store.path, "X", f"modality {m!r} holds normalised values; the {lik} likelihood needs counts",
                                 f"use likelihoods = {{{m} = 'gaussian'}}")
            out[m] = lik
        return out

    def _selected(self) -> dict[str, list[str]]:
        """Features whose columns join the union: HVGs of wide gene-level count modalities, every feature of the
        other gene-level ones and of panels no wider than ``n_top_features``; none of wider non-gene modalities."""
        n_top = self.config.n_top_features
        out = {}
        for m, store in self.stores.items():
            stats = self.stats[m]
            gene_level = self.kinds[m] in GENE_LEVEL_KINDS
            if gene_level and store.kind == "counts" and store.n_vars > n_top and stats.hvg_rank is not None:
                out[m] = stats.hvg(n_top)
            elif gene_level or store.n_vars <= n_top:
                out[m] = list(map(str, store.var_names))
            else:
                out[m] = []
        return out

    # ---- IntegrationModel hooks ---------------------------------------------------------------------------
    def preprocess(self, modality: str) -> Preprocess:
        """Raw values: the module takes ``log1p`` itself and needs the counts for its likelihood."""
        return Preprocess(normalize=False, max_value=None)

    def input_features(self, modality: str) -> list[str]:
        """The store's features that reach a union column."""
        names = self.stores[modality].var_names
        return [str(f) for f in names[np.diff(self.space.maps[modality].indptr) > 0]]

    def build_module(self) -> SCMRDRModule:
        c = self.config
        return SCMRDRModule(self.space.n_features, list(self.stores), likelihoods=self.likelihoods,
                            n_batches=len(self.batch_categories), masks=self.space.masks, n_latent_shared=c.d_u,
                            n_latent_specific=c.d_s, hidden=c.hidden, dropout=c.dropout, beta=c.beta, lam=c.lam,
                            gamma=c.gamma, masked=c.use_mask, lr=c.lr, weight_decay=c.weight_decay,
                            cosine_steps=c.cosine_steps)

    def train_stream(self) -> IterableDataset:
        bs = self.config.batch_size
        streams = {}
        for m, reader in self.readers.items():
            rows = self.splits[m][0]
            streams[m] = UnionStream(reader, min(bs, len(rows)), seed=self.seed, rows=rows, drop_last=len(rows) >= bs)
        return UnpairedStream(streams)

    def val_stream(self) -> IterableDataset | None:
        streams = {m: UnionStream(reader, self.config.batch_size, shuffle=False, rows=self.splits[m][1])
                   for m, reader in self.readers.items() if len(self.splits[m][1])}
        return ModalitiesInTurn(streams) if streams else None

    def iter_batches(self, modality: str, batch_size: int = EMBED_BATCH, **options: Any) -> Iterator[CellBatch]:
        """Cells of ``modality`` in store order, laid out in the union space, on the model's device."""
        stream = UnionStream(self.readers[modality], batch_size, shuffle=False, rank=0, world_size=1, **options)
        for b in stream:
            yield b.to(self.device)

    def embed_batch(self, modality: str, batch: CellBatch) -> dict[str, torch.Tensor]:
        if self.query_batches is not None and batch.batch is not None:
            return self.query_batches.embed(self.module, modality, batch)
        return self.module.embed(modality, batch)

    # ---- query mapping --------------------------------------------------------------------------------------
    def _query_codes(self, store: ModalityStore, batch_key: str | None) -> tuple[np.ndarray | None, list[str]]:
        """Codes of the store's cells over the reference batches followed by the new ones (sorted)."""
        if batch_key is None or not self.batch_categories:
            return None, list(self.batch_categories)
        values = store.require_obs_key(batch_key).astype(str).to_numpy()
        new = [] if self.query_batches is None else self.query_batches.categories
        categories = pd.Index(list(self.batch_categories) + new)
        codes = categories.get_indexer(values)
        if (codes < 0).any():
            raise InputError(store.path, f"obs['{batch_key}']", f"batch {values[codes < 0][0]!r} is neither a reference "
                             "batch nor a fitted new one", "map the store with map_query(..., batch_key=...)")
        return codes.astype(np.int64), categories.tolist()

    @contextlib.contextmanager
    def serving(self, modality: str, store: ModalityStore, batch_key: str | None = None) -> Iterator[None]:
        codes, categories = self._query_codes(store, batch_key)
        old = self.readers[modality]
        self.readers[modality] = UnionReader(store, self.space, codes, categories)
        try:
            with super().serving(modality, store, batch_key):
                yield
        finally:
            self.readers[modality] = old

    def adapt_to_query(self, stores: Mapping[str, ModalityStore], batch_key: str | None, max_steps: int,
                       progress: bool) -> dict[str, Any]:
        """Batches of the query the model has not seen get new first-layer parameters in the encoders and the
        decoder, fitted for ``max_steps`` steps on the query cells with every trained weight frozen
        (:mod:`cellweave.models.scmrdr_query`). Without a batch covariate (or new batches): nothing to fit."""
        if batch_key is None or not self.batch_categories:
            return {}
        fitted = [] if self.query_batches is None else list(self.query_batches.categories)
        seen = set(self.batch_categories) | set(fitted)
        new = sorted({str(v) for s in stores.values() for v in s.require_obs_key(batch_key).astype(str)} - seen)
        if not new:
            return {"new_batches": [], "fitted_before": fitted}
        module = self._require_module()
        query = QueryBatches(module, fitted + new)
        if self.query_batches is not None:  # batches fitted by an earlier mapping keep their parameters as a start
            with torch.no_grad():
                for name, p in query.named_parameters():
                    p[: len(fitted)] = getattr(self.query_batches, name)
        self.query_batches = query
        streams = {}
        for m, store in stores.items():
            codes, categories = self._query_codes(store, batch_key)
            reader = UnionReader(store, self.space, codes, categories)
            streams[m] = UnionStream(reader, min(self.config.batch_size, store.n_obs), seed=self.seed, rank=0, world_size=1,
                                     drop_last=store.n_obs >= self.config.batch_size)
        torch.manual_seed(self.seed)
        losses = fit_query_batches(module, query, streams, max_steps, self.device, progress=progress)
        return {"new_batches": new, "steps": len(losses), "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None}

    def save_query_state(self, out_dir: str | os.PathLike) -> Path | None:
        """Write the new batches' parameters to ``out_dir/query_batches.pt`` (none fitted: nothing)."""
        if self.query_batches is None:
            return None
        from ..data.atomic import atomic_write_bytes

        buf = io.BytesIO()
        torch.save({"categories": list(self.query_batches.categories),
                    "state": {k: v.detach().cpu() for k, v in self.query_batches.state_dict().items()}}, buf)
        path = Path(out_dir) / QUERY_BATCHES
        atomic_write_bytes(path, buf.getvalue())
        return path

    def load_query_state(self, out_dir: str | os.PathLike) -> None:
        """Read back the new batches' parameters a mapping wrote (:meth:`save_query_state`), to embed more cells of
        those batches (``serving``/``map_query`` with the same ``batch_key``) without fitting them again."""
        payload = torch.load(Path(out_dir) / QUERY_BATCHES, map_location="cpu", weights_only=True)
        query = QueryBatches(self._require_module(), payload["categories"])
        query.load_state_dict(payload["state"])
        self.query_batches = query.to(self.device).eval()

    def config_dict(self) -> dict[str, Any]:
        return {"method": self.method, "seed": self.seed, "inputs": dict(self.inputs), "kinds": self.kinds,
                "links": str(self.links_spec) if self.links_spec is not None else "auto", "genes_bed": self.genes_bed,
                "batch_key": self.batch_key, "label_key": self.label_key, "model": asdict(self.config),
                "likelihoods": dict(self.likelihoods), "batches": list(self.batch_categories),
                "features": {"n_union": self.space.n_features, **self.space.summary()},
                "validation_cells": {m: int(len(val)) for m, (_, val) in self.splits.items()}}

    def fit(self, max_steps: int | str = "auto", run_dir: str | os.PathLike | None = None, **options: Any) -> TrainResult:
        """Train (see :meth:`IntegrationModel.fit`), stopping early on the validation split after
        ``config.patience`` validations without improvement unless ``early_stopping_patience`` is given."""
        if self.config.val_fraction > 0:
            options.setdefault("early_stopping_patience", self.config.patience)
        return super().fit(max_steps, run_dir, **options)

    # ---- downstream -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def impute(self, source: str, target: str, features: Sequence[str] | None = None, out: str | os.PathLike | None = None,
               overwrite: bool = True, target_batch: str | None = None, library_size: float = 1e4) -> Path:
        """Cross-modal imputation for every cell of ``source``: its ``z_u`` decoded with ``target``'s specific prior mean.

        Written, streamed, as ``X`` of an AnnData Zarr store (default ``RUN/imputed/<source>_to_<target>.zarr``) whose
        obs are the source cells and whose var are union features (genes: a protein is imputed in the column of
        its coding gene).

        Parameters
        ----------
        source, target
            Modality of the cells and modality imputed.
        features
            Union features to write (default: those ``target`` measures).
        out, overwrite
            Output store, and whether to replace it.
        target_batch
            Batch category to decode with (``None``: no batch covariate).
        library_size
            Library size of imputed counts (count likelihoods; Gaussian targets give their means).

        Returns
        -------
        Path
            The output store.
        """
        module = self._require_module().to(self.device).eval()
        source, target = self._modality(source), self._modality(target)
        names = pd.Index(self.space.features)
        allowed = self.space.masks[target] if self.config.use_mask else np.ones(len(names), dtype=bool)
        wanted = [] if features is None else list(features)
        pick = np.flatnonzero(self.space.masks[target]) if features is None else names.get_indexer(wanted)
        bad = [f for f, p in zip(wanted, pick) if p < 0 or not allowed[p]]
        if bad:
            raise InputError(f"imputation {source} -> {target}", "features", f"not among the union features {target} "
                             f"measures: {bad[:5]}", f"pick from model.space.measured({target!r})")
        code = None
        if target_batch is not None:
            if str(target_batch) not in self.batch_categories:
                raise InputError(f"imputation {source} -> {target}", "target_batch", f"unknown batch {target_batch!r}",
                                 f"use one of {self.batch_categories} (batches of batch_key={self.batch_key!r})")
            code = self.batch_categories.index(str(target_batch))
        cols = torch.as_tensor(pick, device=self.device)
        path = self.write_imputed(source, target, names[pick], out, overwrite, lambda b: module.impute(
            source, target, b, target_batch=code, library_size=library_size)[:, cols])
        module.train()
        return path

    def transfer_labels(self, reference: str, query: str, label_key: str | None = None, method: str = "knn",
                        embeddings: str | os.PathLike | None = None, k: int = 30, **ot_options: Any) -> pd.DataFrame:
        """Transfer ``obs[label_key]`` from ``reference`` cells to ``query`` cells on ``z_u`` (after :meth:`embed`).

        Parameters
        ----------
        reference, query
            Modalities: the one with labels and the one labelled.
        label_key
            Obs column of the reference (default: the model's ``label_key``).
        method
            ``"knn"``: majority of the ``k`` nearest reference cells (:func:`cellweave.downstream.transfer_labels`);
            ``"ot"``: label mass moved by minibatch optimal transport
            (:func:`cellweave.downstream.ot_transfer.ot_transfer_labels`), never an N x M coupling.
        embeddings
            Directory of the embedding stores (default ``RUN/embeddings``).
        k
            Neighbours of the kNN vote.
        **ot_options
            ``batch_size``, ``n_rounds``, ``reg``, ``seed`` of the OT transfer.

        Returns
        -------
        DataFrame
            Indexed by the query cell ids: ``predicted``, ``confidence``, and ``true`` when the query has the key.
        """
        from ..downstream import transfer_labels
        from ..downstream.ot_transfer import ot_transfer_labels

        label_key = label_key or self.label_key
        if label_key is None:
            raise InputError(type(self).__name__, "label_key", "no label column given",
                             "pass label_key=... (or SCMRDR(label_key=...))")
        if method not in TRANSFER_METHODS:
            raise InputError(type(self).__name__, "method", f"unknown transfer method {method!r}",
                             f"use one of {TRANSFER_METHODS}")
        if embeddings is None:
            if self.run_dir is None:
                raise InputError(type(self).__name__, "embeddings", "no embedding directory and no run directory",
                                 "pass embeddings=... (the out_dir given to .embed())")
            embeddings = self.run_dir / "embeddings"
        paths = {m: Path(embeddings) / f"{self._modality(m)}.zarr" for m in (reference, query)}
        for m, path in paths.items():
            if not path.exists():
                raise InputError(path, "embedding", f"no embedding of modality {m!r}", "run model.embed() first")
        if method == "knn":
            if ot_options:
                raise InputError(type(self).__name__, sorted(ot_options)[0], "an option of method='ot' only",
                                 "drop it, or use method='ot'")
            return transfer_labels(paths[reference], paths[query], label_key, k=k)
        return ot_transfer_labels(paths[reference], paths[query], label_key, **{"seed": self.seed, **ot_options})
