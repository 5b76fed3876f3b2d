"""CVQVAE for notebook and CLI users: paired modalities (the same cells), reduced once (PCA for RNA and protein,
LSI for peaks; the reduced cells cached beside the data), streamed joined on cell id, cross-trained with a shared
EMA vector-quantisation codebook.

>>> model = CVQVAE({"rna": "rna.zarr", "atac": "atac.zarr"}, batch_key="batch")   # doctest: +SKIP
>>> model.fit(max_steps=5_000, run_dir="run")                                      # doctest: +SKIP
>>> paths = model.embed()   # run/embeddings/<modality>.zarr: obsm['X_cellweave'], obsm['cvqvae_code']  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import IterableDataset

from ..data import CellBatch, CellStream, PairedStream, Preprocess, ZarrStore
from ..reduce import Reduction, raw_features, reduced_store
from ..reduce.cache import cached_reduced_store
from ..train.distributed import on_rank_zero
from ..train.budget import AuthorsBudget
from .base import EMBED_BATCH, EMBEDDING_KEY, IntegrationModel
from .cvqvae_module import CVQVAEModule, CVQVAEWeights
from .config import config_from_dict
from .inputs import StoreLike, modality_kind
from .paired import (
    batch_categories,
    check_paired,
    fitted_reductions,
    lsi_settings,
    pca_settings,
    run_reductions,
    save_reductions,
)

if TYPE_CHECKING:
    from mudata import MuData

CODE_KEY = "cvqvae_code"
#: The stream transform of reduced cells: their values as cached.
AS_STORED = Preprocess(normalize=False, scale=False, max_value=None)
PEAK_KINDS = ("atac",)


@dataclass
class CVQVAEConfig:
    """CVQVAE settings; defaults follow the paper and the authors' code (see docs/methods/cvqvae.md).

    Attributes
    ----------
    n_components
        PCA / LSI components per modality (50; fewer when a modality has fewer features).
    n_top_genes
        Highly variable genes fed to the PCA of count modalities wider than this (2000; 0 keeps every gene).
    n_latent, hidden, norm
        Latent width (16), encoder hidden widths (1024, 512, 256; decoders reversed), hidden-layer normalisation.
    n_codes, decay, commitment, dead_code_threshold
        EMA codebook (2048 codes, decay 0.99, commitment 0.25; dead codes restart on encoder outputs).
    weights
        Loss weights: self reconstruction 1, cross reconstruction 1, latent MSE 10.
    lr, weight_decay
        Adam settings.
    batch_size
        Paired cells per step (1024, the authors').
    """

    n_components: int = 50
    n_top_genes: int = 2000
    n_latent: int = 16
    hidden: list[int] = field(default_factory=lambda: [1024, 512, 256])
    norm: str = "layer"
    n_codes: int = 2048
    decay: float = 0.99
    commitment: float = 0.25
    dead_code_threshold: float = 1e-3
    weights: CVQVAEWeights = field(default_factory=CVQVAEWeights)
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 1024

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> CVQVAEConfig:
        """Build from a (TOML) mapping; unknown keys are an error naming the key."""
        return config_from_dict(cls, values, source, CVQVAEWeights)


class CVQVAE(IntegrationModel):
    """Cross-trained VQ-VAE over paired modalities (two or more stores holding the same cells).

    Parameters
    ----------
    modalities
        Modality name -> data (AnnData, path, store, tiledbsoma object; see :class:`IntegrationModel`), or a
        MuData; the same cell ids in every modality.
    config
        :class:`CVQVAEConfig` or a mapping of its fields.
    batch_key
        Obs column of batches, fed one-hot to every encoder and decoder (the same categories in every store).
    kinds
        Modality kinds (``{"peaks_2": "atac"}``): ``atac`` modalities get LSI, the others PCA; default: by name,
        as documented in :mod:`cellweave.models.inputs`; another name without an entry is an error.
    seed
        The one seed.
    progress
        Show progress of the preprocessing passes (reductions fitted, reduced cells cached).
    reductions
        Input reductions by modality (objects or saved directories) instead of those kept beside the data.

    Raises
    ------
    InputError
        When the stores do not hold the same cells, or disagree on batches.
    """

    method = "cvqvae"
    authors_budget = AuthorsBudget(epochs=200)  # the paper's 200 epochs

    def __init__(self, modalities: Mapping[str, StoreLike] | MuData, config: CVQVAEConfig | Mapping[str, Any] | None = None,
                 batch_key: str | None = None, kinds: Mapping[str, str] | None = None, seed: int = 0,
                 progress: bool = False, reductions: Mapping[str, Reduction | str | os.PathLike] | None = None) -> None:
        super().__init__(modalities, seed)
        self.config = config if isinstance(config, CVQVAEConfig) else CVQVAEConfig.from_dict(config or {})
        self.kinds = {m: modality_kind(m, kinds) for m in self.stores}
        self.n_cells = check_paired(self.stores)
        self.progress = progress
        self.batch_key = batch_key
        self.batches = batch_categories(self.stores, batch_key)
        c = self.config
        specs = {m: ("lsi", lsi_settings(s, c.n_components, seed)) if self.kinds[m] in PEAK_KINDS else
                 ("pca", pca_settings(s, c.n_components, c.n_top_genes or None, seed)) for m, s in self.stores.items()}
        self.reductions = fitted_reductions(self.stores, specs, reductions, progress)

    # ---- IntegrationModel hooks ---------------------------------------------------------------------------
    def preprocess(self, modality: str) -> Preprocess:
        return raw_features(self.reductions[modality])

    def stream_options(self, modality: str) -> dict[str, Any]:
        return {"batch_key": self.batch_key}

    def input_features(self, modality: str) -> list[str]:
        return list(self.reductions[modality].features)

    def build_module(self) -> CVQVAEModule:
        c = self.config
        return CVQVAEModule({m: r.n_components for m, r in self.reductions.items()}, n_batches=len(self.batches),
                            n_latent=c.n_latent, hidden=tuple(c.hidden), norm=c.norm, n_codes=c.n_codes, decay=c.decay,
                            commitment=c.commitment, dead_code_threshold=c.dead_code_threshold, weights=c.weights,
                            lr=c.lr, weight_decay=c.weight_decay)

    def train_stream(self) -> IterableDataset:
        """Paired minibatches of the reduced cells, read from the caches beside the data (rank 0 writes them on
        first use: one pass over the raw cells, after which a step reads ``n_components`` values per cell)."""
        size = min(self.config.batch_size, self.n_cells)
        paths = on_rank_zero(lambda: {m: str(reduced_store(self.stores[m], r, self.progress).path)
                                      for m, r in self.reductions.items()})
        return PairedStream([ZarrStore(paths[m], modality=m) for m in self.stores], batch_size=size,
                            preprocess={m: AS_STORED for m in self.stores}, batch_key=self.batch_key, seed=self.seed,
                            drop_last=self.n_cells >= self.config.batch_size)

    def iter_batches(self, modality: str, batch_size: int = EMBED_BATCH, **options: Any) -> Iterator[CellBatch]:
        """Reduced cells of ``modality`` in store order, on the model's device: read from the cache beside the data
        when it is there and current, else read raw and reduced batch by batch (nothing is cached then: embedding
        reads each cell once either way)."""
        reduction = self.reductions[modality]
        cached = cached_reduced_store(self.stores[modality], reduction)
        if cached is None:
            for b in super().iter_batches(modality, batch_size, **options):
                yield reduction.reduce_batch(b)
            return
        stream = CellStream(cached, batch_size, shuffle=False, preprocess=AS_STORED, rank=0, world_size=1,
                            **(self.stream_options(modality) | options))
        for b in stream:
            yield b.to(self.device)

    def embed_batch(self, modality: str, batch: CellBatch) -> dict[str, torch.Tensor]:
        out = self._require_module().embed(modality, batch)
        return {EMBEDDING_KEY: out[EMBEDDING_KEY], CODE_KEY: out["codes"].unsqueeze(1).float()}

    def config_dict(self) -> dict[str, Any]:
        return {"method": self.method, "seed": self.seed, "inputs": dict(self.inputs), "kinds": self.kinds,
                "batch_key": self.batch_key, "model": asdict(self.config),
                "reductions": {m: {"method": r.method, "features": r.n_features, "components": r.n_components}
                               for m, r in self.reductions.items()}}

    def save_extras(self, directory: Path) -> None:
        """The input reductions (``reductions/<modality>``): a run or saved model is self-contained."""
        save_reductions(directory, self.reductions)

    @classmethod
    def run_settings(cls, cfg: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
        """The run's settings and the input reductions it saved."""
        return super().run_settings(cfg, run_dir) | {"reductions": run_reductions(run_dir, list(cfg["inputs"]))}
