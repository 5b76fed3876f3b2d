"""scMODAL for notebook and CLI users: unpaired modalities streamed from their stores, integrated by GAN
alignment, MNN anchors on linked features, geometry preservation and cross-domain consistency.

>>> model = SCMODAL({"rna": "rna.zarr", "adt": "adt.zarr"}, links="auto")   # doctest: +SKIP
>>> model.fit(max_steps=10_000, run_dir="run")                               # doctest: +SKIP
>>> paths = model.embed()            # run/embeddings/<modality>.zarr, obsm['X_cellweave']  # doctest: +SKIP

Without a feature table, ``links="learn"`` matches the modalities' cluster geometries into cell pairs and learns
canonical directions shared by the modalities from them (:func:`cellweave.links.learn`); with a table,
``links_augment="learn"`` learns them from the table's pivots and uses them beside it. The learned projections
are saved in ``RUN/learned_links/`` and feed the MNN anchors in every training step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset

from ..data import CellBatch, CellStream, Preprocess, UnpairedStream
from ..errors import InputError
from ..links import (
    FeatureLinks,
    LearnedLinks,
    LearnSettings,
    auto_links,
    learn,
    read_links,
    require_links,
)
from ..train.distributed import on_rank_zero
from ..train.budget import AuthorsBudget
from ..train.trainer import TrainResult
from .base import EMBED_BATCH, EMBEDDING_KEY, IntegrationModel, SavesLinkTable
from .config import config_from_dict
from .inputs import StoreLike, checked_stats, modality_kind
from .scmodal_module import SCMODALModule, SCMODALWeights

if TYPE_CHECKING:
    from mudata import MuData

#: Where a run keeps its learned links (one ``<source>__<target>.npz`` and ``.json`` per modality pair).
LEARNED_DIR = "learned_links"
#: The ``links`` value that learns links without a table, and the ``links_augment`` value that adds them.
LEARN = "learn"
#: Values of :attr:`SCMODALConfig.link_view`.
LINK_VIEWS = ("block", "input")


@dataclass
class SCMODALConfig:
    """scMODAL settings; defaults follow the authors' code (see docs/methods/scmodal.md).

    Attributes
    ----------
    n_latent, hidden
        Latent width and hidden width of encoders/decoders (d -> 512 -> 20).
    batch_size
        Cells per modality per step (500).
    lr, weight_decay
        Adam settings (1e-3, 1e-3).
    d_steps
        Discriminator updates per generator update (5).
    k
        Neighbours for the minibatch MNN anchors (30).
    geo_threshold
        Cap of the geometry kernel cosine (0.975).
    init_std
        Networks initialised from ``N(0, 0.1^2)`` as in the authors' code; 0 keeps PyTorch's default.
    weights
        Loss weights: GAN 1, AE 10, cross-consistency 10, MNN 1, geometry 10.
    n_top_features
        Highly variable features kept per count modality, after the linked features (2000).
    max_value
        Clip of scaled values (10).
    link_view
        ``"input"`` (default): the MNN anchors are found on the model's scaled input columns of the linked
        features. ``"block"``: for each table pair of count modalities the linked columns are replaced by a
        *linked block*, as the authors' tutorial builds its shared block (each cell's linked features normalised
        to one common total over those features alone, log1p, standardised), and the anchors are found on it
        (better on a simulated atlas, worse on the 200 real CITE-seq cells: bench/RESULTS.md).
    learn
        Settings of the learned links (:class:`~cellweave.links.LearnSettings`), when links are learned.
    """

    n_latent: int = 20
    hidden: int = 512
    batch_size: int = 500
    lr: float = 1e-3
    weight_decay: float = 1e-3
    d_steps: int = 5
    k: int = 30
    geo_threshold: float = 0.975
    init_std: float = 0.1
    weights: SCMODALWeights = field(default_factory=SCMODALWeights)
    n_top_features: int = 2000
    max_value: float = 10.0
    link_view: str = "input"
    learn: LearnSettings = field(default_factory=LearnSettings)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> SCMODALConfig:
        """Build from a (TOML) mapping; unknown keys are an error naming the key."""
        values = dict(values)
        if "learn" in values and not isinstance(values["learn"], LearnSettings):
            values["learn"] = LearnSettings.from_dict(values["learn"], f"{source}: [model.learn]")
        return config_from_dict(cls, values, source, SCMODALWeights)


def resolve_links(stores: Mapping[str, Any], links: str | os.PathLike | Sequence[FeatureLinks] | None,
                  kinds: Mapping[str, str] | None = None, genes_bed: str | os.PathLike | None = None) -> dict[tuple[str, str], FeatureLinks]:
    """The links between the given modalities: ``"auto"`` (rules by modality kind), a TSV path, or given links.

    With a table, a modality it links to nothing gets the automatic rules instead (e.g. a protein -> gene TSV
    plus ``genes_bed`` for an ATAC modality).

    Raises
    ------
    InputError
        When a pair's links do not survive on the data, or a modality ends up linked to no other modality.
    """
    names = list(stores)

    def automatic() -> dict[tuple[str, str], FeatureLinks]:
        return auto_links({m: (modality_kind(m, kinds), list(stores[m].var_names)) for m in names}, genes_bed=genes_bed)

    if links is None or (isinstance(links, str) and links == "auto"):
        found = automatic()
    else:
        given = read_links(links, modalities=names) if isinstance(links, str | os.PathLike) else links
        found = {lk.pair: lk for lk in given if lk.pair[0] in stores and lk.pair[1] in stores}
        unlinked = set(names) - {m for pair in found for m in pair}
        if len(names) > 1 and unlinked and (genes_bed is not None or not any(modality_kind(m, kinds) == "atac" for m in unlinked)):
            found |= {p: lk for p, lk in automatic().items() if p not in found and unlinked & set(p)}
    found = {p: lk for p, lk in found.items() if p[0] in stores and p[1] in stores}
    for (s, t), lk in found.items():
        require_links(lk, 1, list(stores[s].var_names), list(stores[t].var_names))
    if len(names) > 1:
        linked = {m for pair in found for m in pair}
        for m in names:
            if m not in linked:
                raise InputError(stores[m].path, "links", f"modality {m!r} has no surviving feature links to any of "
                                 f"{[x for x in names if x != m]}",
                                 "pass --links FILE (TSV: source_modality, source_feature, target_modality, target_feature)")
    return found


class SCMODAL(SavesLinkTable, IntegrationModel):
    """scMODAL (Wang et al.): unpaired multi-modal integration, streamed.

    Parameters
    ----------
    modalities
        Modality name -> data (AnnData, path, store, tiledbsoma object; see :class:`IntegrationModel`), or a
        MuData. More than two modalities are aligned by chained discriminators in this order, with MNN anchors for
        every linked pair.
    links
        ``"auto"`` (protein panel names -> coding genes, peaks -> genes via ``genes_bed``, shared names), a TSV
        path (``source_modality, source_feature, target_modality, target_feature[, weight]``),
        :class:`~cellweave.links.FeatureLinks`, or ``"learn"``: no table, links learned between consecutive
        modalities from cell pairs that match their cluster geometries.
    links_augment
        ``"learn"``: learn links for every pair of the table too (first pivots from the table's features) and use
        both; None: the table alone.
    config
        :class:`SCMODALConfig` or a mapping of its fields.
    kinds
        Modality kinds (``{"prot": "adt"}``), used by ``links="auto"``; default: by name, as documented in
        :mod:`cellweave.models.inputs` (``rna``, ``adt``, ``atac`` ...); another name without an entry is an error.
    genes_bed
        Gene coordinates for ATAC -> RNA links.
    label_key
        Obs column carried along the stream (for label transfer reports).
    seed
        The one seed.
    progress
        Show progress of the preprocessing pass.
    """

    method = "scmodal"
    least_epochs = 100  # bench/RESULTS.md: on 10k cells per modality its matching improves up to 100 passes
    authors_budget = AuthorsBudget(steps=10_000)  # the authors' 10,000 steps
    grad_clip = 5.0  # the authors clip the encoders'/decoders' gradient norm at 5

    def __init__(self, modalities: Mapping[str, StoreLike] | MuData, links: str | os.PathLike | Sequence[FeatureLinks] | None = "auto",
                 config: SCMODALConfig | Mapping[str, Any] | None = None, kinds: Mapping[str, str] | None = None,
                 genes_bed: str | os.PathLike | None = None, label_key: str | None = None, seed: int = 0,
                 progress: bool = False, links_augment: str | None = None) -> None:
        super().__init__(modalities, seed)
        self.config = config if isinstance(config, SCMODALConfig) else SCMODALConfig.from_dict(config or {})
        self.config.learn.checked("SCMODAL config: learn")
        if self.config.link_view not in LINK_VIEWS:
            raise InputError(type(self).__name__, "link_view", f"unknown link_view {self.config.link_view!r}",
                             f"use one of {list(LINK_VIEWS)}")
        self.kinds = dict(kinds or {})
        self.genes_bed = None if genes_bed is None else str(Path(genes_bed).resolve())
        self.label_key = label_key
        self.links_spec = links if isinstance(links, str | os.PathLike) or links is None else "given"
        self.links_augment = links_augment
        learn_only = isinstance(links, str) and links == LEARN
        if links_augment not in (None, LEARN) or (learn_only and links_augment is not None):
            raise InputError(type(self).__name__, "links_augment", f"links_augment={links_augment!r} with links={self.links_spec!r}",
                             "pass links_augment='learn' with a links table (or 'auto'), or leave it unset")
        if learn_only and len(self.stores) < 2:
            raise InputError(type(self).__name__, "links", "learned links need two or more modalities", "add a modality")
        self.stats = {m: checked_stats(s, self.config.n_top_features, progress) for m, s in self.stores.items()}
        self.links = {} if learn_only else resolve_links(self.stores, links, self.kinds, genes_bed)
        self.learn_pairs: list[tuple[str, str]] = (list(pairwise(self.stores)) if learn_only
                                                   else list(self.links) if links_augment == LEARN else [])
        self.learned: dict[tuple[str, str], LearnedLinks] = {}
        self.features = self._select_features()
        self.link_matrices = {pair: lk.to_matrix(self.features[pair[0]], self.features[pair[1]])
                              for pair, lk in self.links.items()}
        for (s, t), (cols, _) in self.link_matrices.items():
            if len(cols) == 0:
                raise InputError(f"links {s} -> {t}", "features", "no linked feature is among the selected input features",
                                 "raise n_top_features or check the links table")

    def _select_features(self) -> dict[str, list[str]]:
        """Linked features first, then the most variable ones (count modalities wider than ``n_top_features``)."""
        linked: dict[str, list[str]] = {m: [] for m in self.stores}
        for (s, t), lk in self.links.items():
            for m, col in ((s, "source_feature"), (t, "target_feature")):
                present = set(self.stores[m].var_names)
                linked[m].extend(f for f in lk.table[col] if f in present)
        out = {}
        for m, store in self.stores.items():
            feats = list(dict.fromkeys(linked[m]))
            stats = self.stats[m]
            if store.kind == "counts" and store.n_vars > self.config.n_top_features and stats.hvg_rank is not None:
                keep = set(feats)
                feats += [f for f in stats.hvg(store.n_vars) if f not in keep][: max(self.config.n_top_features - len(feats), 0)]
            else:
                keep = set(feats)
                feats += [f for f in store.var_names if f not in keep]
            out[m] = feats
        return out

    # ---- IntegrationModel hooks ---------------------------------------------------------------------------
    def preprocess(self, modality: str) -> Preprocess:
        return Preprocess(features=self.features[modality], scale=True, max_value=self.config.max_value)

    def input_features(self, modality: str) -> list[str]:
        return list(self.features[modality])

    def stream_options(self, modality: str) -> dict[str, Any]:
        return {"stats": self.stats[modality]}

    def build_module(self) -> SCMODALModule:
        c = self.config
        return SCMODALModule({m: len(f) for m, f in self.features.items()}, self.link_matrices, n_latent=c.n_latent,
                             hidden=c.hidden, weights=c.weights, d_steps=c.d_steps, k=c.k, lr=c.lr,
                             weight_decay=c.weight_decay, geo_threshold=c.geo_threshold,
                             init_std=c.init_std, projections={p: lk.projection for p, lk in self.learned.items()},
                             **self._link_block_settings())

    def _link_block_settings(self) -> dict[str, dict]:
        """``link_spaces`` and ``link_targets`` of :class:`SCMODALModule` for ``link_view="block"``: each count
        modality's input centre and scale (as the stream applies them), and per table pair the common total,
        the smaller of the two modalities' mean raw totals over their linked features (the authors' tutorial
        takes the RNA side's median), at least 20."""
        if self.config.link_view != "block":
            return {}
        spaces, means = {}, {}
        for m, store in self.stores.items():
            if store.kind != "counts":
                continue
            stats = self.stats[m]
            src = pd.Index(store.var_names).get_indexer(self.features[m])
            sd = np.sqrt(stats.log_var[src])
            spaces[m] = (stats.log_mean[src], np.where(sd > 0, sd, 1.0))
            means[m] = np.asarray(stats.mean[src], dtype=np.float64)
        targets = {}
        for (s, t), (cols, W) in self.link_matrices.items():
            if s in spaces and t in spaces:
                totals = (float(means[s][cols].sum()), float(np.asarray(W @ means[t]).sum()))
                targets[(s, t)] = max(min(totals), 20.0)
        return {"link_spaces": spaces, "link_targets": targets}

    # ---- learned links ----------------------------------------------------------------------------------------
    def fit(self, max_steps: int | str = "auto", run_dir: str | os.PathLike | None = None, device: str = "auto", precision: str = "auto",
            resume: bool = False, progress: bool = True, **options: Any) -> TrainResult:
        """Learn the links first when asked (``links="learn"`` or ``links_augment="learn"``), then train.

        The learned links are saved in ``RUN/learned_links/`` before training; a resumed run reads them back
        instead of learning again. Parameters as for :meth:`IntegrationModel.fit`.
        """
        with self.hold_run(run_dir, options.get("overwrite", False), resume):  # the learned links go into the run too
            if self.learn_pairs:  # under torch.distributed rank 0 learns (or reads) them and hands them to every rank
                self.learned = on_rank_zero(lambda: self._run_learned_links(run_dir, resume, progress))
            return super().fit(max_steps, run_dir=run_dir, device=device, precision=precision, resume=resume,
                               progress=progress, **options)

    def load_weights(self, run_dir: str | os.PathLike, device: str = "cpu") -> None:
        """Load the run's learned links (when it learned any), then its trained weights."""
        folder = Path(run_dir) / LEARNED_DIR
        self.learned = {lk.pair: lk for lk in (LearnedLinks.load(folder / LearnedLinks.file_name(s, t))
                                               for s, t in self.learn_pairs)}
        super().load_weights(run_dir, device)

    def save_extras(self, directory: Path) -> None:
        """The resolved links table (``links.tsv``) and the learned links (``learned_links/``; read back by
        :meth:`load_weights`)."""
        super().save_extras(directory)
        for lk in self.learned.values():
            lk.save(directory / LEARNED_DIR)

    def _input_stream(self, modality: str) -> CellStream:
        """All cells of ``modality`` in store order, transformed as in training."""
        return CellStream(self.stores[modality], EMBED_BATCH, shuffle=False, preprocess=self.preprocess(modality),
                          stats=self.stats[modality], rank=0, world_size=1)

    def _run_learned_links(self, run_dir: str | os.PathLike | None, resume: bool,
                           progress: bool) -> dict[tuple[str, str], LearnedLinks]:
        """The run's learned links: read back when resuming, else learned for every pair of :attr:`learn_pairs`
        (first pivots from the table's features, or from geometry) and saved in ``RUN/learned_links``."""
        folder = None if run_dir is None else Path(run_dir) / LEARNED_DIR
        saved = [] if folder is None else [folder / LearnedLinks.file_name(s, t) for s, t in self.learn_pairs]
        if resume and saved and all(p.exists() for p in saved):
            return {lk.pair: lk for lk in map(LearnedLinks.load, saved)}
        learned = {(s, t): learn(self._input_stream(s), self._input_stream(t), self.links.get((s, t)),
                                 settings=self.config.learn, seed=self.seed, progress=progress)
                   for s, t in self.learn_pairs}
        if folder is not None:
            for lk in learned.values():
                lk.save(folder)
        return learned

    def train_stream(self) -> IterableDataset:
        c = self.config
        streams = {m: CellStream(s, min(c.batch_size, s.n_obs), seed=self.seed, preprocess=self.preprocess(m),
                                 stats=self.stats[m], drop_last=s.n_obs >= c.batch_size, label_key=None)
                   for m, s in self.stores.items()}
        return UnpairedStream(streams)

    def embed_batch(self, modality: str, batch: CellBatch) -> dict[str, torch.Tensor]:
        return {EMBEDDING_KEY: self.module.encode(modality, batch.dense())}

    def config_dict(self) -> dict[str, Any]:
        return {"method": self.method, "seed": self.seed, "inputs": dict(self.inputs), "kinds": self.kinds,
                "links": str(self.links_spec) if self.links_spec is not None else "auto", "genes_bed": self.genes_bed,
                "links_augment": self.links_augment,
                "learned_links": {f"{s}->{t}": {"components": len(lk.components),
                                                "heldout_correlations": lk.heldout_correlations.round(4).tolist()}
                                  for (s, t), lk in self.learned.items()},
                "model": asdict(self.config),
                "features": {m: {"n": len(f), "linked": {f"{s}->{t}": int(len(self.link_matrices[(s, t)][0]))
                                                          for (s, t) in self.links if m in (s, t)}}
                             for m, f in self.features.items()}}

    # ---- downstream -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def impute(self, source: str, target: str, features: Sequence[str] | None = None,
               out: str | os.PathLike | None = None, overwrite: bool = True) -> Path:
        """Cross-modal imputation ``G_target(E_source(x))`` for every cell of ``source``, streamed to a store.

        Values are in the target's input space (log-normalised, scaled). ``features`` picks target features
        (default: all the target's input features). Written as ``X`` of an AnnData Zarr store
        (default ``RUN/imputed/<source>_to_<target>.zarr``) whose obs are the source cells.
        """
        module = self._require_module().to(self.device).eval()
        for m in (source, target):
            if m not in self.stores:
                raise InputError(type(self).__name__, "modality", f"unknown modality {m!r}", f"use one of {list(self.stores)}")
        names = pd.Index(self.features[target])
        pick = np.arange(len(names)) if features is None else names.get_indexer(list(features))
        if (pick < 0).any():
            missing = [f for f, p in zip(features, pick) if p < 0][:5]
            raise InputError(f"imputation {source} -> {target}", "features", f"not among {target}'s input features: {missing}",
                             f"pick from the {len(names)} features of model.features[{target!r}]")
        cols = torch.as_tensor(pick, device=self.device)
        path = self.write_imputed(source, target, names[pick], out, overwrite,
                                  lambda b: module.translate(source, target, b.dense())[:, cols])
        module.train()
        return path

    @torch.no_grad()
    def feature_relationships(self, source: str, target: str) -> pd.DataFrame:
        """Correlation across ``source`` cells between each measured source feature and each imputed target feature.

        For proteins vs genes this recovers which genes track which proteins. Streamed: sums and cross-products
        are accumulated batch by batch (memory ``d_source x d_target``).

        Returns
        -------
        DataFrame
            ``source_feature, target_feature, r`` for every pair, highest ``r`` first.
        """
        module = self._require_module().to(self.device).eval()
        ds, dt = len(self.features[source]), len(self.features[target])
        acc = {k: torch.zeros(shape, dtype=torch.float64, device=self.device) for k, shape in
               (("sx", ds), ("sy", dt), ("sxx", ds), ("syy", dt), ("sxy", (ds, dt)))}
        n = 0
        for b in self.iter_batches(source):
            x = b.dense().double()
            y = module.translate(source, target, b.dense()).double()
            acc["sx"] += x.sum(0)
            acc["sy"] += y.sum(0)
            acc["sxx"] += (x * x).sum(0)
            acc["syy"] += (y * y).sum(0)
            acc["sxy"] += x.T @ y
            n += x.shape[0]
        module.train()
        cov = acc["sxy"] / n - torch.outer(acc["sx"], acc["sy"]) / n**2
        sdx = (acc["sxx"] / n - (acc["sx"] / n) ** 2).clamp_min(0).sqrt()
        sdy = (acc["syy"] / n - (acc["sy"] / n) ** 2).clamp_min(0).sqrt()
        r = (cov / torch.outer(sdx, sdy)).nan_to_num(0.0).cpu().numpy()
        table = pd.DataFrame({"source_feature": np.repeat(self.features[source], dt),
                              "target_feature": np.tile(self.features[target], ds), "r": r.ravel()})
        return table.sort_values("r", ascending=False, ignore_index=True)
