"""FactVAE for notebook and CLI users: paired RNA and ATAC counts of the same cells, factorised ZINB decoders,
a gene-peak prior, the teacher-student step on the ATAC encoder; then gene-peak link scores and augmented ATAC.

>>> model = FactVAE({"rna": "rna.zarr", "atac": "atac.zarr"}, genes_bed="genes.bed")    # doctest: +SKIP
>>> model.fit(max_steps=5_000, run_dir="run")                                           # doctest: +SKIP
>>> links = model.link_scores()          # gene, peak, score, pvalue, qvalue, prior      # doctest: +SKIP
>>> model.denoise_atac()                 # run/denoised/atac.zarr, chunk by chunk         # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset

from ..data import CellBatch, PairedStream, Preprocess, write_zarr
from ..data.atomic import atomic_write_bytes
from ..data.embeddings import EmbeddingWriter
from ..errors import InputError
from ..reduce import ReducedPairedStream, Reduction
from ..train.budget import AuthorsBudget
from .base import EMBED_BATCH, EMBEDDING_KEY, IntegrationModel
from .factvae_links import LatentMoments, latent_map, link_scores
from .factvae_module import FactVAEModule, FactVAEWeights
from .factvae_pairs import index_pairs, read_pair_table, window_pairs
from .config import config_from_dict
from .inputs import StoreLike, checked_stats, modality_kind
from .paired import check_paired, fitted_reductions, lsi_settings, pca_settings, run_reductions, save_reductions

if TYPE_CHECKING:
    from mudata import MuData

PAIRS = "gene_peak_pairs.tsv"
JOINT = "joint.zarr"
DENOISED = "denoised"
#: values per chunk of the augmented ATAC (bounds its memory whatever the number of peaks)
DENOISE_CHUNK_VALUES = 1 << 24
LATENT_MAP_CELLS = 50_000  # paired cells behind the RNA -> ATAC latent map of the link scores
ENCODER_INPUTS = ("counts", "reduced")


@dataclass
class FactVAEConfig:
    """FactVAE settings; network and loss defaults follow the authors' code (see docs/methods/factvae.md).

    Attributes
    ----------
    n_latent, rna_hidden, atac_hidden, dropout
        Latent width (50), encoder hidden widths (RNA 512, 256; ATAC 256) and dropout (0.2).
    weights
        Loss weights: NLL RNA 0.1, NLL ATAC 0.002, KL 0.001, prior 1, similarity structure 1.
    lr, ssa_lr
        Adam learning rates of the VAE phase (1e-3) and of the ATAC encoder's teacher-student phase (5e-4).
    batch_size
        Paired cells per step.
    n_top_genes
        Highly variable genes modelled (2000; 0 models every gene).
    n_top_peaks
        Most often accessible peaks modelled (0: every peak).
    encoder_input
        What the encoders read: ``"counts"`` (``log1p`` of normalised counts) or ``"reduced"`` (PCA of the RNA,
        LSI of the peaks, applied in the stream, as the authors feed).
    n_components
        PCA / LSI components with ``encoder_input="reduced"``.
    upstream, link_distance
        Prior pairs from a genes BED: the peak overlaps the gene body or ``upstream`` bp before the TSS (2 kb).
        Candidate pairs: the peak lies within ``link_distance`` bp of the TSS (150 kb).
    n_background
        Shuffled pairs in the background of the link p-values.
    """

    n_latent: int = 50
    rna_hidden: list[int] = field(default_factory=lambda: [512, 256])
    atac_hidden: list[int] = field(default_factory=lambda: [256])
    dropout: float = 0.2
    weights: FactVAEWeights = field(default_factory=FactVAEWeights)
    lr: float = 1e-3
    ssa_lr: float = 5e-4
    batch_size: int = 256
    n_top_genes: int = 2000
    n_top_peaks: int = 0
    encoder_input: str = "counts"
    n_components: int = 50
    upstream: int = 2000
    link_distance: int = 150_000
    n_background: int = 100_000

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> FactVAEConfig:
        """Build from a (TOML) mapping; unknown keys are an error naming the key."""
        config = config_from_dict(cls, values, source, FactVAEWeights)
        if config.encoder_input not in ENCODER_INPUTS:
            raise InputError(source, "[model] encoder_input", f"unknown value {config.encoder_input!r}",
                             f"use one of {', '.join(ENCODER_INPUTS)}")
        return config


class FactVAE(IntegrationModel):
    """FactVAE over one RNA and one ATAC store holding the same cells.

    Parameters
    ----------
    modalities
        Two modalities, an RNA one and an ATAC one, with the same cell ids: data as for :class:`IntegrationModel`
        (AnnData, paths, stores, tiledbsoma objects), or a MuData.
    links
        The gene-peak pairs: a TSV path or DataFrame with columns ``gene, peak[, prior]`` (rows are the candidates
        scored by :meth:`link_scores`; ``prior`` marks the known pairs, all rows when absent unless ``genes_bed``
        gives the windows), or ``"auto"`` / ``None``: windows over ``genes_bed``.
    config
        :class:`FactVAEConfig` or a mapping of its fields.
    kinds
        Modality kinds (``{"gex_lib1": "rna", "peaks_lib1": "atac"}``); default: by name, as documented in
        :mod:`cellweave.models.inputs`; another name without an entry is an error.
    genes_bed
        Gene coordinates (BED6) for the window rule.
    seed
        The one seed.
    progress
        Show progress of the preprocessing passes.
    reductions
        With ``encoder_input="reduced"``: input reductions by modality (objects or saved directories) instead of
        those kept beside the data.

    Raises
    ------
    InputError
        Cells that differ between the stores, not exactly one RNA and one ATAC modality, no gene-peak pair source,
        or no prior pair among the modelled features.
    """

    method = "factvae"
    authors_budget = AuthorsBudget(epochs=200)  # the paper gives none: as the other VAE methods

    def __init__(self, modalities: Mapping[str, StoreLike] | MuData, links: str | os.PathLike | pd.DataFrame | None = "auto",
                 config: FactVAEConfig | Mapping[str, Any] | None = None, kinds: Mapping[str, str] | None = None,
                 genes_bed: str | os.PathLike | None = None, seed: int = 0, progress: bool = False,
                 reductions: Mapping[str, Reduction | str | os.PathLike] | None = None) -> None:
        super().__init__(modalities, seed)
        self.config = config if isinstance(config, FactVAEConfig) else FactVAEConfig.from_dict(config or {})
        self.kinds = {m: modality_kind(m, kinds) for m in self.stores}
        self.rna, self.atac = _roles(self.kinds)
        self.stores = {self.rna: self.stores[self.rna], self.atac: self.stores[self.atac]}  # RNA anchors the join
        self.n_cells = check_paired(self.stores)
        self.genes_bed = None if genes_bed is None else str(Path(genes_bed).resolve())
        self.links_spec = str(links) if isinstance(links, str | os.PathLike) else "auto" if links is None else "given"
        self.features = self._select_features(progress)
        self.pairs, self.prior_index = self._pairs(links)
        c = self.config
        self.reductions: dict[str, Reduction] = {}
        if c.encoder_input == "reduced":
            rna_store, atac_store = self.stores[self.rna], self.stores[self.atac]
            specs = {self.rna: ("pca", pca_settings(rna_store, c.n_components, None, seed, self.features[self.rna])),
                     self.atac: ("lsi", lsi_settings(atac_store, c.n_components, seed, self.features[self.atac]))}
            self.reductions = fitted_reductions(self.stores, specs, reductions, progress)

    # ---- setup --------------------------------------------------------------------------------------------
    def _select_features(self, progress: bool) -> dict[str, list[str]]:
        """Highly variable genes (``n_top_genes``) and the most often accessible peaks (``n_top_peaks``)."""
        c = self.config
        rna, atac = self.stores[self.rna], self.stores[self.atac]
        for m, s in ((self.rna, rna), (self.atac, atac)):
            if s.kind != "counts":
                raise InputError(s.path, "X", f"FactVAE models counts; the {m!r} store is normalized",
                                 "pass the raw count stores")
        genes = list(map(str, rna.var_names))
        if c.n_top_genes and rna.n_vars > c.n_top_genes:
            genes = checked_stats(rna, c.n_top_genes, progress).hvg(c.n_top_genes)
        peaks = list(map(str, atac.var_names))
        if c.n_top_peaks and atac.n_vars > c.n_top_peaks:
            detected = checked_stats(atac, None, progress).n_expressed
            keep = np.sort(np.argsort(-detected, kind="stable")[: c.n_top_peaks])
            peaks = [peaks[i] for i in keep]
        return {self.rna: genes, self.atac: peaks}

    def _pairs(self, links: str | os.PathLike | pd.DataFrame | None) -> tuple[pd.DataFrame, np.ndarray]:
        """Candidate pairs among the modelled features (``gene, peak, prior``) and the prior pairs' indices."""
        genes, peaks = self.features[self.rna], self.features[self.atac]
        if links is None or (isinstance(links, str) and links == "auto"):
            if self.genes_bed is None:
                raise InputError("FactVAE", "links", "no gene-peak pairs: neither a table nor a genes BED",
                                 "pass links=<TSV with gene, peak[, prior]> or genes_bed=<BED6 of the genes>")
            table = window_pairs(genes, peaks, self.genes_bed, self.config.upstream, self.config.link_distance)
        else:
            table = read_pair_table(links)
            if "prior" not in table.columns:
                table["prior"] = self._window_prior(table) if self.genes_bed is not None else True
        where = str(links) if isinstance(links, str | os.PathLike) else "gene-peak pairs"
        kept, idx = index_pairs(table[["gene", "peak", "prior"]], genes, peaks)
        prior = idx[kept["prior"].to_numpy(dtype=bool)]
        if len(prior) == 0:
            raise InputError(where, "prior", f"no prior gene-peak pair among the {len(genes)} modelled genes and "
                             f"{len(peaks)} peaks ({len(table)} pairs given)",
                             "check that gene and peak names match the stores, or model more genes (n_top_genes=0)")
        return kept, prior

    def _window_prior(self, table: pd.DataFrame) -> np.ndarray:
        windows = window_pairs(self.features[self.rna], self.features[self.atac], self.genes_bed, self.config.upstream, 0)
        known = set(zip(windows.loc[windows["prior"], "gene"], windows.loc[windows["prior"], "peak"]))
        return np.array([(g, p) in known for g, p in zip(table["gene"], table["peak"])], dtype=bool)

    # ---- IntegrationModel hooks ---------------------------------------------------------------------------
    def preprocess(self, modality: str) -> Preprocess:
        return Preprocess(normalize=False, features=self.features[modality], scale=False, max_value=None)

    def input_features(self, modality: str) -> list[str]:
        return list(self.features[modality])

    def _encoder_key(self, modality: str) -> str:
        return f"{modality}_{self.reductions[modality].method}"

    def build_module(self) -> FactVAEModule:
        c = self.config
        inputs = {m: (self._encoder_key(m), r.n_components) for m, r in self.reductions.items()}
        return FactVAEModule(len(self.features[self.rna]), len(self.features[self.atac]), self.prior_index, rna=self.rna,
                             atac=self.atac, n_latent=c.n_latent, rna_hidden=tuple(c.rna_hidden),
                             atac_hidden=tuple(c.atac_hidden), dropout=c.dropout, encoder_inputs=inputs or None,
                             weights=c.weights, lr=c.lr, ssa_lr=c.ssa_lr)

    def _paired_stream(self, batch_size: int, shuffle: bool, drop_last: bool, **kwargs: Any) -> PairedStream:
        stores = list(self.stores.values())
        options = {"shuffle": shuffle, "seed": self.seed, "drop_last": drop_last} | kwargs
        if not self.reductions:
            return PairedStream(stores, batch_size, preprocess={m: self.preprocess(m) for m in self.stores}, **options)
        return ReducedPairedStream(stores, {m: (r, self._encoder_key(m)) for m, r in self.reductions.items()},
                                   batch_size=batch_size, **options)

    def train_stream(self) -> IterableDataset:
        return self._paired_stream(min(self.config.batch_size, self.n_cells), True, self.n_cells >= self.config.batch_size)

    def _encoder_batch(self, modality: str, batch: CellBatch) -> dict[str, CellBatch]:
        """A modality's raw counts batch and, with reduced encoder inputs, its reduced cells."""
        out = {modality: batch}
        if modality in self.reductions:
            out[self._encoder_key(modality)] = self.reductions[modality].reduce_batch(batch)
        return out

    def embed_batch(self, modality: str, batch: CellBatch) -> dict[str, torch.Tensor]:
        return self._require_module().embed(modality, self._encoder_batch(modality, batch))

    def config_dict(self) -> dict[str, Any]:
        return {"method": self.method, "seed": self.seed, "inputs": dict(self.inputs), "kinds": self.kinds,
                "links": self.links_spec, "genes_bed": self.genes_bed, "model": asdict(self.config),
                "features": {m: len(f) for m, f in self.features.items()},
                "pairs": {"candidates": len(self.pairs), "prior": len(self.prior_index)}}

    # ---- training and outputs ------------------------------------------------------------------------------
    def save_extras(self, directory: Path) -> None:
        """The gene-peak pairs (``gene_peak_pairs.tsv``), the modelled features (``features_<modality>.txt``) and
        the input reductions: a run or saved model is self-contained."""
        atomic_write_bytes(directory / PAIRS, self.pairs.to_csv(sep="\t", index=False).encode())
        for m, names in self.features.items():
            atomic_write_bytes(directory / f"features_{m}.txt", ("\n".join(names) + "\n").encode())
        save_reductions(directory, self.reductions)

    @torch.no_grad()
    def embed(self, out_dir: str | os.PathLike | None = None, modalities: Sequence[str] | None = None,
              overwrite: bool = True, write_soma: bool = True, progress: bool = True) -> dict[str, Path]:
        """Each modality's posterior means as :meth:`IntegrationModel.embed` does; in a run directory also the
        concatenated RNA + ATAC embedding (:meth:`embed_joint`, ``RUN/joint.zarr``)."""
        paths = super().embed(out_dir, modalities, overwrite, write_soma, progress)
        if self.run_dir is not None:
            self.embed_joint(self.run_dir / JOINT, overwrite=overwrite)
        return paths

    @torch.no_grad()
    def embed_joint(self, out: str | os.PathLike, overwrite: bool = True) -> Path:
        """The concatenated embedding ``[z_rna, z_atac]`` of every cell (``obsm['X_cellweave']``), streamed into the
        AnnData Zarr store ``out`` whose obs are the RNA store's cells."""
        module = self._require_module().to(self.device).eval()
        stream = self._paired_stream(EMBED_BATCH, shuffle=False, drop_last=False, rank=0, world_size=1)
        with EmbeddingWriter(out, self.stores[self.rna], {EMBEDDING_KEY: 2 * self.config.n_latent}, overwrite=overwrite) as w:
            for step in stream:
                step = {k: b.to(self.device) for k, b in step.items()}
                z = module.embed_paired(step)[EMBEDDING_KEY]
                w.write(step[self.rna].rows.cpu().numpy(), {EMBEDDING_KEY: z.cpu().numpy()})
        module.train()
        return Path(out)

    @torch.no_grad()
    def denoise_atac(self, out: str | os.PathLike | None = None, peaks: Sequence[str] | None = None,
                     library_size: float | None = None, overwrite: bool = True) -> Path:
        """Augmented (denoised) accessibility ``library * softmax(z_atac W^T)`` of every cell, written chunk by chunk.

        Parameters
        ----------
        out
            Target Zarr store (default ``RUN/denoised/<atac>.zarr``): a cellweave store (``kind="normalized"``) whose
            obs are the ATAC cells and whose var are the peaks written.
        peaks
            Peaks to write (default: every modelled peak).
        library_size
            Scale every cell to this total instead of its own (comparable profiles).
        overwrite
            Replace an existing ``out``.
        """
        module = self._require_module().to(self.device).eval()
        names = pd.Index(self.features[self.atac])
        pick = np.arange(len(names)) if peaks is None else names.get_indexer(list(peaks))
        if (pick < 0).any():
            missing = [p for p, i in zip(peaks, pick) if i < 0][:5]
            raise InputError("denoise_atac", "peaks", f"not among the modelled peaks: {missing}",
                             "pick from model.features[model.atac]")
        if out is None:
            if self.run_dir is None:
                raise InputError(type(self).__name__, "out", "no output path and no run directory", "pass out=...")
            out = self.run_dir / DENOISED / f"{self.atac}.zarr"
        rows = max(1, min(EMBED_BATCH, DENOISE_CHUNK_VALUES // len(names)))
        store = self.stores[self.atac]
        obs = pd.DataFrame({k: store.obs_column(k).to_numpy() for k in store.obs_keys}, index=store.all_obs_names().astype(str))
        cols = torch.as_tensor(pick, device=self.device)

        def chunks(chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
            for b in self.iter_batches(self.atac, batch_size=min(rows, chunk_rows)):
                y = module.denoise_atac(self._encoder_batch(self.atac, b), library_size)[:, cols]
                yield int(b.rows[0]), y.float().cpu().numpy()

        source = _ChunkFunction(f"FactVAE augmented {self.atac}", self.atac, obs, pd.DataFrame(index=names[pick]), chunks)
        path = write_zarr(source, out, overwrite=overwrite, chunk_rows=rows)
        module.train()
        return path

    @torch.no_grad()
    def latent_map(self, max_cells: int = LATENT_MAP_CELLS) -> np.ndarray:
        """The least-squares map ``S`` from RNA to ATAC latent coordinates (``z_atac ~ z_rna S``), fitted on the
        posterior means of up to ``max_cells`` random paired cells (one streamed pass, stopped early)."""
        module = self._require_module().to(self.device).eval()
        moments = LatentMoments(self.config.n_latent)
        try:
            for step in self._paired_stream(EMBED_BATCH, shuffle=True, drop_last=False, rank=0, world_size=1):
                step = {k: b.to(self.device) for k, b in step.items()}
                z = [module.embed(m, step)[EMBEDDING_KEY].float().cpu().numpy() for m in (self.rna, self.atac)]
                moments.add(*z)
                if moments.n >= max_cells:
                    break
        finally:
            module.train()
        return latent_map(moments)

    def link_scores(self, candidates: pd.DataFrame | str | os.PathLike | None = None, n_background: int | None = None,
                    seed: int | None = None, coordinates: str = "shared") -> pd.DataFrame:
        """Gene-peak link scores: cosine of the genes' and peaks' feature embeddings (the decoders' mean factors),
        with an empirical p-value against shuffled candidate pairs and Benjamini-Hochberg q-values.

        Parameters
        ----------
        candidates
            Pairs to score (``gene, peak`` table or TSV); default: the model's candidate pairs.
        n_background
            Shuffled pairs in the background (default ``config.n_background``).
        seed
            Seed of the shuffling (default: the model's seed).
        coordinates
            ``"shared"`` (default): peak embeddings mapped into the RNA latent coordinates first
            (:meth:`latent_map`; the two decoders read different cell embeddings); ``"decoder"``: the raw
            embeddings as the paper compares them. On the simulator's held-out links (tests/test_factvae.py),
            ``shared`` ranks true links above a Spearman baseline where ``decoder`` does not.

        Returns
        -------
        pandas.DataFrame
            ``gene, peak, score, pvalue, qvalue, prior``, in the candidates' order.
        """
        if coordinates not in ("shared", "decoder"):
            raise InputError("link_scores", "coordinates", f"unknown value {coordinates!r}", "use 'shared' or 'decoder'")
        module = self._require_module()
        genes, peaks = self.features[self.rna], self.features[self.atac]
        table = self.pairs if candidates is None else read_pair_table(candidates)
        table, idx = index_pairs(table[["gene", "peak"]], genes, peaks)
        if len(idx) == 0:
            raise InputError("link_scores", "candidates", "no candidate pair has a modelled gene and peak",
                             "score pairs of model.features[model.rna] and model.features[model.atac]")
        gene_emb, peak_emb = module.feature_embeddings()
        if coordinates == "shared":
            peak_emb = peak_emb @ self.latent_map().T  # z_atac . w = z_rna . (S w)
        scores = link_scores(gene_emb, peak_emb, idx, n_background or self.config.n_background,
                             self.seed if seed is None else seed, gene_names=genes, peak_names=peaks)
        known = pd.MultiIndex.from_frame(self.pairs.loc[self.pairs["prior"].to_numpy(dtype=bool), ["gene", "peak"]])
        scores["prior"] = pd.MultiIndex.from_frame(table[["gene", "peak"]]).isin(known)
        return scores

    @classmethod
    def run_settings(cls, cfg: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
        """The run's settings, its gene-peak pairs and the input reductions it saved."""
        return super().run_settings(cfg, run_dir) | {"links": run_dir / PAIRS,
                                                     "reductions": run_reductions(run_dir, list(cfg["inputs"]))}

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str = "cpu", **options: Any) -> FactVAE:
        """The trained model of a run directory (see :meth:`IntegrationModel.from_run`), checked against the
        features the run modelled."""
        model = super().from_run(run_dir, device, **options)
        for m in model.features:
            saved = (Path(run_dir) / f"features_{m}.txt").read_text().split()
            if saved != model.features[m]:
                raise InputError(run_dir, f"features_{m}.txt", f"the {m!r} features of the run differ from the store's "
                                 "current selection", "rerun the fit on the current stores")
        return model


def _roles(kinds: Mapping[str, str]) -> tuple[str, str]:
    """The RNA and the ATAC modality names."""
    rna = [m for m, k in kinds.items() if k == "rna"]
    atac = [m for m, k in kinds.items() if k == "atac"]
    if len(rna) != 1 or len(atac) != 1 or len(kinds) != 2:
        raise InputError("modalities", "kinds", f"FactVAE needs one RNA and one ATAC modality, got {dict(kinds)}",
                         "pass exactly rna=... and atac=... (or name their kinds with kinds={...})")
    return rna[0], atac[0]


@dataclass
class _ChunkFunction:
    """A :class:`~cellweave.data.ChunkSource` whose chunks a function computes (model outputs)."""

    name: str
    modality: str
    obs: pd.DataFrame
    var: pd.DataFrame
    chunks: Any
    sparse: bool = False
    kind: str = "normalized"

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        return self.chunks(chunk_rows)
