"""The sharded cell stream: a ``torch.utils.data.IterableDataset`` over modality stores.

Every epoch the cells' chunks are permuted globally with a seed built from (seed, epoch); the order is split
into equal shares for the DDP ranks (from ``torch.distributed`` when initialised) and, within a rank, into
whole batches for the DataLoader workers. Each worker reads its share in read-ahead blocks (one concurrent
read of many row ranges), shuffles cells within a block and cuts it into batches. Memory is bounded by
``block_size x prefetch`` per worker, never by the number of cells.

Modes: :class:`CellStream` (one modality), :class:`UnpairedStream` (one batch of each modality per step,
each modality with its own cursor and epoch), :class:`PairedStream` (modalities joined on cell id).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import InputError
from .batch import CellBatch
from .malloc import limit_malloc_arenas, release_free_memory
from .plan import Shard, batches_before, blocks, n_batches, rank_positions, shard_positions
from .preprocess import FeatureStats, Preprocess, lognormalize, load_or_compute_stats
from .store import CellChunk, ModalityStore


def read_rows(store: ModalityStore, rows: np.ndarray) -> CellChunk:
    """Read arbitrary rows (any order, repeats allowed) with one ranged read of the sorted unique rows."""
    uniq, inverse = np.unique(rows, return_inverse=True)
    if len(uniq) == 0:
        return store.read([])
    breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(uniq)]])
    ranges = [(int(uniq[s]), int(uniq[e - 1]) + 1) for s, e in zip(starts, ends)]
    return store.read(ranges).take(inverse)


def _codes(store: ModalityStore, key: str | None) -> tuple[np.ndarray | None, list[str]]:
    if key is None:
        return None, []
    cat = pd.Categorical(store.require_obs_key(key).astype(str))
    return cat.codes.astype(np.int64), [str(c) for c in cat.categories]


class ModalityReader:
    """Reads rows of one store and turns them into transformed :class:`CellBatch` es.

    Parameters
    ----------
    store
        The modality.
    preprocess
        Transform (normalize/log1p, feature subset, scale). ``None``: raw values.
    batch_key, label_key
        Obs columns returned as integer codes.
    feature_space
        Lay columns out in this shared feature space (e.g. the union over modalities); columns the store does
        not measure are zero and masked out.
    stats
        Precomputed statistics; loaded or computed beside the data when the transform needs them.
    """

    def __init__(self, store: ModalityStore, preprocess: Preprocess | None = None, batch_key: str | None = None,
                 label_key: str | None = None, feature_space: Sequence[str] | None = None,
                 stats: FeatureStats | None = None) -> None:
        self.store = store
        self.preprocess = preprocess
        self.batch_codes, self.batch_categories = _codes(store, batch_key)
        self.label_codes, self.label_categories = _codes(store, label_key)
        pp = preprocess
        if pp is not None and pp.needs_stats and stats is None:
            stats = load_or_compute_stats(store, pp.target_sum, hvg=pp.n_top_genes is not None)
        self.stats = stats
        names = store.var_names
        if pp is not None and pp.n_top_genes is not None:
            keep = stats.hvg(pp.n_top_genes)
        elif pp is not None and pp.features is not None:
            keep = list(pp.features)
            present = set(names)
            missing = [f for f in keep if f not in present]
            if missing:
                raise InputError(store.path, "var_names", f"{len(missing)} requested features are absent, e.g. {missing[:5]}",
                                 "request features the store has (see store.var_names)")
        else:
            keep = list(names)
        pos = names.get_indexer(keep)
        if feature_space is not None:
            space = pd.Index(feature_space)
            dst = space.get_indexer(keep)
            inside = dst >= 0
            if not inside.any():
                raise InputError(store.path, "var_names", "no feature of this modality is in the shared feature space",
                                 "link the modality's features to the others (a links table), or check feature names")
            self.src, self.dst, self.n_out = pos[inside], dst[inside], len(space)
            mask = np.zeros(len(space), dtype=bool)
            mask[self.dst] = True
            self.mask = torch.from_numpy(mask)
        else:
            self.src, self.dst, self.n_out, self.mask = pos, np.arange(len(pos)), len(pos), None
        present = getattr(store, "present", None)  # a store aligned to a run's features: recorded ones it lacks
        if present is not None and not present[self.src].all():
            mask = np.zeros(self.n_out, dtype=bool) if self.mask is None else self.mask.numpy().copy()
            mask[self.dst] = present[self.src]
            self.mask = torch.from_numpy(mask)
        self.identity_columns = self.n_out == store.n_vars and np.array_equal(self.src, np.arange(store.n_vars)) and np.array_equal(self.dst, self.src)
        self.center = self.scale = None
        if pp is not None and pp.scale:
            center = np.zeros(self.n_out, dtype=np.float32)
            scale = np.ones(self.n_out, dtype=np.float32)
            center[self.dst] = stats.log_mean[self.src]
            sd = np.sqrt(stats.log_var[self.src])
            scale[self.dst] = np.where(sd > 0, sd, 1.0)
            self.center, self.scale = torch.from_numpy(center), torch.from_numpy(scale)

    @property
    def n_vars(self) -> int:
        return self.n_out

    @property
    def feature_names(self) -> list[str]:
        """Names of the output columns (the shared space when one was given)."""
        out = np.array([""] * self.n_out, dtype=object)
        out[self.dst] = np.asarray(self.store.var_names)[self.src]
        return out.tolist()

    def _columns(self, X):
        if self.identity_columns:
            return X
        if sp.issparse(X):
            X = X[:, self.src]
            if not np.array_equal(self.dst, np.arange(len(self.dst))) or self.n_out != len(self.dst):
                X = sp.csr_matrix((X.data, self.dst[X.indices], X.indptr), shape=(X.shape[0], self.n_out))
                X.sort_indices()
            return X
        out = np.zeros((X.shape[0], self.n_out), dtype=np.float32)
        out[:, self.dst] = X[:, self.src]
        return out

    def transform(self, chunk: CellChunk) -> tuple[CellChunk, np.ndarray]:
        """Normalize/log1p and select columns; returns the transformed chunk and raw library sizes."""
        X = chunk.X
        library = np.asarray(X.sum(1), dtype=np.float32).ravel()
        pp = self.preprocess
        if pp is not None and pp.normalize and self.store.kind == "counts":
            X = lognormalize(X, library, pp.target_sum, log1p=True)
        X = self._columns(X)
        X = X.astype(np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
        return CellChunk(chunk.rows, chunk.obs_names, X), library

    def make_batch(self, chunk: CellChunk, library: np.ndarray) -> CellBatch:
        """Wrap transformed rows as a :class:`CellBatch`."""
        X = chunk.X
        rows = torch.from_numpy(chunk.rows)
        if sp.issparse(X):
            values = torch.from_numpy(X.data)
            crow, col = torch.from_numpy(X.indptr.astype(np.int64)), torch.from_numpy(X.indices.astype(np.int64))
        else:
            values, crow, col = torch.from_numpy(np.ascontiguousarray(X)), None, None
        pick = chunk.rows
        return CellBatch(
            modality=self.store.modality, obs_names=chunk.obs_names, rows=rows, values=values, crow_indices=crow,
            col_indices=col, n_vars=self.n_out, library_size=torch.from_numpy(library),
            batch=None if self.batch_codes is None else torch.from_numpy(self.batch_codes[pick]),
            label=None if self.label_codes is None else torch.from_numpy(self.label_codes[pick]),
            mask=self.mask, center=self.center, scale=self.scale,
            max_value=None if self.preprocess is None else self.preprocess.max_value,
        )

    def read_block(self, rows: np.ndarray, cuts: Sequence[int]) -> list[CellBatch]:
        """Read ``rows`` once, transform, and cut into batches at ``cuts`` (batch boundaries)."""
        chunk, library = self.transform(read_rows(self.store, rows))
        out = []
        for a, b in itertools.pairwise(cuts):
            sl = np.arange(a, b)
            out.append(self.make_batch(chunk.take(sl), library[a:b]))
        return out


def _stores(dataset: IterableDataset) -> list[ModalityStore]:
    if isinstance(dataset, UnpairedStream):
        return [s.store for s in dataset.streams.values()]
    if isinstance(dataset, PairedStream):
        return [r.store for r in dataset.readers.values()]
    return [dataset.store] if isinstance(dataset, CellStream) else []


def make_loader(dataset: IterableDataset, num_workers: int = 0, pin_memory: bool = False,
                multiprocessing_context: str | None = None) -> DataLoader:
    """A ``DataLoader`` for a cellweave stream (batches are made by the stream: ``batch_size=None``).

    Workers are forked, except when a store cannot live in a forked process (TileDB-SOMA): then ``spawn``.
    """
    if num_workers > 0 and multiprocessing_context is None:
        if not all(getattr(s, "fork_safe", True) for s in _stores(dataset)):
            multiprocessing_context = "spawn"
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
                      persistent_workers=False)


def current_shard(rank: int | None = None, world_size: int | None = None) -> Shard:
    """Rank/world from the arguments, else from ``torch.distributed``; worker from the DataLoader."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = 0, 1
    info = get_worker_info()
    worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return Shard(rank, world_size, worker, n_workers)


def logical_shard(shard: Shard, start: int) -> Shard:
    """The worker share a physical DataLoader worker serves when iteration starts at batch ``start``.

    The DataLoader always asks worker 0 first; after a resume at ``start`` the next batch belongs to worker
    ``start % n_workers``, so physical worker ``p`` serves the share of worker ``(p + start) % n_workers``.
    """
    return Shard(shard.rank, shard.world_size, (shard.worker + start) % shard.n_workers, shard.n_workers)


class _Sharded(IterableDataset):
    """The epoch plan shared by the single and paired streams: positions -> blocks -> batches."""

    def __init__(self, n_cells: int, batch_size: int, shuffle: bool, seed: int, chunk_size: int, block_size: int,
                 prefetch: int, drop_last: bool, rank: int | None, world_size: int | None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if n_cells == 0:
            raise InputError("stream", "cells", "there are no cells to stream", "check the input stores (and the paired join)")
        self.n_cells = n_cells
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.chunk_size = chunk_size
        self.block_size = block_size
        self.prefetch = prefetch
        self.drop_last = drop_last
        self._rank, self._world = rank, world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next ``iter()`` produces."""
        self.epoch = epoch

    def set_skip(self, n: int) -> None:
        """Make the next ``iter()`` start at this rank's ``n``-th batch of the epoch (exact resume), whatever the
        number of DataLoader workers."""
        self.skip = n

    def __len__(self) -> int:
        """Batches per epoch on this rank (all workers together)."""
        shard = current_shard(self._rank, self._world)
        per_rank = len(rank_positions(np.arange(self.n_cells), shard.rank, shard.world_size, self.drop_last))
        return n_batches(per_rank, self.batch_size, self.drop_last)

    def _read(self, rows: np.ndarray, cuts: list[int]):
        raise NotImplementedError

    def _to_rows(self, positions: np.ndarray) -> np.ndarray:
        return positions

    def worker_batches(self, shard: Shard | None = None) -> int:
        """Batches per epoch produced by one worker of one rank."""
        shard = shard or current_shard(self._rank, self._world)
        pos = shard_positions(self.n_cells, self.batch_size, self.chunk_size, self.seed, 0, False, shard, self.drop_last)
        return n_batches(len(pos), self.batch_size, self.drop_last)

    def iter_epoch(self, epoch: int, skip: int = 0, shard: Shard | None = None) -> Iterator:
        """Batches of one epoch for this process (rank and worker), after skipping its first ``skip`` batches.

        Skipping is exact: the blocks and their shuffles are those of the full epoch, whole blocks before the
        skipped batches are not read. ``shard`` overrides the process's rank/worker position.
        """
        limit_malloc_arenas()  # this process streams: cap glibc's arenas before its reading thread starts
        shard = shard or current_shard(self._rank, self._world)
        pos = shard_positions(self.n_cells, self.batch_size, self.chunk_size, self.seed, epoch, self.shuffle, shard, self.drop_last)
        rng = np.random.default_rng([self.seed, epoch, shard.rank, shard.worker, 1]) if self.shuffle else None
        plan = iter(blocks(pos, self.block_size, self.batch_size, rng, self.drop_last))
        first: list[np.ndarray] | None = None
        for batches in plan:  # consume the rng for skipped blocks without reading them
            if skip < len(batches):
                first = batches[skip:]
                break
            skip -= len(batches)
        if first is None:
            return
        plan = itertools.chain([first], plan)

        def job(batches: list[np.ndarray]):
            rows = self._to_rows(np.concatenate(batches))
            cuts = np.concatenate([[0], np.cumsum([len(b) for b in batches])]).tolist()
            return self._read(rows, cuts)

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = [pool.submit(job, b) for b in itertools.islice(plan, self.prefetch + 1)]
            while pending:
                done = pending.pop(0).result()
                nxt = next(plan, None)
                if nxt is not None:
                    pending.append(pool.submit(job, nxt))
                yield from done
                del done
                release_free_memory()

    def __iter__(self) -> Iterator:
        shard = logical_shard(current_shard(self._rank, self._world), self.skip)
        return self.iter_epoch(self.epoch, batches_before(self.skip, len(self), shard.worker, shard.n_workers), shard)


class CellStream(_Sharded):
    """Minibatches of one modality.

    Parameters
    ----------
    store
        The modality store.
    batch_size
        Cells per batch.
    shuffle
        Permute chunks globally and cells within blocks (seeded by ``(seed, epoch)``).
    seed
        Seed of every random choice.
    chunk_size
        Contiguous cells shuffled as a unit (small: better mixing; large: fewer reads).
    block_size
        Cells read at once and shuffled together (the read-ahead unit).
    prefetch
        Blocks read ahead in a background thread.
    drop_last
        Drop the last partial batch (and the ``n % world_size`` leftover cells).
    rows
        Restrict to these store rows (e.g. a validation split).
    preprocess, batch_key, label_key, feature_space, stats
        See :class:`ModalityReader`.
    rank, world_size
        Override the DDP rank and world size (default: from ``torch.distributed``).
    """

    def __init__(self, store: ModalityStore, batch_size: int = 512, *, shuffle: bool = True, seed: int = 0,
                 chunk_size: int = 256, block_size: int = 16384, prefetch: int = 1, drop_last: bool = False,
                 rows: np.ndarray | None = None, preprocess: Preprocess | None = None, batch_key: str | None = None,
                 label_key: str | None = None, feature_space: Sequence[str] | None = None,
                 stats: FeatureStats | None = None, rank: int | None = None, world_size: int | None = None) -> None:
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        n = store.n_obs if self.rows is None else len(self.rows)
        super().__init__(n, batch_size, shuffle, seed, chunk_size, block_size, prefetch, drop_last, rank, world_size)
        self.store = store
        self.reader = ModalityReader(store, preprocess, batch_key, label_key, feature_space, stats)

    def _to_rows(self, positions: np.ndarray) -> np.ndarray:
        return positions if self.rows is None else self.rows[positions]

    def _read(self, rows: np.ndarray, cuts: list[int]) -> list[CellBatch]:
        return self.reader.read_block(rows, cuts)


class PairedStream(_Sharded):
    """Minibatches of several modalities measured in the same cells, joined on cell id.

    Each step yields ``{modality: CellBatch}`` with the same cells in the same order. Cells missing from any
    modality are left out (their number is in :attr:`n_unmatched`).

    Parameters
    ----------
    stores
        The modalities (the first one's cell order anchors the join).
    preprocess
        Per-modality transforms, by modality name.
    batch_key, label_key
        Obs columns (looked up in each store).
    **kwargs
        As for :class:`CellStream`.
    """

    def __init__(self, stores: Sequence[ModalityStore], batch_size: int = 512, *,
                 preprocess: Mapping[str, Preprocess] | None = None, batch_key: str | None = None,
                 label_key: str | None = None, shuffle: bool = True, seed: int = 0, chunk_size: int = 256,
                 block_size: int = 16384, prefetch: int = 1, drop_last: bool = False, rank: int | None = None,
                 world_size: int | None = None) -> None:
        names = [s.modality for s in stores]
        if len(set(names)) != len(names):
            raise InputError("stream", "modality", f"modality names repeat: {names}", "give each paired store a distinct modality name")
        anchor = stores[0].all_obs_names()
        rows = [np.arange(len(anchor), dtype=np.int64)]
        keep = np.ones(len(anchor), dtype=bool)
        for s in stores[1:]:
            idx = s.all_obs_names().get_indexer(anchor)
            keep &= idx >= 0
            rows.append(idx.astype(np.int64))
        if not keep.any():
            raise InputError(stores[1].path, "obs_names", f"no cell id is shared with {stores[0].path}",
                             "paired modalities must use the same cell ids (barcodes); stream them as unpaired otherwise")
        self.rows = [r[keep] for r in rows]
        self.n_unmatched = int((~keep).sum())
        super().__init__(int(keep.sum()), batch_size, shuffle, seed, chunk_size, block_size, prefetch, drop_last, rank, world_size)
        preprocess = preprocess or {}
        self.readers = {s.modality: ModalityReader(s, preprocess.get(s.modality), batch_key, label_key) for s in stores}

    def _read(self, positions: np.ndarray, cuts: list[int]) -> list[dict[str, CellBatch]]:
        per_mod = {m: r.read_block(rows[positions], cuts) for (m, r), rows in zip(self.readers.items(), self.rows)}
        return [dict(zip(per_mod, step)) for step in zip(*per_mod.values())]


class UnpairedStream(IterableDataset):
    """One minibatch of every modality per step; each modality keeps its own cursor and epoch.

    Step-based: ``iter()`` yields :attr:`steps` steps starting at global step :attr:`start_step`. A modality
    that runs out starts its next epoch (a fresh shuffle) on its own. The position of every modality at any
    step is a pure function of the step, so a resumed run continues exactly where it stopped.

    Parameters
    ----------
    streams
        One :class:`CellStream` per modality (keyed by modality name).
    steps
        Steps per ``iter()``; default: the longest modality's batches per epoch.
    """

    def __init__(self, streams: Mapping[str, CellStream], steps: int | None = None) -> None:
        super().__init__()
        if not streams:
            raise ValueError("UnpairedStream needs at least one modality")
        self.streams = dict(streams)
        self.steps = steps if steps is not None else max(len(s) for s in self.streams.values())
        self.start_step = 0

    def set_epoch(self, epoch: int) -> None:
        """Start the next ``iter()`` at step ``epoch * steps``."""
        self.start_step = epoch * self.steps

    def set_start_step(self, step: int) -> None:
        """Start the next ``iter()`` at global step ``step`` (for exact resume)."""
        self.start_step = step

    def set_skip(self, n: int) -> None:
        """Start the next ``iter()`` ``n`` steps into the pass selected by :meth:`set_epoch`."""
        self.start_step = (self.start_step // self.steps) * self.steps + n

    def __len__(self) -> int:
        return self.steps

    def _cycle(self, stream: CellStream, local_start: int, worker: int, n_workers: int) -> Iterator[CellBatch]:
        base = current_shard(stream._rank, stream._world)
        shard = Shard(base.rank, base.world_size, worker, n_workers)
        per_epoch = stream.worker_batches(shard)
        if per_epoch == 0:
            raise InputError(stream.store.path, "cells", "this rank/worker receives no batch of this modality",
                             "use fewer DataLoader workers or ranks, or a smaller batch size")
        epoch, skip = divmod(local_start, per_epoch)
        for e in itertools.count(epoch):
            yield from stream.iter_epoch(e, skip, shard)
            skip = 0

    def __iter__(self) -> Iterator[dict[str, CellBatch]]:
        physical = current_shard()
        p, nw = physical.worker, physical.n_workers
        start = self.start_step
        worker = (p + start) % nw  # the worker share whose turn it is when the DataLoader asks this process
        local_start = len(range(worker, start, nw))
        local_steps = len(range(start + p, start + self.steps, nw))
        its = {m: self._cycle(s, local_start, worker, nw) for m, s in self.streams.items()}
        for _ in range(local_steps):
            yield {m: next(it) for m, it in its.items()}
