"""Learned feature links: canonical directions shared by two modalities, found from matched cell pairs.

Designed after MaxFuse (Chen et al. 2023), on bounded memory:

1. **Reduce and sample.** A PCA of each modality's input features (the stream's features and transform) is fitted
   out of core over the whole store (:func:`cellweave.reduce.load_or_fit`, kept beside the data), and a uniform
   subsample of ``n_cells`` cells is read.
2. **First pivots.** Cells are matched one to one (:func:`~cellweave.links.pivots.match_blocks`: linear
   assignment in random blocks, never an ``N x M`` matrix) on the weak linked features (a handful of shared
   markers), each smoothed over the cell's nearest neighbours within its modality. Without any linked feature,
   the two modalities' cluster geometries are matched by Gromov-Wasserstein transport
   (:func:`~cellweave.links.geometry.match_geometry`). The worst-matched share is dropped.
3. **CCA.** Regularised CCA (:func:`~cellweave.links.cca.fit_cca`) of the pivots' reduced features, fitted on
   a training share of the pivots; each canonical pair's correlation is also measured on the held-out share,
   and the pairs that hold up there (``>= min_correlation``) are chosen.
4. **Refine.** Cells are re-matched on their smoothed scores of the chosen pairs, the worst matches dropped, and
   CCA refitted, ``n_iter`` times.

The chosen canonical directions, folded through the PCA, become one :class:`LinkProjection` of each modality's
input features: the learned linked features a model uses to find anchors.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
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
from .geometry import match_geometry
from .pivots import Pivots, drop_worst, match_blocks, neighbor_graph, smooth
from .projection import LinkProjection

#: Fewest pivots kept after filtering for a CCA fit.
MIN_PIVOTS = 20
#: Source rows scored at a time in :meth:`LearnedLinks.feature_links`.
_SCORE_BLOCK = 1024
#: Cells read at a time when sampling.
_SAMPLE_BATCH = 4096


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
        Share of the worst-matched pivots dropped in every round.
    ridge
        CCA ridge, as a share of each covariance's mean variance.
    holdout
        Share of the pivots held out of each CCA fit to measure its correlations.
    min_correlation
        Held-out canonical correlation a pair needs to be chosen.
    n_clusters, gw_starts
        Without linked features: clusters per modality and Gromov-Wasserstein starts of the first matching.
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
    n_clusters: int = 30
    gw_starts: int = 20

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "learn settings") -> LearnSettings:
        """Build from a (TOML) mapping; an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(source, unknown[0], "unknown learned-links setting", f"use one of: {', '.join(sorted(known))}")
        return cls(**values).checked(source)

    def checked(self, source: str = "learn settings") -> LearnSettings:
        """``self`` when every setting is in range, else :class:`InputError` naming the first bad one."""
        rules = [("n_components", self.n_components >= 1, ">= 1"), ("n_pca", self.n_pca >= 1, ">= 1"),
                 ("n_cells", self.n_cells >= 2 * MIN_PIVOTS, f">= {2 * MIN_PIVOTS}"),
                 ("block_size", self.block_size >= 2, ">= 2"), ("smooth_k", self.smooth_k >= 0, ">= 0"),
                 ("n_iter", self.n_iter >= 0, ">= 0"), ("drop", 0 <= self.drop < 1, "in [0, 1)"),
                 ("ridge", self.ridge >= 0, ">= 0"), ("holdout", 0 < self.holdout < 1, "in (0, 1)"),
                 ("min_correlation", -1 <= self.min_correlation <= 1, "in [-1, 1]"),
                 ("n_clusters", self.n_clusters >= 2, ">= 2"), ("gw_starts", self.gw_starts >= 1, ">= 1")]
        for name, ok, want in rules:
            if not ok:
                raise InputError(source, name, f"{name}={getattr(self, name)!r} is out of range", f"set {name} {want}")
        return self


@dataclass(frozen=True)
class LearnRound:
    """One round of :func:`learn`: what the cells were matched on, how many pivots, the CCA it gave.

    Attributes
    ----------
    iteration
        0 for the first pivots, then 1 .. ``n_iter``.
    matched_on
        ``"links"``, ``"geometry"`` or ``"cca"`` (the previous round's chosen canonical scores).
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
        One :class:`LearnRound` per round.
    initial
        What the first pivots were matched on: ``"links"`` or ``"geometry"``.
    settings
        The settings used.
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

    @property
    def pair(self) -> tuple[str, str]:
        """``(source_modality, target_modality)``."""
        return self.source_modality, self.target_modality

    def summary(self) -> str:
        """A printable account: pivots and correlations per round, and the chosen pairs."""
        lines = [(f"learned links {self.source_modality} -> {self.target_modality}: {len(self.components)} canonical "
                  f"pairs chosen, first pivots from {self.initial}")]
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
                "history": [asdict(r) for r in self.history]}
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
                   [LearnRound(**r) for r in meta["history"]], meta["initial"], LearnSettings(**meta["settings"]))


@dataclass
class _Sample:
    """A modality's sampled cells: input rows ``x``, the PCA fitted on the whole store and the reduced rows."""

    x: np.ndarray
    reduction: Reduction

    def __post_init__(self) -> None:
        self.reduced = (self.x - self.reduction.mean) @ self.reduction.components.T


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


def _fit_round(s: _Sample, t: _Sample, pivots: Pivots, cfg: LearnSettings,
               rng: np.random.Generator) -> tuple[CCAFit, Pivots, np.ndarray]:
    """CCA on a training share of ``pivots``; returns the fit, the training pivots and the held-out correlations."""
    order = rng.permutation(len(pivots))
    n_held = max(3, round(cfg.holdout * len(pivots)))
    held, train = pivots.take(np.sort(order[:n_held])), pivots.take(np.sort(order[n_held:]))
    fit = fit_cca(s.reduced[train.source], t.reduced[train.target], cfg.n_components, cfg.ridge)
    heldout = _column_corr(fit.transform_x(s.reduced[held.source]), fit.transform_y(t.reduced[held.target]))
    return fit, train, heldout


def _linked_features(s: _Sample, t: _Sample, links: FeatureLinks | None,
                     features: tuple[list[str], list[str]]) -> tuple[np.ndarray, np.ndarray] | None:
    """The sampled cells' linked features (``x_s[:, cols]``, ``x_t @ W.T``), or None without any present link."""
    if links is None:
        return None
    cols, W = links.to_matrix(*features, sparse=False)
    if not len(cols):
        return None
    return s.x[:, cols].astype(np.float64), t.x @ np.asarray(W, dtype=np.float64).T


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
    s = _sample(source, cfg.n_cells, cfg.n_pca, rng, progress)
    t = _sample(target, cfg.n_cells, cfg.n_pca, rng, progress)
    features = (source.reader.feature_names, target.reader.feature_names)
    shared = _linked_features(s, t, links, features)
    initial = "geometry" if shared is None else "links"
    graphs = [neighbor_graph(x.reduced, cfg.smooth_k) if cfg.smooth_k > 0 else None for x in (s, t)]
    history: list[LearnRound] = []
    matched_on = initial
    for it in range(cfg.n_iter + 1):
        if shared is None:
            matched, _ = match_geometry(s.reduced, t.reduced, cfg.n_clusters, cfg.gw_starts, rng)
        else:
            fa, fb = (v if g is None else smooth(v, g) for v, g in zip(shared, graphs))
            what = "linked features" if matched_on == "links" else "canonical scores"
            matched = match_blocks(*_shared_standardized(fa, fb, what, s_name, t_name), cfg.block_size, rng)
        pivots = drop_worst(matched, cfg.drop)
        if len(pivots) < MIN_PIVOTS:
            raise InputError(where, "pivots", f"only {len(pivots)} pivots remain from {len(s.x)} and {len(t.x)} sampled "
                             f"cells ({MIN_PIVOTS} needed)", "sample more cells (n_cells) or drop fewer pivots (drop)")
        fit, train, heldout = _fit_round(s, t, pivots, cfg, rng)
        chosen = np.flatnonzero(heldout >= cfg.min_correlation)
        history.append(LearnRound(it, matched_on, len(matched), len(pivots), fit.correlations.round(4).tolist(),
                                  heldout.round(4).tolist(), chosen.tolist()))
        use = chosen if len(chosen) else np.arange(1)
        shared = fit.transform_x(s.reduced)[:, use], fit.transform_y(t.reduced)[:, use]
        matched_on = "cca"
    if not len(chosen):
        raise InputError(where, "canonical pairs", f"no canonical pair holds up on the held-out pivots (best held-out "
                         f"correlation {heldout.max():.2f} < min_correlation {cfg.min_correlation})",
                         "give more shared markers, or lower min_correlation")
    return _result(s, t, fit, train, chosen, heldout, history, initial, features, (s_name, t_name), cfg)


def _result(s: _Sample, t: _Sample, fit: CCAFit, train: Pivots, chosen: np.ndarray, heldout: np.ndarray,
            history: list[LearnRound], initial: str, features: tuple[list[str], list[str]], names: tuple[str, str],
            cfg: LearnSettings) -> LearnedLinks:
    """Fold the chosen canonical directions through each PCA into projections of the input features."""
    maps = []
    for sample, weights, mean in ((s, fit.x_weights, fit.x_mean), (t, fit.y_weights, fit.y_mean)):
        red = sample.reduction
        w = weights[:, chosen]
        maps.append((red.components.T @ w, -(red.mean @ red.components.T + mean) @ w))
    projection = LinkProjection(maps[0][0].astype(np.float32), maps[1][0].astype(np.float32),
                                maps[0][1].astype(np.float32), maps[1][1].astype(np.float32))
    u = fit.transform_x(s.reduced[train.source])[:, chosen]
    v = fit.transform_y(t.reduced[train.target])[:, chosen]
    return LearnedLinks(names[0], names[1], list(features[0]), list(features[1]), projection, chosen,
                        fit.correlations[chosen], heldout[chosen], _loadings(s.x[train.source], u),
                        _loadings(t.x[train.target], v), history, initial, cfg)
