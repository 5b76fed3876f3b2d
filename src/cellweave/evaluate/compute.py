"""Where the chunked metric work runs: a Dask scheduler context and the row-block map used by every metric.

Every metric runs as one task per block of cells (rows) of Dask arrays, concatenated (or summed) into the
result; arrays every block needs whole (the embedding as reference, labels) enter once, as one graph node or,
under a distributed scheduler, scattered to the workers. The scheduler is whatever is active:
:func:`dask_scheduler` makes it a threaded pool, a ``LocalCluster`` (threads, no extra processes) or a client
of a running cluster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import dask
import dask.array as da
import numpy as np
from threadpoolctl import threadpool_limits

DEFAULT_CHUNK = 4096
LOCAL_CLUSTER_MIN_CELLS = 200_000  # below this a plain thread pool starts faster than a LocalCluster


def row_chunk(n_rows: int, chunk_size: int | None) -> int:
    """Rows per Dask block: ``chunk_size`` or :data:`DEFAULT_CHUNK`, at most ``n_rows`` (and at least 1)."""
    return max(1, min(int(chunk_size or DEFAULT_CHUNK), max(int(n_rows), 1)))


def subset_rows(n_rows: int, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted rows of a random subset of ``max_rows`` of ``n_rows`` rows; every row when uncapped or fewer."""
    if max_rows is None or n_rows <= max_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=int(max_rows), replace=False))


def _client() -> Any:
    """The distributed client when it is the active scheduler, else ``None``."""
    owner = getattr(dask.base.get_scheduler(), "__self__", None)
    return owner if type(owner).__name__ == "Client" else None


def shared(value: Any) -> Any:
    """Wrap an argument that every block reads whole: scattered once to the workers of a distributed
    scheduler, else one node of the task graph.
    """
    client = _client()
    if client is not None:
        return client.scatter(value, broadcast=True, hash=False)
    return dask.delayed(value, pure=True, traverse=False)


def row_blocks(a: np.ndarray, chunk: int) -> da.Array:
    """``a`` as a Dask array of ``chunk``-row blocks; under a distributed scheduler the blocks are scattered
    to the workers first, so the task graph carries references, not the data.
    """
    client = _client()
    if client is None:
        return da.from_array(a, chunks=(chunk,) + tuple(a.shape[1:]), name=False)
    starts = list(range(0, len(a), chunk))
    futures = client.scatter([a[s:s + chunk] for s in starts], hash=False)
    return da.concatenate([
        da.from_delayed(dask.delayed(f), shape=(min(chunk, len(a) - s),) + tuple(a.shape[1:]), dtype=a.dtype)
        for f, s in zip(futures, starts, strict=True)
    ])


def compute(*collections: Any) -> tuple:
    """``dask.compute`` with one BLAS thread per task: the Dask workers already occupy the cores, and
    OpenBLAS threads inside concurrent tasks (GEMM tiles, ARPACK) slow everything down many times over.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return dask.compute(*collections)


def map_rows(
    func: Callable[..., np.ndarray],
    row_arrays: list[np.ndarray],
    shared_args: tuple = (),
    *,
    chunk_size: int | None,
    n_out: int | None,
    dtype: Any = np.float64,
) -> np.ndarray:
    """Apply ``func(row0, *row_blocks, *shared_args)`` to blocks of rows and concatenate the results.

    Parameters
    ----------
    func
        Called once per block with the index of the block's first row, the block of each array in
        ``row_arrays`` (same rows) and the ``shared_args`` unchanged. Returns ``(rows,)`` or ``(rows, n_out)``.
    row_arrays
        Arrays with one row per cell, split into Dask blocks of ``chunk_size`` rows.
    shared_args
        Arguments every block gets whole (entered in the graph once, see :func:`shared`).
    chunk_size
        Rows per block.
    n_out
        Columns of each block's result, or ``None`` for a 1-D result.
    dtype
        Result dtype.

    Returns
    -------
    numpy.ndarray
        The blocks' results in row order, computed on the active Dask scheduler.
    """
    n = len(row_arrays[0])
    if n == 0:
        return np.zeros((0,) if n_out is None else (0, n_out), dtype=dtype)
    chunk = row_chunk(n, chunk_size)
    arrays = [row_blocks(a, chunk) for a in row_arrays]
    per_array = [a.to_delayed().reshape(-1) for a in arrays]
    wrapped = tuple(shared(a) for a in shared_args)
    task = dask.delayed(func, pure=True)
    parts = []
    for b, rows in enumerate(arrays[0].chunks[0]):
        shape = (rows,) if n_out is None else (rows, n_out)
        block = task(b * chunk, *[p[b] for p in per_array], *wrapped)
        parts.append(da.from_delayed(block, shape=shape, dtype=dtype))
    return np.asarray(compute(da.concatenate(parts, axis=0))[0])


def sum_blocks(
    func: Callable[..., np.ndarray],
    row_arrays: list[np.ndarray],
    shared_args: tuple = (),
    *,
    chunk_size: int | None,
    shape: tuple[int, ...],
) -> np.ndarray:
    """Sum over blocks of rows of ``func(row0, *row_blocks, *shared_args)``, each an array of ``shape``.

    For reductions (counts, sums, Gram matrices): the blocks' partial results are added on the active Dask
    scheduler, in float64.
    """
    n = len(row_arrays[0])
    chunk = row_chunk(n, chunk_size)
    arrays = [row_blocks(a, chunk) for a in row_arrays]
    per_array = [a.to_delayed().reshape(-1) for a in arrays]
    wrapped = tuple(shared(a) for a in shared_args)
    task = dask.delayed(func, pure=True)
    parts = [
        da.from_delayed(task(b * chunk, *[p[b] for p in per_array], *wrapped), shape=shape, dtype=np.float64)
        for b in range(len(arrays[0].chunks[0]))
    ]
    return np.asarray(compute(da.stack(parts).sum(axis=0))[0])


@contextlib.contextmanager
def dask_scheduler(scheduler: str | None = None, n_workers: int = 2, n_cells: int = 0) -> Iterator[str]:
    """Run the metric computations inside on one Dask scheduler.

    Parameters
    ----------
    scheduler
        ``None`` or ``"auto"``: a ``LocalCluster`` of ``n_workers`` threads when ``n_cells`` is at least
        :data:`LOCAL_CLUSTER_MIN_CELLS`, else a pool of ``n_workers`` threads; ``"local"``: always the
        ``LocalCluster``; ``"threads"``: the thread pool; ``"synchronous"``: one thread (debugging);
        anything else: the address of a running Dask scheduler (``tcp://host:8786``).
    n_workers
        Workers of the local pool or cluster.
    n_cells
        Size of the input, to choose under ``"auto"``.

    Yields
    ------
    str
        A description of the scheduler in use (for logs and the report).
    """
    choice = scheduler or "auto"
    if choice == "auto":
        choice = "local" if n_cells >= LOCAL_CLUSTER_MIN_CELLS else "threads"
    if choice in ("threads", "synchronous"):
        with dask.config.set(scheduler=choice, num_workers=n_workers):
            yield f"dask {choice} ({n_workers if choice == 'threads' else 1} worker threads)"
        return
    from distributed import Client, LocalCluster

    if choice == "local":
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
                Client(cluster, set_as_default=True):
            yield f"dask LocalCluster ({n_workers} workers, threads)"
        return
    with Client(choice, set_as_default=True) as client:
        yield f"dask cluster at {client.scheduler.address}"
