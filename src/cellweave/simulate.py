"""A multi-modal atlas simulator with known truth, streamed block by block (memory does not grow with cells).

Generative model
----------------
* **Cell states.** Lineages, each split into subtypes (``cell_type``), with imbalanced proportions. A cell's
  latent program is ``z = lineage mean + subtype offset + within-type variation`` (``n_programs`` dims).
* **RNA.** ``log rate_g = base_g + z . A_g + batch shift_{b,g}``; rates are normalised over genes and scaled
  by a log-normal library size (batch dependent); counts are negative binomial with per-gene dispersion and
  gene-specific zero inflation (ZINB).
* **ADT.** Each protein is a real antibody panel name whose coding gene(s) are among the RNA genes (from the
  shipped table ``cellweave/links/data/antibody_genes.tsv``). Protein abundance follows its gene's program
  with weight ``rho`` and an independent protein program with weight ``sqrt(1 - rho^2)`` (weakly correlated
  with the gene, as in real CITE-seq), plus ambient background counts.
* **ATAC.** Peaks sit near genes on a simulated genome (``genes.bed``): at the promoter (up to 2 kb before
  the TSS), in the gene body, or distal (10-100 kb away). A share of peaks is truly regulated by its gene
  (accessibility follows the gene's regulatory program); the rest follow random programs. ``gene_peak_links.tsv``
  lists every peak with its gene, the window-based ``prior`` flag and the ``true`` flag. Two settings make
  links harder to see as marginal correlations: ``chromatin_share < 1`` mixes an expression-only program
  into each gene (regulation explains only part of its expression), and ``coaccess > 0`` adds a chromatin
  domain shared by all the peaks of a gene's locus (co-accessibility of linked and unlinked neighbours).
  Counts are negative binomial (inverse dispersion 5) around the capped softmax times a log-normal library,
  drawn only where they fall (:func:`sparse_negative_binomial`).

Unpaired atlases measure *twins*: each modality has its own cell ids (``<modality>_<i>``) but twin ``i`` has
the same latent state in every modality, so ``pair_id`` is ground truth for matching metrics. Paired atlases
measure the same cells (``cell_<i>``) in every modality.

Every block of :data:`BLOCK_CELLS` cells is drawn from its own seed ``(seed, stream, block)``, so values do not
depend on the chunk size used to write them.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .data.atomic import atomic_output
from .data.source import Matrix
from .errors import InputError

BLOCK_CELLS = 8192
#: Most worker threads ``workers=None`` starts, and the fewest blocks for which it starts any.
AUTO_WORKERS, AUTO_MIN_BLOCKS = 8, 4
MODALITIES = ("rna", "adt", "atac")
LINEAGES = {
    "T": ["CD4 naive T", "CD4 memory T", "CD8 naive T", "CD8 effector T", "Treg"],
    "B": ["naive B", "memory B", "plasmablast"],
    "NK": ["NK CD56bright", "NK CD56dim"],
    "Myeloid": ["CD14 monocyte", "CD16 monocyte", "cDC", "pDC"],
}
ATAC_THETA = 5.0  # inverse dispersion of every peak
SAMPLE_ENTRIES = 1 << 22  # cells x peaks of expected counts held at once while sampling ATAC
_STREAM = {"cells": 0, "state": 1, "rna": 2, "adt": 3, "atac": 4}


@dataclass
class SimulationConfig:
    """Settings of :class:`AtlasSimulator` (all truth is derived from ``seed``).

    ``chromatin_share`` is the share of a gene's expression variance (over programs) that comes from its
    regulatory program, the one its truly linked peaks follow; the rest is an expression-only program that
    chromatin does not show (1: expression is its regulatory program, as in the default atlas). ``coaccess`` is
    the strength of a chromatin domain shared by all peaks assigned to the same gene, linked or not (0: none).
    """

    n_cells: int
    modalities: tuple[str, ...] = MODALITIES
    paired: bool = False
    n_batches: int = 2
    seed: int = 0
    n_genes: int = 2000
    n_proteins: int = 150
    n_peaks: int = 5000
    n_programs: int = 12
    rho: float = 0.5
    true_link_share: float = 0.6
    rna_library: float = 2000.0
    adt_library: float = 1500.0
    atac_library: float = 1500.0
    batch_strength: float = 0.5
    logit_cap: float = 4.0
    chromatin_share: float = 1.0
    coaccess: float = 0.0
    lineages: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in LINEAGES.items()})


def sparse_negative_binomial(rng: np.random.Generator, mu: np.ndarray, theta: float) -> sp.csr_matrix:
    """Negative binomial counts (mean ``mu``, inverse dispersion ``theta``), drawn only where counts fall.

    An NB count is a Poisson number of clusters, each of logarithmic size (Quenouille 1949): clusters
    ~ Poisson(theta * log(1 + mu / theta)), sizes ~ Logarithmic(mu / (mu + theta)). Laid end to end (row-major),
    the entries' cluster rates tile an interval on which clusters are a unit-rate Poisson process: its points are
    drawn in order (sorted uniforms from normalised exponential sums) and placed by one sorted search of the
    cumulative rates. Random draws grow with the counts, not with cells x features (ATAC: a few percent non-zero).

    Parameters
    ----------
    rng
        Random generator.
    mu
        ``(cells, features)`` expected counts (dense, non-negative).
    theta
        Inverse dispersion (variance ``mu + mu**2 / theta``).

    Returns
    -------
    scipy.sparse.csr_matrix
        float32 counts of ``mu``'s shape.
    """
    n, m = mu.shape
    cum = (theta * np.log1p(mu.reshape(-1) / theta)).astype(np.float64)
    np.cumsum(cum, out=cum)
    total = float(cum[-1]) if cum.size else 0.0
    gaps = np.cumsum(rng.standard_exponential(rng.poisson(total) + 1))
    flat = np.searchsorted(cum, gaps[:-1] * (total / gaps[-1]), side="right")
    mean = mu.reshape(-1)[flat]
    sizes = rng.logseries(mean / (mean + theta)).astype(np.float32)
    counts = sp.coo_matrix((sizes, (flat // m, flat % m)), shape=(n, m)).tocsr()  # sums clusters of one entry
    counts.sum_duplicates()
    return counts


def _antibody_table() -> pd.DataFrame:
    path = resources.files("cellweave.links") / "data" / "antibody_genes.tsv"
    table = pd.read_csv(str(path), sep="\t", comment="#", dtype=str)
    table = table[table["genes"].notna() & ~table["protein"].str.contains("isotype", case=False)]
    return table.reset_index(drop=True)


def _seeded(seed: int, stream: str, block: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAM[stream], block])


class AtlasSimulator:
    """The truth of one simulated atlas and a :class:`~cellweave.data.ChunkSource` per modality.

    Parameters
    ----------
    config
        The simulation settings.
    """

    def __init__(self, config: SimulationConfig) -> None:
        cfg = self.config = config
        unknown = [m for m in cfg.modalities if m not in MODALITIES]
        if unknown or not cfg.modalities:
            raise InputError("simulate", "modalities", f"unknown modalities {unknown}" if unknown else "no modality given",
                             f"choose among {', '.join(MODALITIES)}")
        if cfg.n_cells < 1 or cfg.n_batches < 1:
            raise InputError("simulate", "cells/batches", "need at least one cell and one batch", "pass --cells N >= 1 and --batches B >= 1")
        rng = np.random.default_rng([cfg.seed, 99, 0])
        L = cfg.n_programs
        self.types = [(lin, t) for lin, subs in cfg.lineages.items() for t in subs]
        n_lin = len(cfg.lineages)
        lineage_mean = rng.normal(0, 1.0, (n_lin, L))
        lin_index = {lin: i for i, lin in enumerate(cfg.lineages)}
        self.type_mean = np.stack([lineage_mean[lin_index[lin]] + rng.normal(0, 0.7, L) for lin, _ in self.types])
        props = rng.dirichlet(np.full(len(self.types), 2.0))
        self.type_p = props / props.sum()
        if not (0.0 <= cfg.chromatin_share <= 1.0 and cfg.coaccess >= 0.0):
            raise InputError("simulate", "chromatin_share/coaccess", f"{cfg.chromatin_share}, {cfg.coaccess}",
                             "use 0 <= chromatin_share <= 1 and coaccess >= 0")
        self._genes(np.random.default_rng([cfg.seed, 99, 1]))
        self._regulation(np.random.default_rng([cfg.seed, 99, 4]))
        self._proteins(np.random.default_rng([cfg.seed, 99, 2]))
        self._peaks(np.random.default_rng([cfg.seed, 99, 3]))
        self._domains(np.random.default_rng([cfg.seed, 99, 5]))
        b = cfg.n_batches
        self.batch_library = np.exp(rng.normal(0, 0.25, b))
        self.batch_shift = {m: rng.normal(0, cfg.batch_strength, (b, n)).astype(np.float32)
                            for m, n in (("rna", self.n_genes), ("adt", len(self.proteins)), ("atac", len(self.peaks)))}
        self.obs_all = self._cells()

    # ---- truth -------------------------------------------------------------------------------------------
    def _genes(self, rng: np.random.Generator) -> None:
        cfg = self.config
        table = _antibody_table()
        coding = []
        for genes in table["genes"]:
            for g in genes.split(","):
                if g.strip() and g.strip() not in coding:
                    coding.append(g.strip())
        n_coding = min(len(coding), cfg.n_genes // 2)
        self.protein_table = table
        names = coding[:n_coding] + [f"SIMG{i:05d}" for i in range(cfg.n_genes - n_coding)]
        self.gene_names = pd.Index(names)
        self.n_genes = len(names)
        L = cfg.n_programs
        # Sparse loadings: each gene follows a few programs; many genes are marker-like, some housekeeping.
        A = rng.normal(0, 0.5, (L, self.n_genes)) * (rng.random((L, self.n_genes)) < 0.25)
        # Genes coding for panel proteins are surface markers: cell-type specific, so denser and stronger loadings.
        A[:, :n_coding] = rng.normal(0, 0.45, (L, n_coding)) * (rng.random((L, n_coding)) < 0.5)
        self.gene_loadings = A.astype(np.float32)
        self.gene_base = rng.normal(0, 1.2, self.n_genes).astype(np.float32)
        self.gene_base[:n_coding] += 1.0
        self.gene_theta = rng.gamma(2.0, 2.0, self.n_genes).astype(np.float32) + 0.5
        self.gene_dropout = np.where(rng.random(self.n_genes) < 0.3, rng.uniform(0.05, 0.4, self.n_genes), 0.0).astype(np.float32)
        # Genome: 22 chromosomes, genes 5-60 kb long separated by 150-400 kb.
        chrom = np.sort(rng.integers(1, 23, self.n_genes))
        length = rng.integers(5_000, 60_000, self.n_genes)
        gap = rng.integers(150_000, 400_000, self.n_genes)
        start = np.zeros(self.n_genes, dtype=np.int64)
        for c in np.unique(chrom):
            on = np.flatnonzero(chrom == c)
            start[on] = 1_000_000 + np.cumsum(gap[on] + length[on]) - length[on]
        self.genes_bed = pd.DataFrame({"chrom": [f"chr{c}" for c in chrom], "start": start, "end": start + length,
                                       "name": names, "score": 0, "strand": np.where(rng.random(self.n_genes) < 0.5, "+", "-")})

    def _regulation(self, rng: np.random.Generator) -> None:
        """Split each gene's program into its regulatory part (followed by its linked peaks) and the expression."""
        self.gene_regulation = self.gene_loadings
        share = self.config.chromatin_share
        if share < 1.0:
            A = self.gene_loadings
            own = rng.normal(0, 0.5, A.shape) * (rng.random(A.shape) < 0.25)
            # same norm as the regulatory program, so `share` is the regulatory share of the expression variance
            own *= np.linalg.norm(A, axis=0) / np.maximum(np.linalg.norm(own, axis=0), 1e-6)
            self.gene_loadings = (np.sqrt(share) * A + np.sqrt(1 - share) * own).astype(np.float32)

    def _domains(self, rng: np.random.Generator) -> None:
        """Co-accessibility: every peak of a locus (the peaks assigned to one gene) shares the locus' domain program."""
        if self.config.coaccess > 0:
            L = self.config.n_programs
            domain = rng.normal(0, 0.5, (L, self.n_genes)) * (rng.random((L, self.n_genes)) < 0.25)
            locus = self.gene_names.get_indexer(self.gene_peak["gene"])
            self.peak_loadings = (self.peak_loadings + self.config.coaccess * domain[:, locus]).astype(np.float32)

    def _proteins(self, rng: np.random.Generator) -> None:
        cfg = self.config
        genes = set(self.gene_names)
        keep = [i for i, g in enumerate(self.protein_table["genes"]) if all(x.strip() in genes for x in g.split(","))]
        if "adt" in cfg.modalities and cfg.n_proteins > len(keep):
            raise InputError("simulate", "proteins", f"{cfg.n_proteins} proteins asked but the antibody table links only {len(keep)} "
                             f"to the {self.n_genes} simulated genes", "ask for fewer proteins (--proteins) or more genes (--genes)")
        if "adt" not in cfg.modalities:
            keep = keep[: cfg.n_proteins]  # truth tables stay defined; no protein panel is sampled
        picked = np.sort(rng.choice(keep, min(cfg.n_proteins, len(keep)), replace=False))
        self.proteins = pd.Index(self.protein_table["protein"].to_numpy()[picked])
        gene_pos = self.gene_names.get_indexer
        self.protein_genes = [gene_pos([x.strip() for x in self.protein_table["genes"].iloc[i].split(",")]) for i in picked]
        L, P = cfg.n_programs, len(self.proteins)
        own = rng.normal(0, 0.5, (L, P)) * (rng.random((L, P)) < 0.3)
        gene_part = np.stack([self.gene_loadings[:, g].mean(1) for g in self.protein_genes], axis=1) if P else np.zeros((L, 0))
        scale = np.linalg.norm(gene_part, axis=0) + 1e-6
        own_scale = np.linalg.norm(own, axis=0) + 1e-6
        # Each protein: rho of its direction from its gene(s), the rest from its own program; 1.5x the gene's strength.
        w = cfg.rho * gene_part / scale + np.sqrt(1 - cfg.rho**2) * own / own_scale
        self.protein_loadings = (1.5 * w * np.maximum(scale, 0.8)).astype(np.float32)
        self.protein_base = rng.normal(0, 0.7, P).astype(np.float32)
        self.protein_theta = rng.gamma(5.0, 2.0, P).astype(np.float32) + 2.0
        self.protein_background = rng.gamma(2.0, 1.5, P).astype(np.float32)

    def _peaks(self, rng: np.random.Generator) -> None:
        cfg = self.config
        n = cfg.n_peaks
        gene = rng.integers(0, self.n_genes, n)
        kind = rng.choice(["promoter", "body", "distal"], n, p=[0.35, 0.35, 0.3])
        bed = self.genes_bed
        s, e = bed["start"].to_numpy()[gene], bed["end"].to_numpy()[gene]
        plus = bed["strand"].to_numpy()[gene] == "+"
        tss = np.where(plus, s, e)
        width = rng.integers(300, 800, n)
        upstream = np.where(plus, -1, 1)
        centre = np.select(
            [kind == "promoter", kind == "body"],
            [tss + upstream * rng.integers(0, 1_700, n), s + 400 + (rng.random(n) * np.maximum(e - s - 800, 1)).astype(np.int64)],
            tss + rng.integers(10_000, 100_000, n) * np.where(rng.random(n) < 0.5, 1, -1),
        )
        pstart = np.maximum(centre - width // 2, 0)
        chrom = bed["chrom"].to_numpy()[gene]
        order = np.lexsort((pstart, np.array([int(c[3:]) for c in chrom])))
        gene, kind, pstart, width, chrom = gene[order], kind[order], pstart[order], width[order], chrom[order]
        names = pd.Index([f"{c}:{a}-{a + w}" for c, a, w in zip(chrom, pstart, width)])
        keep = ~names.duplicated()
        gene, kind, pstart, width, chrom, names = gene[keep], kind[keep], pstart[keep], width[keep], chrom[keep], names[keep]
        self.peaks = names
        n = len(names)
        true = rng.random(n) < np.where(kind == "distal", cfg.true_link_share / 2, cfg.true_link_share)
        L = cfg.n_programs
        random_prog = rng.normal(0, 0.5, (L, n)) * (rng.random((L, n)) < 0.25)
        linked = self.gene_regulation[:, gene] * 1.2 + rng.normal(0, 0.1, (L, n))
        self.peak_loadings = np.where(true[None, :], linked, random_prog).astype(np.float32)
        self.peak_base = rng.normal(0, 0.8, n).astype(np.float32)
        pend = pstart + width
        gs, ge = bed["start"].to_numpy()[gene], bed["end"].to_numpy()[gene]
        gplus = bed["strand"].to_numpy()[gene] == "+"
        win_s = np.where(gplus, gs - 2_000, gs)
        win_e = np.where(gplus, ge, ge + 2_000)
        prior = (pstart < win_e) & (pend > win_s)
        self.gene_peak = pd.DataFrame({"gene": self.gene_names[gene], "peak": names, "kind": kind, "prior": prior, "true": true})

    def _cells(self) -> pd.DataFrame:
        cfg = self.config
        blocks = []
        for b in range(0, cfg.n_cells, BLOCK_CELLS):
            rng = _seeded(cfg.seed, "cells", b // BLOCK_CELLS)
            n = min(BLOCK_CELLS, cfg.n_cells - b)
            blocks.append((rng.choice(len(self.types), n, p=self.type_p), rng.integers(0, cfg.n_batches, n)))
        t = np.concatenate([x[0] for x in blocks]).astype(np.int16)
        batch = np.concatenate([x[1] for x in blocks]).astype(np.int16)
        cell_types = [name for _, name in self.types]
        lineages = list(dict.fromkeys(lin for lin, _ in self.types))
        lin_code = np.array([lineages.index(lin) for lin, _ in self.types])[t]
        return pd.DataFrame({
            "cell_type": pd.Categorical.from_codes(t, cell_types),
            "lineage": pd.Categorical.from_codes(lin_code, lineages),
            "batch": pd.Categorical.from_codes(batch, [f"batch{i}" for i in range(cfg.n_batches)]),
        })

    # ---- sampling ----------------------------------------------------------------------------------------
    def states(self, block: int) -> np.ndarray:
        """Latent programs of the cells of ``block`` (shared by twins across modalities)."""
        cfg = self.config
        a = block * BLOCK_CELLS
        n = min(BLOCK_CELLS, cfg.n_cells - a)
        t = self.obs_all["cell_type"].cat.codes.to_numpy()[a : a + n]
        rng = _seeded(cfg.seed, "state", block)
        return (self.type_mean[t] + rng.normal(0, 0.3, (n, cfg.n_programs))).astype(np.float32)

    def _means(self, modality: str, z: np.ndarray, batch: np.ndarray, lib: np.ndarray) -> np.ndarray:
        """Expected counts of cells with programs ``z``: capped softmax over features, times the library size."""
        cfg = self.config
        base, W = {"rna": (self.gene_base, self.gene_loadings), "adt": (self.protein_base, self.protein_loadings),
                   "atac": (self.peak_base, self.peak_loadings)}[modality]
        logits = base + z @ W + self.batch_shift[modality][batch]
        # Soft cap: no single feature takes more than a few percent of a cell's counts, as in real data.
        logits = cfg.logit_cap * np.tanh(logits / cfg.logit_cap)
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        return p * lib[:, None]

    def _counts(self, modality: str, block: int) -> Matrix:
        cfg = self.config
        a = block * BLOCK_CELLS
        z = self.states(block)
        n = z.shape[0]
        batch = self.obs_all["batch"].cat.codes.to_numpy()[a : a + n]
        rng = _seeded(cfg.seed, modality, block)
        lib0, sd = {"rna": (cfg.rna_library, 0.5), "adt": (cfg.adt_library, 0.35), "atac": (cfg.atac_library, 0.6)}[modality]
        lib = (lib0 * self.batch_library[batch] * np.exp(rng.normal(0, sd, n))).astype(np.float32)
        if modality == "atac":
            # peaks are many and sparse: sample where counts fall, a few hundred cells at a time
            step = max(1, SAMPLE_ENTRIES // len(self.peaks))
            return sp.vstack([sparse_negative_binomial(rng, self._means(modality, z[s : s + step], batch[s : s + step],
                                                                        lib[s : s + step]), ATAC_THETA)
                              for s in range(0, n, step)], format="csr")
        mu = self._means(modality, z, batch, lib)
        theta = np.broadcast_to(self.gene_theta if modality == "rna" else self.protein_theta, mu.shape)
        counts = rng.poisson(rng.standard_gamma(theta, dtype=np.float32) * (mu / theta)).astype(np.float32)
        if modality == "rna":
            counts[rng.random(counts.shape, dtype=np.float32) < self.gene_dropout] = 0
            return sp.csr_matrix(counts)
        return counts + rng.poisson(np.broadcast_to(self.protein_background, counts.shape)).astype(np.float32)

    def obs(self, modality: str) -> pd.DataFrame:
        """Cell metadata of ``modality``: ``cell_type``, ``lineage``, ``batch``, ``pair_id`` (index: cell ids)."""
        n = self.config.n_cells
        ids = np.char.add("cell_", np.arange(n).astype(str))
        obs = self.obs_all.copy()
        obs["pair_id"] = ids
        obs.index = pd.Index(ids if self.config.paired else np.char.add(f"{modality}_", np.arange(n).astype(str)), name=None)
        return obs

    def var(self, modality: str) -> pd.DataFrame:
        """Feature metadata of ``modality`` (index: feature names)."""
        if modality == "rna":
            return pd.DataFrame({"coding_for_panel": self.gene_names.isin(
                [self.gene_names[i] for g in self.protein_genes for i in g])}, index=self.gene_names)
        if modality == "adt":
            genes = [",".join(self.gene_names[g]) for g in self.protein_genes]
            return pd.DataFrame({"coding_genes": genes}, index=self.proteins)
        gp = self.gene_peak.set_index("peak")
        return pd.DataFrame({"gene": gp["gene"].astype(str), "kind": gp["kind"].astype(str)}, index=self.peaks)

    def source(self, modality: str, workers: int = 1) -> SimulatedSource:
        """A chunk source of ``modality`` (values generated block by block as it is read, ``workers`` blocks
        at once)."""
        if modality not in self.config.modalities:
            raise InputError("simulate", "modality", f"{modality!r} is not simulated", f"choose among {self.config.modalities}")
        return SimulatedSource(self, modality, workers)

    def links_table(self) -> pd.DataFrame:
        """Protein -> coding gene links (``source_modality, source_feature, target_modality, target_feature``)."""
        rows = [("adt", p, "rna", self.gene_names[i]) for p, g in zip(self.proteins, self.protein_genes) for i in g]
        return pd.DataFrame(rows, columns=["source_modality", "source_feature", "target_modality", "target_feature"])


class SimulatedSource:
    """:class:`~cellweave.data.ChunkSource` of one simulated modality.

    ``workers > 1`` draws that many blocks at once in worker threads; the values do not change (every block
    has its own seed), only the wall time.
    """

    def __init__(self, sim: AtlasSimulator, modality: str, workers: int = 1) -> None:
        self.sim = sim
        self.name = f"simulated {modality}"
        self.modality = modality
        self.obs = sim.obs(modality)
        self.var = sim.var(modality)
        self.sparse = modality != "adt"
        self.kind = "counts"
        self.workers = workers

    def iter_blocks(self) -> Iterator[Matrix]:
        """The matrix in blocks of :data:`BLOCK_CELLS` rows, in order."""
        n_blocks = (self.sim.config.n_cells + BLOCK_CELLS - 1) // BLOCK_CELLS
        workers = min(self.workers, n_blocks)
        if workers <= 1:
            for block in range(n_blocks):
                yield self.sim._counts(self.modality, block)
            return
        # threads: numpy's random draws and array arithmetic release the GIL; no process start-up, no pickling
        pool = ThreadPoolExecutor(workers, thread_name_prefix="simulate")
        pending: deque[Future] = deque()
        try:
            for block in range(n_blocks):
                pending.append(pool.submit(self.sim._counts, self.modality, block))
                if len(pending) > workers:  # one block per worker in flight, one done: memory stays bounded
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, Matrix]]:
        stack = sp.vstack if self.sparse else np.vstack
        pending: list[Matrix] = []
        held = start = 0
        for X in self.iter_blocks():
            pending.append(X)
            held += X.shape[0]
            while held >= chunk_rows:
                M = pending[0] if len(pending) == 1 else stack(pending)
                if self.sparse:
                    M = sp.csr_matrix(M)
                yield start, M[:chunk_rows]
                rest = M[chunk_rows:]
                start += chunk_rows
                held -= chunk_rows
                pending = [rest] if held else []
        if held:
            M = pending[0] if len(pending) == 1 else stack(pending)
            yield start, sp.csr_matrix(M) if self.sparse else M


def auto_workers(n_cells: int) -> int:
    """Worker threads for ``n_cells`` per modality: one per available core (at most :data:`AUTO_WORKERS`),
    none for fewer than :data:`AUTO_MIN_BLOCKS` blocks."""
    n_blocks = (n_cells + BLOCK_CELLS - 1) // BLOCK_CELLS
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if n_blocks < AUTO_MIN_BLOCKS else max(1, min(cores, AUTO_WORKERS, n_blocks))


def _write_tables(sim: AtlasSimulator, root: Path) -> None:
    sim.links_table().to_csv(root / "links.tsv", sep="\t", index=False)
    sim.gene_peak.to_csv(root / "gene_peak_links.tsv", sep="\t", index=False)
    sim.genes_bed.to_csv(root / "genes.bed", sep="\t", index=False, header=False)
    meta = asdict(sim.config) | {"cell_types": [t for _, t in sim.types], "block_cells": BLOCK_CELLS,
                                 "type_proportions": sim.type_p.round(6).tolist()}
    (root / "simulation.json").write_text(json.dumps(meta, indent=2))


def simulate_atlas(out: str | os.PathLike, n_cells: int, modalities: Sequence[str] = MODALITIES, paired: bool = False,
                   n_batches: int = 2, fmt: str = "zarr", seed: int = 0, n_genes: int = 2000, n_proteins: int = 150,
                   n_peaks: int = 5000, chunk_rows: int = 4096, overwrite: bool = False, progress: bool = True,
                   workers: int | None = None, **settings) -> dict[str, Path]:
    """Simulate an atlas and write it to ``out`` (nothing is left under ``out`` if anything fails).

    Parameters
    ----------
    out
        Output directory: ``<modality>.zarr`` per modality (``fmt="zarr"``) or one SOMA experiment
        ``atlas.soma`` with a measurement per modality (``fmt="soma"``), plus ``links.tsv`` (protein -> gene),
        ``gene_peak_links.tsv`` (peak, gene, window prior, true link), ``genes.bed`` and ``simulation.json``.
    n_cells
        Cells per modality.
    modalities
        Any of ``rna``, ``adt``, ``atac``.
    paired
        Measure the same cells in every modality (otherwise twins with their own ids, linked by ``pair_id``).
    n_batches, seed, n_genes, n_proteins, n_peaks
        Size and truth of the atlas.
    chunk_rows
        Rows per write chunk (does not change the values).
    overwrite
        Replace an existing ``out``.
    progress
        Show a progress bar.
    workers
        Threads drawing blocks at once (values do not depend on it); ``None``: one per available core, at most
        8, for atlases of 4 blocks (32,768 cells) or more, else 1. Memory grows with it (each worker holds a
        block's dense expected counts: about 0.3 GB at 2,000 genes), not with the cells.
    **settings
        Further :class:`SimulationConfig` fields (``rho``, ``batch_strength``, ``n_programs`` ...).

    Returns
    -------
    dict
        Modality -> store path (``SOMA_DIR::MEASUREMENT`` for SOMA), plus ``links``, ``gene_peak_links`` and
        ``genes_bed`` table paths.
    """
    from tqdm.auto import tqdm

    from .data.soma_store import write_soma
    from .data.write_zarr import write_zarr

    if fmt not in ("zarr", "soma"):
        raise InputError("simulate", "format", f"unknown format {fmt!r}", "use --format zarr or --format soma")
    if workers is not None and workers < 1:
        raise InputError("simulate", "workers", f"workers must be >= 1, got {workers}", "pass --workers 1 or more (or leave it unset)")
    cfg = SimulationConfig(n_cells=n_cells, modalities=tuple(modalities), paired=paired, n_batches=n_batches, seed=seed,
                           n_genes=n_genes, n_proteins=n_proteins, n_peaks=n_peaks, **settings)
    sim = AtlasSimulator(cfg)
    out = Path(out)
    bar = tqdm(total=n_cells * len(cfg.modalities), unit="cells", desc="simulate", disable=not progress)
    with atomic_output(out, overwrite) as tmp:
        tmp.mkdir(parents=True)
        n_workers = auto_workers(n_cells) if workers is None else workers
        sources = [sim.source(m, n_workers) for m in cfg.modalities]
        if fmt == "zarr":
            for s in sources:
                write_zarr(s, tmp / f"{s.modality}.zarr", chunk_rows=chunk_rows, progress=bar.update)
        else:
            write_soma(sources, tmp / "atlas.soma", chunk_rows=chunk_rows, progress=bar.update)
        _write_tables(sim, tmp)
    bar.close()
    paths: dict[str, Path] = {m: (out / f"{m}.zarr") if fmt == "zarr" else Path(f"{out / 'atlas.soma'}::{m}") for m in cfg.modalities}
    paths |= {"links": out / "links.tsv", "gene_peak_links": out / "gene_peak_links.tsv", "genes_bed": out / "genes.bed"}
    return paths
