"""Rewrite an existing store in cellweave's streaming layout, optionally with its cells pre-shuffled.

The input is anything ``cellweave.data.open_modality`` opens: a Zarr store (e.g. one written by
``anndata.write_zarr`` with its default chunks, or an older cellweave store), a ``.h5ad`` file (read backed) or a
TileDB-SOMA measurement ``SOMA_DIR::MEASUREMENT`` (with the SOMA query options: ``--layer``, ``--obs-filter``,
``--var-filter``, ``--feature-key``). The output is a sharded Zarr v3 store in the AnnData layout (``--format zarr``,
the layout the stream reads fastest) or a one-measurement SOMA experiment (``--format soma``).

``--shuffle`` writes the cells in a uniformly random order (seeded), so that contiguous reads of the output are
already mixed across donors, datasets and batches (what loaders that read contiguous ranges rely on). The shuffle
is streamed in two passes with bounded memory: every cell is first assigned to one of ``B`` buckets at random and
each input chunk is scattered into per-bucket part files; then each bucket (about ``--bucket-cells`` cells) is
loaded, its cells are put in a random order, and appended to the output. A random bucket followed by a random order
within the bucket is a uniformly random permutation of all cells. Memory is one input chunk in the first pass and
one bucket in the second, never the whole matrix; the part files take about as much disk as the input and are
removed at the end.

Nothing is left under the output name unless the whole store was written (temporary name, then rename).

    python tools/rechunk.py IN OUT.zarr [--shuffle] [--seed 0] [--chunk-rows 4096] [--bucket-cells 200000]
    python tools/rechunk.py census.soma::RNA lung.zarr --layer raw --obs-filter "tissue_general == 'lung'" --shuffle
    python tools/rechunk.py atlas/rna.zarr rna.soma --format soma --shuffle
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellweave.data import StoreSpec, open_modality
from cellweave.data.atomic import check_output_path
from cellweave.data.source import Kind, Matrix
from cellweave.data.store import ModalityStore, coalesce_ranges
from cellweave.errors import InputError

DEFAULT_CHUNK_ROWS = 4096
DEFAULT_BUCKET_CELLS = 200_000


def read_var(store: ModalityStore) -> pd.DataFrame:
    """The store's feature table with its columns where the format keeps them (Zarr, h5ad), else the names."""
    path = Path(str(store.path))
    try:
        if path.is_dir():
            import anndata as ad
            import zarr

            var = ad.io.read_elem(zarr.open_group(str(path), mode="r")["var"])
        elif path.suffix == ".h5ad":
            import anndata as ad
            import h5py

            with h5py.File(path, "r") as f:
                var = ad.io.read_elem(f["var"])
        else:
            var = pd.DataFrame(index=store.var_names)
    except (KeyError, OSError):
        var = pd.DataFrame(index=store.var_names)
    if len(var) != store.n_vars or not np.array_equal(var.index.astype(str), pd.Index(store.var_names).astype(str)):
        var = pd.DataFrame(index=store.var_names)  # a query selected features: keep the selected names only
    var.index = pd.Index(store.var_names).astype(str)
    return var


def shuffled_order(n_cells: int, bucket_cells: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly random order of ``n_cells`` rows, built as random buckets of about ``bucket_cells`` cells each
    put in a random order.

    Returns
    -------
    bucket, order
        The bucket of every input row, and the output order (input rows, bucket after bucket).
    """
    rng = np.random.default_rng(seed)
    n_buckets = max(1, -(-n_cells // max(1, bucket_cells)))
    bucket = rng.integers(0, n_buckets, n_cells).astype(np.int32)
    rows = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[rows], np.arange(n_buckets + 1))
    order = np.concatenate([rng.permutation(rows[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]) if n_cells else rows
    return bucket, order


class RechunkSource:
    """A store read back as a :class:`~cellweave.data.ChunkSource`, in store order or in a pre-shuffled order.

    Parameters
    ----------
    store
        The input modality.
    shuffle
        Write the cells in a random order (two passes over the input; see the module docstring).
    seed
        Seed of the order.
    bucket_cells
        Cells per bucket of the shuffle (the memory bound of its second pass).
    work_dir
        Where the shuffle's part files go (removed by :meth:`cleanup`).
    """

    def __init__(self, store: ModalityStore, shuffle: bool = False, seed: int = 0,
                 bucket_cells: int = DEFAULT_BUCKET_CELLS, work_dir: Path | None = None) -> None:
        self.store = store
        self.name = str(store.path)
        self.modality = store.modality
        self.sparse = store.sparse
        self.kind: Kind | None = store.kind
        self.var = read_var(store)
        obs = pd.DataFrame({k: store.obs_column(k).array for k in store.obs_keys}, index=store.all_obs_names())
        self.shuffle = shuffle
        self.bucket, self.order = (shuffled_order(store.n_obs, bucket_cells, seed) if shuffle
                                   else (np.zeros(store.n_obs, np.int32), np.arange(store.n_obs)))
        self.obs = obs.iloc[self.order] if shuffle else obs
        self.work_dir = work_dir

    # ---- pass 1: scatter the input into bucket part files ----------------------------------------------------
    def _scatter(self, chunk_rows: int) -> Path:
        work = Path(tempfile.mkdtemp(prefix=".rechunk-", dir=self.work_dir))
        n = self.store.n_obs
        for part, start in enumerate(range(0, n, chunk_rows)):
            stop = min(start + chunk_rows, n)
            X = self.store.read_X([(start, stop)])
            bucket = self.bucket[start:stop]
            for b in np.unique(bucket):
                local = np.flatnonzero(bucket == b)
                target = work / f"bucket-{b:06d}"
                target.mkdir(exist_ok=True)
                np.save(target / f"{part:08d}-rows.npy", local + start)
                if self.sparse:
                    sp.save_npz(target / f"{part:08d}-X.npz", sp.csr_matrix(X[local]), compressed=False)
                else:
                    np.save(target / f"{part:08d}-X.npy", np.asarray(X[local]))
        return work

    def _load_bucket(self, folder: Path) -> tuple[np.ndarray, Matrix]:
        rows, mats = [], []
        for rows_file in sorted(folder.glob("*-rows.npy")):
            stem = rows_file.name[: -len("-rows.npy")]
            rows.append(np.load(rows_file))
            mats.append(sp.load_npz(folder / f"{stem}-X.npz") if self.sparse else np.load(folder / f"{stem}-X.npy"))
        X = sp.vstack(mats, format="csr") if self.sparse else np.concatenate(mats)
        return np.concatenate(rows), X

    # ---- pass 2 (or the plain copy) --------------------------------------------------------------------------
    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, Matrix]]:
        """Yield ``(start_row, matrix)`` of the output, at most ``chunk_rows`` rows each."""
        n = self.store.n_obs
        if not self.shuffle:
            for start in range(0, n, chunk_rows):
                yield start, self.store.read_X(coalesce_ranges([(start, min(start + chunk_rows, n))]))
            return
        work = self._scatter(chunk_rows)
        try:
            written = 0
            for folder in sorted(work.glob("bucket-*")):
                rows, X = self._load_bucket(folder)
                wanted = self.order[written : written + len(rows)]
                position = pd.Index(rows).get_indexer(wanted)
                if (position < 0).any():  # the bucket files must hold exactly the rows of the planned order
                    raise RuntimeError(f"{folder}: rows differ from the planned order")
                X = X[position]
                for a in range(0, len(rows), chunk_rows):
                    yield written + a, X[a : a + chunk_rows]
                written += len(rows)
                shutil.rmtree(folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def rechunk(source: str, out: str | Path, fmt: str = "zarr", shuffle: bool = False, seed: int = 0,
            chunk_rows: int = DEFAULT_CHUNK_ROWS, bucket_cells: int = DEFAULT_BUCKET_CELLS, overwrite: bool = False,
            spec: dict | None = None, progress: bool = True) -> Path:
    """Rewrite ``source`` to ``out`` (see the module docstring); returns ``out``.

    Raises
    ------
    InputError
        When the input cannot be opened, the output exists (without ``overwrite``) or the format is unknown.
    """
    from tqdm.auto import tqdm

    if fmt not in ("zarr", "soma"):
        raise InputError("rechunk", "--format", f"unknown format {fmt!r}", "use --format zarr or --format soma")
    out = Path(out)
    check_output_path(out, overwrite)
    opts = {k: v for k, v in (spec or {}).items() if v is not None}
    store = open_modality(StoreSpec(source, **opts) if opts else source)
    src = RechunkSource(store, shuffle=shuffle, seed=seed, bucket_cells=bucket_cells, work_dir=out.resolve().parent)
    with tqdm(total=store.n_obs * (2 if shuffle else 1), unit="cells", desc="rechunk", disable=not progress) as bar:
        if fmt == "zarr":
            from cellweave.data.write_zarr import write_zarr

            return write_zarr(_Counted(src, bar), out, overwrite=overwrite, chunk_rows=chunk_rows, progress=bar.update)
        from cellweave.data.soma_store import write_soma

        return write_soma([_Counted(src, bar)], out, overwrite=overwrite, chunk_rows=chunk_rows, progress=bar.update)


class _Counted:
    """The source with the first pass of a shuffle counted on the progress bar."""

    def __init__(self, source: RechunkSource, bar) -> None:  # noqa: ANN001 (a tqdm bar)
        self._source, self._bar = source, bar
        for key in ("name", "modality", "obs", "var", "sparse", "kind"):
            setattr(self, key, getattr(source, key))

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, Matrix]]:
        if self._source.shuffle:
            self._bar.update(self._source.store.n_obs)  # pass 1 runs before the first output chunk
        yield from self._source.iter_chunks(chunk_rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help=".zarr, .h5ad or SOMA_DIR::MEASUREMENT")
    p.add_argument("out", type=Path, help="output .zarr directory (or SOMA experiment with --format soma)")
    p.add_argument("--format", choices=["zarr", "soma"], default="zarr")
    p.add_argument("--shuffle", action="store_true", help="write the cells in a uniformly random order")
    p.add_argument("--seed", type=int, default=0, help="seed of the order (with --shuffle)")
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows read and written at a time")
    p.add_argument("--bucket-cells", type=int, default=DEFAULT_BUCKET_CELLS,
                   help="cells held at once by the shuffle's second pass (its memory bound)")
    p.add_argument("--layer", help="SOMA X layer")
    p.add_argument("--obs-filter", help="SOMA obs value filter")
    p.add_argument("--var-filter", help="SOMA var value filter")
    p.add_argument("--feature-key", help="SOMA var column of feature names")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    spec = {"layer": args.layer, "obs_filter": args.obs_filter, "var_filter": args.var_filter,
            "feature_key": args.feature_key}
    t = time.perf_counter()
    try:
        out = rechunk(args.input, args.out, fmt=args.format, shuffle=args.shuffle, seed=args.seed,
                      chunk_rows=args.chunk_rows, bucket_cells=args.bucket_cells, overwrite=args.overwrite, spec=spec,
                      progress=not args.quiet)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.perf_counter() - t:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
