"""Which cells go where in an epoch: the global chunk shuffle and its split over ranks and workers.

A pure function of (number of cells, seed, epoch, rank, world size, worker, worker count), so that every
process computes its share without talking to the others, and the same (seed, epoch) always gives the same
order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shard:
    """Where this process sits: DDP rank / world size and DataLoader worker / worker count."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    n_workers: int = 1


def epoch_order(n_cells: int, chunk_size: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Cell positions in the order of one epoch: contiguous chunks of ``chunk_size``, chunks permuted globally.

    The permutation is seeded by ``(seed, epoch)``, so it changes every epoch and is reproducible.
    """
    if not shuffle:
        return np.arange(n_cells, dtype=np.int64)
    n_chunks = math.ceil(n_cells / chunk_size)
    perm = np.random.default_rng([seed, epoch]).permutation(n_chunks)
    order = (perm[:, None] * chunk_size + np.arange(chunk_size)[None, :]).ravel()
    return order[order < n_cells]


def rank_positions(order: np.ndarray, rank: int, world_size: int, drop_last: bool) -> np.ndarray:
    """The slice of the epoch order owned by one rank; every rank gets the same number of cells.

    With ``drop_last`` the ``n % world_size`` last cells of the (shuffled) order are left out this epoch;
    otherwise the order is padded by wrapping around to its start, as ``DistributedSampler`` does.
    """
    n = len(order)
    if drop_last:
        per_rank = n // world_size
    else:
        per_rank = math.ceil(n / world_size)
        if per_rank * world_size > n:
            order = np.concatenate([order, order[: per_rank * world_size - n]])
    return order[rank * per_rank : (rank + 1) * per_rank]


def n_batches(n_cells: int, batch_size: int, drop_last: bool) -> int:
    """Batches made from ``n_cells`` cells."""
    return n_cells // batch_size if drop_last else math.ceil(n_cells / batch_size)


def worker_batch_range(nb: int, worker: int, n_workers: int) -> tuple[int, int]:
    """Batches ``[b0, b1)`` of a rank's ``nb`` that one worker makes.

    Shares differ by at most one and the larger shares go to the last workers, so that the DataLoader's
    round-robin over workers is a strict rotation until the final partial round (see :func:`batches_before`).
    """
    base, rem = divmod(nb, n_workers)
    first_big = n_workers - rem
    b0 = worker * base + max(0, worker - first_big)
    return b0, b0 + base + (1 if worker >= first_big else 0)


def batches_before(step: int, nb: int, worker: int, n_workers: int) -> int:
    """How many of its batches ``worker`` has made before the rank's ``step``-th batch of an epoch.

    The DataLoader takes batches from workers in turn and skips exhausted ones; with the shares of
    :func:`worker_batch_range` that is full rotations, then one partial round over the last workers.
    """
    base, rem = divmod(nb, n_workers)
    full = base * n_workers
    if step <= full:
        return len(range(worker, step, n_workers))
    first_big = n_workers - rem
    extra = 1 if worker >= first_big and worker - first_big < step - full else 0
    return base + extra


def worker_positions(positions: np.ndarray, batch_size: int, worker: int, n_workers: int, drop_last: bool) -> np.ndarray:
    """A DataLoader worker's share of its rank's positions, in whole batches (only the last worker may end on a
    partial batch)."""
    b0, b1 = worker_batch_range(n_batches(len(positions), batch_size, drop_last), worker, n_workers)
    return positions[b0 * batch_size : min(b1 * batch_size, len(positions))]


def shard_positions(n_cells: int, batch_size: int, chunk_size: int, seed: int, epoch: int, shuffle: bool,
                    shard: Shard, drop_last: bool) -> np.ndarray:
    """Positions (in epoch order, before the within-block shuffle) read by one worker of one rank."""
    order = epoch_order(n_cells, chunk_size, seed, epoch, shuffle)
    mine = rank_positions(order, shard.rank, shard.world_size, drop_last)
    return worker_positions(mine, batch_size, shard.worker, shard.n_workers, drop_last)


def blocks(positions: np.ndarray, block_size: int, batch_size: int, rng: np.random.Generator | None,
           drop_last: bool) -> Iterator[list[np.ndarray]]:
    """Split positions into read-ahead blocks; shuffle within each block; yield each block's batches.

    ``block_size`` is rounded up to a whole number of batches so batches never straddle blocks.
    """
    block_size = max(batch_size, math.ceil(block_size / batch_size) * batch_size)
    for start in range(0, len(positions), block_size):
        block = positions[start : start + block_size]
        if rng is not None:
            block = block[rng.permutation(len(block))]
        batches = [block[i : i + batch_size] for i in range(0, len(block), batch_size)]
        if drop_last and batches and len(batches[-1]) < batch_size:
            batches.pop()
        if batches:
            yield batches
