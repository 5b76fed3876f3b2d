"""Learned feature links: canonical directions shared by two modalities, found from matched cell pairs.

Designed after SCOT (Demetci et al. 2022) for the first pivots and MaxFuse (Chen et al. 2023) for the
refinement, on bounded memory:

1. **Reduce and sample.** A PCA of each modality's input features (the stream's features and transform) is fitted
   out of core over the whole store (:func:`cellweave.reduce.load_or_fit`, kept beside the data), and a uniform
   subsample of ``n_cells`` cells is read. A stratified share of it (``quality_cells``) scores the result; it is
   held out when the rest still holds ``ot_cells`` cells, else (small data) every cell is fitted as well.
2. **First pivots.** Without any linked feature, ``ot_cells`` cells per modality (stratified) are coupled by
   Gromov-Wasserstein transport between their within-modality distances (:mod:`~cellweave.links.transport`:
   ``ot_starts`` exact starts, the lowest loss kept, then an entropic step ``ot_epsilon``), which needs no shared
   feature; each coupled source cell pivots with its coupling-weighted mean target cell. With weak links (a handful of shared markers, each smoothed over the
   cell's nearest neighbours) cells are matched one to one on them (:func:`~cellweave.links.pivots.match_blocks`),
   or, with ``first_pivots="transport"``, the transport is *fused* with the linked features' distances.
3. **CCA.** Regularised CCA (:func:`~cellweave.links.cca.fit_cca`) of the pivots' reduced features, fitted on
   a training share of the pivots; each canonical pair's correlation is also measured on the held-out share,
   and the pairs that hold up there (``>= min_correlation``) are chosen. After transport, at most
   ``ot_components`` pairs with ridge ``ot_ridge``: the transport's pivots are smooth (coupling-weighted means), so
   every pair holds up on held-out pivots, and the weak ones only add noise (on simulated twins the first CCA's
   FOSCTTM goes from about 0.06 with 3-5 pairs to 0.1-0.2 with 10 and more at ridge 0.05).
4. **Refine.** Fit cells are re-matched one to one on their smoothed scores of the chosen pairs, the worst
   matches dropped, and CCA refitted, ``n_iter`` times.
5. **Score and choose** (no labels, no pairs). Steps 2-4 run on ``ot_samples`` transport samples for every
   geometry (``ot_metric`` x ``ot_neighbors``). The geometry kept is the one both modalities share best: least
   mean GW *distortion* (loss relative to the independent coupling's) over the samples; on CITE-seq the true
   pairing distorts cosine distances by 0.33 and euclidean ones by 0.75. Among its samples, the quality cells of
   both modalities are projected by each result and matched one to one; the *quality*
   (:func:`~cellweave.links.transport.alignment_quality`: does the matching keep both modalities' geodesic
   distances?) picks the result (a sample whose coupling swapped cell types scores low), and the *agreement* of
   the best results of two samples (:func:`~cellweave.links.transport.partner_agreement`: are a cell's partners
   under both close in the target modality?) is reported. Below ``min_quality`` or ``min_agreement`` a warning
   (:class:`UnreliableAlignmentWarning`) says that the alignment is unreliable.

The chosen canonical directions, folded through the PCA, become one :class:`LinkProjection` of each modality's
input features: the learned linked features a model uses to find anchors.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..data.atomic import atomic_write_bytes
from ..data.preprocess import Preprocess
from ..data.stream import CellStream
from ..errors import InputError
from ..reduce import Reduction, load_or_fit
from .cca import CCAFit, fit_cca
from .feature_links import FeatureLinks
from .pivots import drop_worst, match_blocks, neighbor_graph, smooth
from .projection import LinkProjection
from .transport import (
    METRICS,
    alignment_quality,
    barycentric,
    cell_distances,
    feature_cost,
    geodesic_distances,
    gromov_wasserstein,
    partner_agreement,
    stratified_sample,
)

log = logging.getLogger(__name__)

#: Fewest pivots kept after filtering for a CCA fit.
MIN_PIVOTS = 20
#: k-NN graph size of the held-out cells' geodesic distances that score every alignment.
QUALITY_NEIGHBORS = 15
#: Source rows scored at a time in :meth:`LearnedLinks.feature_links`.
_SCORE_BLOCK = 1024
#: Cells read at a time when sampling.
_SAMPLE_BATCH = 4096


class UnreliableAlignmentWarning(UserWarning):
    """The learned alignment keeps little geometry (below ``min_quality``) or two samples disagree (``min_agreement``)."""


@dataclass
class LearnSettings:
    """Settings of :func:`learn`.

    Attributes
    ----------
    n_components
        Most canonical pairs kept.
    n_pca
        Reduced dimensions per modality (capped by the modality's input width).
    n_cells
        Cells sampled per modality (the memory bound: ``n_cells x input width`` floats per modality).
    block_size
        Most cells per side in one linear assignment (memory ``block_size^2``).
    smooth_k
        Neighbours (within the modality, on its reduced features) averaged into each cell's linked features or
        canonical scores before matching (0: no smoothing).
    n_iter
        Refinement rounds after the first CCA.
    drop
        Share of the worst-matched pivots dropped in every refinement round.
    ridge
        CCA ridge, as a share of each covariance's mean variance.
    holdout
        Share of the pivots held out of each CCA fit to measure its correlations.
    min_correlation
        Held-out canonical correlation a pair needs to be chosen.
    first_pivots
        With links: ``"links"`` (default): one-to-one matching on the smoothed linked features;
        ``"transport"``: fused Gromov-Wasserstein transport. Without links, always (plain) transport.
    ot_cells
        Cells per modality in the transport (memory: a few ``ot_cells^2`` float64 matrices).
    ot_metric, ot_neighbors
        Candidate within-modality geometries: metrics (``"euclidean"``, ``"cosine"``) x k-NN graph sizes
        (0: the distances themselves, no graph); every combination is tried on every sample.
    ot_epsilon
        Entropic regularisation of the last transport step (0: exact GW only).
    ot_starts
        Exact-GW starts per transport (the independent coupling, then random ones); the lowest loss is kept.
    ot_samples
        Independent transport samples (their best results give the agreement).
    ot_components, ot_ridge
        Most canonical pairs, and the CCA ridge, of the rounds after transport.
    fused_alpha
        Weight of the geometry (vs the linked features' distances) in fused transport, in [0, 1].
    quality_cells
        Cells per modality (stratified) that score the alignment; held out of the fit unless fewer than
        ``ot_cells`` would remain.
    min_quality, min_agreement
        Alignment quality, and agreement between the alignments of two transport samples, below
        which :func:`learn` warns that the alignment is unreliable.
    """

    n_components: int = 20
    n_pca: int = 30
    n_cells: int = 10_000
    block_size: int = 2_000
    smooth_k: int = 15
    n_iter: int = 3
    drop: float = 0.3
    ridge: float = 0.05
    holdout: float = 0.2
    min_correlation: float = 0.3
    first_pivots: str = "links"
    ot_cells: int = 400
    ot_metric: list[str] = field(default_factory=lambda: ["euclidean", "cosine"])
    ot_neighbors: list[int] = field(default_factory=lambda: [0])
    ot_epsilon: float = 5e-3
    ot_starts: int = 20
    ot_samples: int = 3
    ot_components: int = 5
    ot_ridge: float = 0.5
    fused_alpha: float = 0.5
    quality_cells: int = 400
    min_quality: float = 0.45
    min_agreement: float = 0.25

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "learn settings") -> LearnSettings:
        """Build from a (TOML) mapping; an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(source, unknown[0], "unknown learned-links setting", f"use one of: {', '.join(sorted(known))}")
        values = dict(values)
        for name in ("ot_neighbors", "ot_metric"):  # a single value is a one-candidate list
            if name in values and not isinstance(values[name], (list, tuple)):
                values[name] = [values[name]]
        return cls(**values).checked(source)

    def checked(self, source: str = "learn settings") -> LearnSettings:
        """``self`` when every setting is in range, else :class:`InputError` naming the first bad one."""
        rules = [("n_components", self.n_components >= 1, ">= 1"), ("n_pca", self.n_pca >= 1, ">= 1"),
                 ("n_cells", self.n_cells >= 4 * MIN_PIVOTS, f">= {4 * MIN_PIVOTS}"),
                 ("block_size", self.block_size >= 2, ">= 2"), ("smooth_k", self.smooth_k >= 0, ">= 0"),
                 ("n_iter", self.n_iter >= 0, ">= 0"), ("drop", 0 <= self.drop < 1, "in [0, 1)"),
                 ("ridge", self.ridge >= 0, ">= 0"), ("holdout", 0 < self.holdout < 1, "in (0, 1)"),
                 ("min_correlation", -1 <= self.min_correlation <= 1, "in [-1, 1]"),
                 ("first_pivots", self.first_pivots in ("transport", "links"), "to 'transport' or 'links'"),
                 ("ot_cells", self.ot_cells >= MIN_PIVOTS, f">= {MIN_PIVOTS}"),
                 ("ot_metric", len(self.ot_metric) > 0 and all(m in METRICS for m in self.ot_metric),
                  f"to a list of: {', '.join(METRICS)}"),
                 ("ot_neighbors", len(self.ot_neighbors) > 0 and all(int(k) == k and k >= 0 for k in self.ot_neighbors),
                  "to a list of integers >= 0"),
                 ("ot_epsilon", isinstance(self.ot_epsilon, (int, float)) and self.ot_epsilon >= 0, "to one value >= 0"),
                 ("ot_starts", self.ot_starts >= 1, ">= 1"), ("ot_samples", self.ot_samples >= 1, ">= 1"),
                 ("ot_components", self.ot_components >= 1, ">= 1"), ("ot_ridge", self.ot_ridge >= 0, ">= 0"),
                 ("fused_alpha", 0 <= self.fused_alpha <= 1, "in [0, 1]"),
                 ("quality_cells", self.quality_cells >= 10, ">= 10"),
                 ("min_quality", -1 <= self.min_quality <= 1, "in [-1, 1]"),
                 ("min_agreement", -1 <= self.min_agreement <= 1, "in [-1, 1]")]
        for name, ok, want in rules:
            if not ok:
                raise InputError(source, name, f"{name}={getattr(self, name)!r} is out of range", f"set {name} {want}")
        return self


@dataclass(frozen=True)
class Candidate:
    """One transport tried by :func:`learn` (a sample x a geometry) and how its alignment scored.

    Attributes
    ----------
    sample
        Which transport sample (0 .. ``ot_samples - 1``).
    metric, neighbors
        Within-modality geometry (:func:`~cellweave.links.transport.cell_distances`).
    gw_loss
        Gromov-Wasserstein loss of the coupling (comparable only between couplings of the same distances).
    distortion
        The loss relative to the independent coupling's (comparable between geometries; lowest is chosen).
    quality
        :func:`~cellweave.links.transport.alignment_quality` of the candidate's final alignment on the
        quality cells.
    """

    sample: int
    metric: str
    neighbors: int
    gw_loss: float
    distortion: float
    quality: float


@dataclass(frozen=True)
class LearnRound:
    """One round of :func:`learn`: what the cells were matched on, how many pivots, the CCA it gave.

    Attributes
    ----------
    iteration
        0 for the first pivots, then 1 .. ``n_iter``.
    matched_on
        ``"links"``, ``"transport"``, ``"fused transport"`` or ``"cca"`` (the previous round's chosen canonical
        scores).
    n_matched, n_pivots
        Pairs matched, and kept after dropping the worst.
    correlations, heldout
        Canonical correlations on the training pivots and on the held-out pivots, per canonical pair.
    components
        Canonical pairs chosen (held-out correlation at least ``min_correlation``).
    """

    iteration: int
    matched_on: str
    n_matched: int
    n_pivots: int
    correlations: list[float]
    heldout: list[float]
    components: list[int]


@dataclass(eq=False)
class LearnedLinks:
    """Links learned between two modalities: the chosen canonical directions and how they were found.

    Attributes
    ----------
    source_modality, target_modality
        Modality names.
    source_features, target_features
        The input features the projections read (the model's input features, in column order).
    projection
        The learned linked features as a :class:`LinkProjection`, one column per chosen canonical pair.
    components
        Indices of the chosen canonical pairs in the final CCA (strongest first).
    correlations, heldout_correlations
        Their canonical correlations on the training and on the held-out pivots.
    source_loadings, target_loadings
        ``(d_s, K)`` and ``(d_t, K)``: correlation of each input feature with each chosen canonical score over
        the training pivots (structure coefficients: which features a direction is made of).
    history
        One :class:`LearnRound` per round (of the chosen candidate).
    initial
        What the first pivots were matched on: ``"links"``, ``"transport"`` or ``"fused transport"``.
    settings
        The settings used.
    quality
        Alignment quality of the result on the quality cells (:func:`~cellweave.links.transport.alignment_quality`).
    agreement
        Agreement of the best alignments of two transport samples of the chosen geometry
        (:func:`~cellweave.links.transport.partner_agreement`; NaN when the first pivots came from the links).
    candidates
        The transport settings tried (empty when the first pivots came from the links alone).
    distortion
        GW distortion of the chosen coupling (loss relative to the independent coupling's; NaN without transport).
    """

    source_modality: str
    target_modality: str
    source_features: list[str]
    target_features: list[str]
    projection: LinkProjection
    components: np.ndarray
    correlations: np.ndarray
    heldout_correlations: np.ndarray
    source_loadings: np.ndarray
    target_loadings: np.ndarray
    history: list[LearnRound]
    initial: str
    settings: LearnSettings = field(default_factory=LearnSettings)
    quality: float = float("nan")
    agreement: float = float("nan")
    candidates: list[Candidate] = field(default_factory=list)
    distortion: float = float("nan")

    @property
    def reliable(self) -> bool:
        """False when the alignment quality is below ``settings.min_quality`` or two transport samples disagree
        (agreement below ``settings.min_agreement``)."""
        return not (self.quality < self.settings.min_quality or self.agreement < self.settings.min_agreement)

    @property
    def pair(self) -> tuple[str, str]:
        """``(source_modality, target_modality)``."""
        return self.source_modality, self.target_modality

    def summary(self) -> str:
        """A printable account: pivots and correlations per round, and the chosen pairs."""
        lines = [(f"learned links {self.source_modality} -> {self.target_modality}: {len(self.components)} canonical "
                  f"pairs chosen, first pivots from {self.initial}, alignment quality {self.quality:.3f}, "
                  f"agreement {self.agreement:.3f}, GW distortion {self.distortion:.3f}"
                  + ("" if self.reliable else f" (UNRELIABLE: quality below {self.settings.min_quality} or agreement "
                                              f"below {self.settings.min_agreement})"))]
        for c in self.candidates:
            lines.append(f"  transport sample {c.sample} {c.metric} k={c.neighbors}: GW loss {c.gw_loss:.4g}, "
                         f"distortion {c.distortion:.3f}, quality {c.quality:.3f}")
        for r in self.history:
            corr = " ".join(f"{c:.2f}" for c in r.correlations[:8])
            held = " ".join(f"{c:.2f}" for c in r.heldout[:8])
            lines.append(f"  round {r.iteration} ({r.matched_on}): {r.n_matched} matched, {r.n_pivots} pivots; "
                         f"r = {corr}; held-out r = {held}; chosen {len(r.components)}")
        return "\n".join(lines)

    def feature_links(self, top: int = 1) -> FeatureLinks:
        """Each source feature's ``top`` most associated target features through the chosen canonical pairs.

        The association of source feature ``i`` and target feature ``j`` is
        ``sum_k L_s[i, k] * r_k * L_t[j, k]`` (loadings ``L``, held-out correlations ``r`` floored at 0): the
        correlation the canonical pairs explain between the two features. Scored in blocks of source rows.

        Parameters
        ----------
        top
            Targets kept per source feature.

        Returns
        -------
        FeatureLinks
            ``kind="learned"``, weights = association (targets of one source feature averaged, ``reduce="mean"``).
        """
        if top < 1:
            raise InputError("learned links", "top", f"top={top} is not positive", "pass top >= 1")
        top = min(top, len(self.target_features))
        weighted = self.target_loadings * np.clip(self.heldout_correlations, 0.0, None)
        rows = []
        for a in range(0, len(self.source_features), _SCORE_BLOCK):
            score = self.source_loadings[a:a + _SCORE_BLOCK] @ weighted.T
            best = np.argsort(-score, axis=1, kind="stable")[:, :top]
            for i, js in enumerate(best, start=a):
                rows += [(self.source_features[i], self.target_features[j], float(score[i - a, j])) for j in js]
        table = pd.DataFrame(rows, columns=["source_feature", "target_feature", "weight"])
        table = table[table["weight"] > 0]
        return FeatureLinks(self.source_modality, self.target_modality, table, kind="learned", reduce="mean")

    # ---- storage -----------------------------------------------------------------------------------------
    @staticmethod
    def file_name(source_modality: str, target_modality: str) -> str:
        """``<source>__<target>.npz``: the file :meth:`save` writes in a directory."""
        return f"{source_modality}__{target_modality}.npz"

    def save(self, directory: str | os.PathLike) -> Path:
        """Write to ``directory/<source>__<target>.npz`` (arrays) and a ``.json`` report beside it, atomically.

        Returns
        -------
        Path
            The ``.npz`` file (:meth:`load` reads it back).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"source_modality": self.source_modality, "target_modality": self.target_modality,
                "initial": self.initial, "settings": asdict(self.settings),
                "history": [asdict(r) for r in self.history], "quality": self.quality, "agreement": self.agreement,
                "candidates": [asdict(c) for c in self.candidates], "distortion": self.distortion}
        p = self.projection
        arrays = {"source_projection": p.source, "target_projection": p.target, "source_offset": p.source_offset,
                  "target_offset": p.target_offset, "components": self.components, "correlations": self.correlations,
                  "heldout_correlations": self.heldout_correlations, "source_loadings": self.source_loadings,
                  "target_loadings": self.target_loadings,
                  "source_features": np.asarray(self.source_features, dtype=str),
                  "target_features": np.asarray(self.target_features, dtype=str)}
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        path = directory / self.file_name(self.source_modality, self.target_modality)
        atomic_write_bytes(path, buf.getvalue())
        report = meta | {"components": self.components.tolist(), "correlations": self.correlations.tolist(),
                         "heldout_correlations": self.heldout_correlations.tolist(),
                         "n_source_features": len(self.source_features), "n_target_features": len(self.target_features)}
        atomic_write_bytes(path.with_suffix(".json"), json.dumps(report, indent=2).encode())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LearnedLinks:
        """Read a file written by :meth:`save`.

        Raises
        ------
        InputError
            When the file is absent or not a learned-links file.
        """
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes().decode())
                a = {k: z[k] for k in z.files if k != "meta"}
        except FileNotFoundError:
            raise InputError(path, "learned links", "no such file", "learn the links first (fit with links='learn')") from None
        except (KeyError, ValueError, OSError) as exc:
            raise InputError(path, "learned links", f"not a learned-links file ({exc})", "learn the links again") from None
        projection = LinkProjection(a["source_projection"], a["target_projection"], a["source_offset"], a["target_offset"])
        return cls(meta["source_modality"], meta["target_modality"], a["source_features"].tolist(),
                   a["target_features"].tolist(), projection, a["components"], a["correlations"],
                   a["heldout_correlations"], a["source_loadings"], a["target_loadings"],
                   [LearnRound(**r) for r in meta["history"]], meta["initial"], LearnSettings(**meta["settings"]),
                   meta["quality"], meta["agreement"], [Candidate(**c) for c in meta["candidates"]],
                   meta.get("distortion", float("nan")))


@dataclass
class _Sample:
    """A modality's sampled cells: input rows ``x``, the PCA fitted on the whole store and the reduced rows."""

    x: np.ndarray
    reduction: Reduction

    def __post_init__(self) -> None:
        self.reduced = (self.x - self.reduction.mean) @ self.reduction.components.T

    def take(self, rows: np.ndarray) -> _Sample:
        """The cells at ``rows``."""
        return _Sample(self.x[rows], self.reduction)


def _sample(stream: CellStream, n_cells: int, n_pca: int, rng: np.random.Generator, progress: bool) -> _Sample:
    """The PCA of the stream's input rows over the whole store, and ``n_cells`` of its cells drawn uniformly."""
    store, reader = stream.store, stream.reader
    features = reader.feature_names
    pp = reader.preprocess or Preprocess(normalize=False, scale=False, max_value=None)
    reduction = load_or_fit(store, "pca", progress=progress, n_components=min(n_pca, len(features), store.n_obs),
                            features=features, preprocess=pp)
    rows = np.arange(store.n_obs) if stream.rows is None else np.unique(stream.rows)
    wanted = np.sort(rng.choice(rows, min(n_cells, len(rows)), replace=False))
    sample = CellStream(store, _SAMPLE_BATCH, shuffle=False, rows=wanted, preprocess=reader.preprocess,
                        stats=reader.stats, rank=0, world_size=1)
    bar = tqdm(sample, desc=f"sample {store.modality}", unit="batches", disable=not progress)
    return _Sample(np.concatenate([b.dense().float().cpu().numpy() for b in bar]), reduction)


def _shared_standardized(a: np.ndarray, b: np.ndarray, what: str, source: str, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Columns z-scored within each modality; columns constant in either modality are left out."""
    sa, sb = a.std(0), b.std(0)
    keep = (sa > 1e-8) & (sb > 1e-8)
    if not keep.any():
        raise InputError(f"learn {source} -> {target}", what, f"no pivots can be found: none of the {a.shape[1]} {what} "
                         "varies over the sampled cells of both modalities",
                         "give more (or expressed) shared markers in the links table, or learn without a table "
                         "(SCMODAL links='learn') to match the modalities' cluster geometries")
    return (a[:, keep] - a[:, keep].mean(0)) / sa[keep], (b[:, keep] - b[:, keep].mean(0)) / sb[keep]


def _column_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``a`` with the same column of ``b`` (0 for a constant column)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return np.divide((a * b).sum(0), den, out=np.zeros(a.shape[1]), where=den > 0)


def _loadings(x: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``(d, K)`` correlations of every input column with every score column."""
    xc = x - x.mean(0)
    sc = scores - scores.mean(0)
    den = np.outer(np.sqrt((xc * xc).sum(0)), np.sqrt((sc * sc).sum(0)))
    return np.divide(xc.T @ sc, den, out=np.zeros(den.shape), where=den > 0)


def _fit_round(x: np.ndarray, y: np.ndarray, cfg: LearnSettings, rng: np.random.Generator) -> tuple[CCAFit, np.ndarray]:
    """CCA on a training share of the paired rows ``x[i] <-> y[i]``; returns the fit and the held-out correlations."""
    order = rng.permutation(len(x))
    n_held = max(3, round(cfg.holdout * len(x)))
    held, train = np.sort(order[:n_held]), np.sort(order[n_held:])
    fit = fit_cca(x[train], y[train], cfg.n_components, cfg.ridge)
    return fit, _column_corr(fit.transform_x(x[held]), fit.transform_y(y[held]))


def _linked_features(s: _Sample, t: _Sample, links: FeatureLinks | None,
                     features: tuple[list[str], list[str]]) -> tuple[np.ndarray, np.ndarray] | None:
    """The sampled cells' linked features (``x_s[:, cols]``, ``x_t @ W.T``), or None without any present link."""
    if links is None:
        return None
    cols, W = links.to_matrix(*features, sparse=False)
    if not len(cols):
        return None
    return s.x[:, cols].astype(np.float64), t.x @ np.asarray(W, dtype=np.float64).T


@dataclass
class _Fit:
    """The outcome of one run of rounds: the last CCA, its chosen pairs and held-out correlations, the history."""

    fit: CCAFit
    chosen: np.ndarray
    heldout: np.ndarray
    history: list[LearnRound]
    quality: float = float("nan")
    agreement: float = float("nan")
    distortion: float = float("nan")


def _rounds(s: _Sample, t: _Sample, first: tuple[np.ndarray, np.ndarray], matched_on: str, n_matched: int,
            graphs: list[np.ndarray | None], cfg: LearnSettings, rng: np.random.Generator,
            names: tuple[str, str]) -> _Fit:
    """CCA of the first pivots' reduced rows ``first``, then ``n_iter`` rounds of matching on canonical scores."""
    x, y = first
    history: list[LearnRound] = []
    for it in range(cfg.n_iter + 1):
        if len(x) < MIN_PIVOTS:
            raise InputError(f"learn {names[0]} -> {names[1]}", "pivots", f"only {len(x)} pivots remain from {len(s.x)} and {len(t.x)} sampled "
                             f"cells ({MIN_PIVOTS} needed)", "sample more cells (n_cells) or drop fewer pivots (drop)")
        fit, heldout = _fit_round(x, y, cfg, rng)
        chosen = np.flatnonzero(heldout >= cfg.min_correlation)
        history.append(LearnRound(it, matched_on, n_matched, len(x), fit.correlations.round(4).tolist(),
                                  heldout.round(4).tolist(), chosen.tolist()))
        if it == cfg.n_iter:
            break
        use = chosen if len(chosen) else np.arange(1)
        scores = [fit.transform_x(s.reduced)[:, use], fit.transform_y(t.reduced)[:, use]]
        fa, fb = (v if g is None else smooth(v, g) for v, g in zip(scores, graphs))
        matched = match_blocks(*_shared_standardized(fa, fb, "canonical scores", *names),
                               cfg.block_size, rng)
        pivots = drop_worst(matched, cfg.drop)
        x, y, n_matched, matched_on = s.reduced[pivots.source], t.reduced[pivots.target], len(matched), "cca"
    return _Fit(fit, chosen, heldout, history)


def _quality(res: _Fit, s: _Sample, t: _Sample, geometry: tuple[np.ndarray, np.ndarray]) -> float:
    """Alignment quality of a fit's chosen canonical pairs on the quality cells ``s``, ``t``."""
    return alignment_quality(*_shared(res, s, t), *geometry)


def _transport_fits(s: _Sample, t: _Sample, linked: tuple[np.ndarray, np.ndarray] | None,
                    graphs: list[np.ndarray | None], qs: _Sample, qt: _Sample, geometry: tuple[np.ndarray, np.ndarray],
                    cfg: LearnSettings, rng: np.random.Generator, names: tuple[str, str],
                    progress: bool) -> tuple[_Fit, list[Candidate]]:
    """Every transport sample x geometry, run through the rounds and scored; the fit of least distortion (with its
    agreement with the best fit of another sample) and every candidate's scores."""
    n_ot = min(cfg.ot_cells, len(s.x), len(t.x))
    samples = [(stratified_sample(s.reduced, n_ot, rng), stratified_sample(t.reduced, n_ot, rng))
               for _ in range(cfg.ot_samples)]
    geometries = [(m, int(k)) for m in dict.fromkeys(cfg.ot_metric) for k in dict.fromkeys(cfg.ot_neighbors)]
    matched_on = "transport" if linked is None else "fused transport"
    rounds_cfg = replace(cfg, n_components=min(cfg.n_components, cfg.ot_components), ridge=cfg.ot_ridge)
    fits: list[tuple[int, float, _Fit]] = []
    candidates = []
    bar = tqdm(total=len(samples) * len(geometries), desc=f"transport {names[0]} -> {names[1]}", disable=not progress)
    for j, (ia, ib) in enumerate(samples):
        cost = None if linked is None else feature_cost(linked[0][ia], linked[1][ib])
        for metric, k in geometries:
            ca, cb = cell_distances(s.reduced[ia], metric, k), cell_distances(t.reduced[ib], metric, k)
            gw = gromov_wasserstein(ca, cb, cfg.ot_epsilon, cfg.ot_starts, rng, feature_cost=cost,
                                    alpha=cfg.fused_alpha)
            res = _rounds(s, t, (s.reduced[ia], barycentric(gw.coupling, t.reduced[ib])), matched_on, len(ia),
                          graphs, rounds_cfg, rng, names)
            res.quality = _quality(res, qs, qt, geometry)
            fits.append((j, gw.distortion, res))
            candidates.append(Candidate(j, metric, k, round(gw.loss, 6), round(gw.distortion, 4),
                                        round(res.quality, 4)))
            bar.update()
    bar.close()
    # the geometry both modalities share best (least mean distortion), then its sample of best quality
    shared = {g: np.mean([d for (_, d, _), c in zip(fits, candidates) if (c.metric, c.neighbors) == g])
              for g in geometries}
    keep = min(geometries, key=shared.__getitem__)
    mine = sorted((f for f, c in zip(fits, candidates) if (c.metric, c.neighbors) == keep), key=lambda f: -f[2].quality)
    best = mine[0]
    if len(mine) > 1:  # the same geometry's best alignment of another sample: do both give the same partners?
        best[2].agreement = partner_agreement(_shared(best[2], qs, qt), _shared(mine[1][2], qs, qt), geometry[1])
    best[2].distortion = best[1]
    return best[2], candidates


def _shared(res: _Fit, s: _Sample, t: _Sample) -> tuple[np.ndarray, np.ndarray]:
    """Cells' coordinates on a fit's chosen canonical pairs."""
    use = res.chosen if len(res.chosen) else np.arange(1)
    return res.fit.transform_x(s.reduced)[:, use], res.fit.transform_y(t.reduced)[:, use]


def learn(source: CellStream, target: CellStream, links: FeatureLinks | None = None, *,
          settings: LearnSettings | Mapping[str, Any] | None = None, seed: int = 0,
          progress: bool = False) -> LearnedLinks:
    """Learn linked features of two modalities from weak links, or from none (see the module notes).

    Parameters
    ----------
    source, target
        Streams of the two modalities' input rows, as the model sees them (features selected, normalised,
        scaled). Each store is read once for its PCA (unless one with these settings is kept beside the data),
        then only the sampled cells are read.
    links
        Weak links from ``source`` to ``target`` (a few shared markers); their smoothed linked features give the
        first pivots. None, or no linked feature among the inputs: the first pivots come from matching the two
        modalities' cluster geometries.
    settings
        :class:`LearnSettings` or a mapping of its fields.
    seed
        Decides the sampled cells, the clusterings, the matching blocks and the held-out pivots.
    progress
        Show progress of the sampling pass.

    Returns
    -------
    LearnedLinks
        The projection of the chosen canonical pairs, their correlations, pivot counts per round.

    Raises
    ------
    InputError
        When the linked features do not vary over the sampled cells, too few pivots remain, a covariance is
        singular (use a ridge), no canonical pair holds up on the held-out pivots, or the links name other
        modalities.
    """
    cfg = settings if isinstance(settings, LearnSettings) else LearnSettings.from_dict(settings or {})
    cfg.checked()
    s_name, t_name = source.store.modality, target.store.modality
    where = f"learn {s_name} -> {t_name}"
    if links is not None and links.pair != (s_name, t_name):
        raise InputError(where, "links", f"the links go {links.source_modality} -> {links.target_modality}",
                         f"pass links from {s_name} to {t_name}")
    rng = np.random.default_rng([seed, 7])
    s_all = _sample(source, cfg.n_cells, cfg.n_pca, rng, progress)
    t_all = _sample(target, cfg.n_cells, cfg.n_pca, rng, progress)
    n_q = min(cfg.quality_cells, len(s_all.x) // 4, len(t_all.x) // 4)
    held = [stratified_sample(x.reduced, n_q, rng) for x in (s_all, t_all)]
    qs, qt = s_all.take(held[0]), t_all.take(held[1])
    if min(len(s_all.x), len(t_all.x)) - n_q >= cfg.ot_cells:  # held out; small data: every cell is fitted too
        s, t = (x.take(np.setdiff1d(np.arange(len(x.x)), h)) for x, h in zip((s_all, t_all), held))
    else:
        s, t = s_all, t_all
    geometry = (geodesic_distances(qs.reduced, QUALITY_NEIGHBORS), geodesic_distances(qt.reduced, QUALITY_NEIGHBORS))
    features = (source.reader.feature_names, target.reader.feature_names)
    linked = _linked_features(s, t, links, features)
    graphs = [neighbor_graph(x.reduced, cfg.smooth_k) if cfg.smooth_k > 0 else None for x in (s, t)]
    if linked is not None:
        linked = _shared_standardized(*(v if g is None else smooth(v, g) for v, g in zip(linked, graphs)),
                                      "linked features", s_name, t_name)
    candidates: list[Candidate] = []
    if linked is not None and cfg.first_pivots == "links":
        initial = "links"
        matched = match_blocks(*linked, cfg.block_size, rng)
        pivots = drop_worst(matched, cfg.drop)
        res = _rounds(s, t, (s.reduced[pivots.source], t.reduced[pivots.target]), initial, len(matched), graphs,
                      cfg, rng, (s_name, t_name))
        res.quality = _quality(res, qs, qt, geometry)
    else:
        initial = "transport" if linked is None else "fused transport"
        res, candidates = _transport_fits(s, t, linked, graphs, qs, qt, geometry, cfg, rng, (s_name, t_name),
                                          progress)
    if not len(res.chosen):
        raise InputError(where, "canonical pairs", f"no canonical pair holds up on the held-out pivots (best held-out "
                         f"correlation {res.heldout.max():.2f} < min_correlation {cfg.min_correlation})",
                         "give more shared markers, or lower min_correlation")
    out = _result(s, t, res, initial, features, (s_name, t_name), cfg, candidates)
    if not out.reliable:
        msg = (f"{where}: the learned alignment is unreliable (quality {out.quality:.3f}, min_quality "
               f"{cfg.min_quality}: matched held-out cells keep little of the modalities' geometries; agreement of two "
               f"independent samples {out.agreement:.3f}, min_agreement {cfg.min_agreement}); cell types may be "
               "swapped. Give a few shared markers (a links table), sample more cells (n_cells, ot_cells) or check "
               "the inputs")
        warnings.warn(msg, UnreliableAlignmentWarning, stacklevel=2)
        log.warning(msg)
    return out


def _result(s: _Sample, t: _Sample, res: _Fit, initial: str, features: tuple[list[str], list[str]],
            names: tuple[str, str], cfg: LearnSettings, candidates: list[Candidate]) -> LearnedLinks:
    """Fold the chosen canonical directions through each PCA into projections of the input features."""
    fit, chosen = res.fit, res.chosen
    maps = []
    for sample, weights, mean in ((s, fit.x_weights, fit.x_mean), (t, fit.y_weights, fit.y_mean)):
        red = sample.reduction
        w = weights[:, chosen]
        maps.append((red.components.T @ w, -(red.mean @ red.components.T + mean) @ w))
    projection = LinkProjection(maps[0][0].astype(np.float32), maps[1][0].astype(np.float32),
                                maps[0][1].astype(np.float32), maps[1][1].astype(np.float32))
    u = fit.transform_x(s.reduced)[:, chosen]
    v = fit.transform_y(t.reduced)[:, chosen]
    return LearnedLinks(names[0], names[1], list(features[0]), list(features[1]), projection, chosen,
                        fit.correlations[chosen], res.heldout[chosen], _loadings(s.x, u), _loadings(t.x, v),
                        res.history, initial, cfg, float(res.quality), float(res.agreement), candidates,
                        float(res.distortion))
