"""The sharded stream: coverage across ranks and workers, epoch order, values, modes, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import cellweave.data.stream as stream_mod
from cellweave import InputError
from cellweave.data import CellStream, PairedStream, Preprocess, UnpairedStream, open_modality, write_zarr
from cellweave.data.plan import Shard, shard_positions

from .conftest import counts_source


class _Worker:
    def __init__(self, wid: int, n: int) -> None:
        self.id, self.num_workers = wid, n


def _ranks_by_workers(monkeypatch, make_stream, world: int = 2, workers: int = 2, epoch: int = 0):
    """Batches of every (rank, worker) simulated in-process."""
    out = {}
    for rank in range(world):
        for w in range(workers):
            monkeypatch.setattr(stream_mod, "get_worker_info", lambda w=w: _Worker(w, workers))
            s = make_stream(rank, world)
            s.set_epoch(epoch)
            out[rank, w] = list(s)
    monkeypatch.setattr(stream_mod, "get_worker_info", lambda: None)
    return out


def _rows(batches) -> np.ndarray:
    return np.concatenate([b.rows.numpy() for b in batches])


@pytest.mark.parametrize("n_cells", [10_000, 10_007])
def test_every_cell_once_across_ranks_and_workers(tmp_path, monkeypatch, n_cells):
    store = open_modality(write_zarr(counts_source(n_cells, 50), tmp_path / "x.zarr"))
    got = _ranks_by_workers(
        monkeypatch, lambda r, w: CellStream(store, 128, seed=3, block_size=1024, chunk_size=64, rank=r, world_size=w)
    )
    per_rank = [sum(len(got[r, w]) for w in range(2)) for r in range(2)]
    assert per_rank[0] == per_rank[1] > 0
    rows = np.concatenate([_rows(v) for v in got.values()])
    counts = np.bincount(rows, minlength=n_cells)
    assert counts.min() == 1
    # padding as DistributedSampler does: at most world_size - 1 cells repeat when n is not divisible
    assert counts.sum() - n_cells == (-n_cells) % 2
    assert len(set(map(tuple, (sorted(_rows(got[r, w])) for r in range(2) for w in range(2))))) == 4


def test_drop_last_gives_full_equal_batches(tmp_path, monkeypatch):
    store = open_modality(write_zarr(counts_source(1_001, 20), tmp_path / "x.zarr"))
    got = _ranks_by_workers(monkeypatch, lambda r, w: CellStream(store, 64, drop_last=True, rank=r, world_size=w))
    assert all(len(b) == 64 for v in got.values() for b in v)
    assert sum(len(v) for (r, _), v in got.items() if r == 0) == sum(len(v) for (r, _), v in got.items() if r == 1)
    rows = np.concatenate([_rows(v) for v in got.values()])
    assert len(np.unique(rows)) == len(rows)


def test_epoch_order_changes_and_repeats(small_zarr):
    path, _ = small_zarr
    store = open_modality(path)
    s = CellStream(store, 256, seed=7)
    e0 = _rows(list(s.iter_epoch(0)))
    e0_again = _rows(list(CellStream(store, 256, seed=7).iter_epoch(0)))
    e1 = _rows(list(s.iter_epoch(1)))
    assert np.array_equal(e0, e0_again)
    assert not np.array_equal(e0, e1)
    assert np.array_equal(np.sort(e0), np.sort(e1))
    # a different seed gives a different order; unshuffled gives store order
    assert not np.array_equal(e0, _rows(list(CellStream(store, 256, seed=8).iter_epoch(0))))
    assert np.array_equal(_rows(list(CellStream(store, 256, shuffle=False))), np.arange(store.n_obs))


def test_rank_shares_move_between_epochs():
    """Unlike a fixed contiguous slice per rank, each rank sees different cells in different epochs."""
    a = shard_positions(10_000, 100, 64, 0, 0, True, Shard(0, 2), False)
    b = shard_positions(10_000, 100, 64, 0, 1, True, Shard(0, 2), False)
    assert len(np.intersect1d(a, b)) < 0.7 * len(a)


def test_values_ids_and_labels_match_the_source(small_zarr):
    path, src = small_zarr
    store = open_modality(path)
    s = CellStream(store, 500, seed=1, batch_key="batch", label_key="cell_type")
    cats = s.reader.batch_categories
    for b in s:
        rows = b.rows.numpy()
        assert b.is_sparse
        np.testing.assert_array_equal(b.dense().numpy(), src.X[rows].toarray())
        assert list(b.obs_names) == list(src.obs.index[rows])
        assert [cats[c] for c in b.batch.numpy()] == list(src.obs["batch"].iloc[rows])
        np.testing.assert_allclose(b.library_size.numpy(), np.asarray(src.X[rows].sum(1)).ravel())


def test_within_block_shuffle_mixes_chunks(small_zarr):
    store = open_modality(small_zarr[0])
    b = next(iter(CellStream(store, 256, seed=0, chunk_size=64, block_size=4096)))
    # cells of one batch come from many different 64-cell chunks
    assert len(np.unique(b.rows.numpy() // 64)) > 30


def test_dataloader_workers_cover_every_cell(small_zarr):
    store = open_modality(small_zarr[0])
    s = CellStream(store, 250, seed=2, block_size=2000)
    loader = DataLoader(s, batch_size=None, num_workers=2)
    rows = np.concatenate([b.rows.numpy() for b in loader])
    assert np.array_equal(np.sort(rows), np.arange(store.n_obs))
    assert len(loader) == len(s) == 40


def test_missing_obs_key_is_a_clear_error(small_zarr):
    store = open_modality(small_zarr[0])
    with pytest.raises(InputError, match=r"obs\['donor'\].*has: batch, cell_type"):
        CellStream(store, 10, batch_key="donor")


def test_feature_space_mask_and_layout(tmp_path):
    src = counts_source(300, 10)
    store = open_modality(write_zarr(src, tmp_path / "x.zarr"))
    space = ["g3", "zz", "g0", "g9", "other"]
    b = next(iter(CellStream(store, 300, shuffle=False, feature_space=space)))
    X = b.dense().numpy()
    assert b.mask.tolist() == [True, False, True, True, False]
    np.testing.assert_array_equal(X[:, 0], src.X[:, 3].toarray().ravel())
    np.testing.assert_array_equal(X[:, 2], src.X[:, 0].toarray().ravel())
    assert (X[:, [1, 4]] == 0).all()
    with pytest.raises(InputError, match="shared feature space"):
        CellStream(store, 10, feature_space=["nothing"])


def test_preprocess_matches_scanpy(tmp_path):
    sc = pytest.importorskip("scanpy")
    import anndata as ad

    src = counts_source(2_000, 300, density=0.3)
    store = open_modality(write_zarr(src, tmp_path / "x.zarr"))
    pp = Preprocess(n_top_genes=60, scale=True, max_value=10.0)
    s = CellStream(store, 2_000, shuffle=False, preprocess=pp)
    b = next(iter(s))
    adata = ad.AnnData(src.X.copy(), obs=src.obs.copy(), var=src.var.copy())
    sc.pp.highly_variable_genes(adata, n_top_genes=60, flavor="seurat_v3")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata = adata[:, adata.var.highly_variable].copy()
    sc.pp.scale(adata, max_value=10.0)
    assert s.reader.feature_names == adata.var_names.tolist()
    np.testing.assert_allclose(b.dense().numpy(), adata.X, atol=2e-4)


def test_unpaired_stream_cursors_and_exact_resume(tmp_path):
    a = open_modality(write_zarr(counts_source(1_000, 30, modality="rna"), tmp_path / "a.zarr"))
    b = open_modality(write_zarr(counts_source(300, 12, seed=1, prefix="p", modality="adt"), tmp_path / "b.zarr"))
    streams = {"rna": CellStream(a, 100, seed=0), "adt": CellStream(b, 100, seed=0)}
    u = UnpairedStream(streams, steps=25)
    full = list(u)
    assert len(full) == 25 and set(full[0]) == {"rna", "adt"}
    # adt wraps around after 3 batches into a new epoch with a new order
    adt_rows = [s["adt"].rows.numpy() for s in full]
    assert np.array_equal(np.sort(np.concatenate(adt_rows[:3])), np.arange(300))
    assert not np.array_equal(np.concatenate(adt_rows[:3]), np.concatenate(adt_rows[3:6]))
    u2 = UnpairedStream(streams, steps=12)
    u2.set_start_step(13)
    resumed = list(u2)
    for x, y in zip(full[13:], resumed):
        for m in ("rna", "adt"):
            assert np.array_equal(x[m].rows.numpy(), y[m].rows.numpy())


def test_unpaired_stream_with_workers_matches_step_count(tmp_path):
    a = open_modality(write_zarr(counts_source(1_000, 30), tmp_path / "a.zarr"))
    b = open_modality(write_zarr(counts_source(400, 12, seed=1, prefix="p", modality="adt"), tmp_path / "b.zarr"))
    u = UnpairedStream({"rna": CellStream(a, 100), "adt": CellStream(b, 100)}, steps=10)
    steps = list(DataLoader(u, batch_size=None, num_workers=2))
    assert len(steps) == 10
    assert np.array_equal(np.sort(np.concatenate([s["rna"].rows.numpy() for s in steps])), np.arange(1_000))


def test_paired_stream_joins_on_cell_id(tmp_path):
    rna = counts_source(800, 40, modality="rna")
    adt = counts_source(800, 8, seed=5, modality="adt")
    perm = np.random.default_rng(0).permutation(800)[:700]  # other order, 100 cells missing
    adt.obs = adt.obs.iloc[perm]
    adt.X = adt.X[perm]
    sa = open_modality(write_zarr(rna, tmp_path / "rna.zarr"))
    sb = open_modality(write_zarr(adt, tmp_path / "adt.zarr"))
    p = PairedStream([sa, sb], 128, seed=4)
    assert p.n_unmatched == 100 and p.n_cells == 700
    n = 0
    for step in p:
        assert list(step["rna"].obs_names) == list(step["adt"].obs_names)
        ids = step["adt"].obs_names
        expect = adt.X[adt.obs.index.get_indexer(ids)].toarray()
        np.testing.assert_array_equal(step["adt"].dense().numpy(), expect)
        n += len(ids)
    assert n == 700


def test_paired_stream_refuses_disjoint_ids(tmp_path):
    sa = open_modality(write_zarr(counts_source(50, 5), tmp_path / "a.zarr"))
    sb = open_modality(write_zarr(counts_source(50, 5, prefix="x", modality="adt"), tmp_path / "b.zarr"))
    with pytest.raises(InputError, match="no cell id is shared"):
        PairedStream([sa, sb], 10)


def test_batch_moves_to_device_sparse(small_zarr):
    b = next(iter(CellStream(open_modality(small_zarr[0]), 64)))
    moved = b.to(torch.device("cpu"))
    assert moved.is_sparse and moved.sparse().layout == torch.sparse_csr
    np.testing.assert_array_equal(moved.sparse().to_dense().numpy(), b.dense().numpy())


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_set_skip_resumes_exactly_with_workers(tmp_path, workers):
    store = open_modality(write_zarr(counts_source(1_100, 10), tmp_path / "x.zarr"))
    s = CellStream(store, 100, seed=5, block_size=300)
    s.set_epoch(2)
    full = [b.rows.numpy() for b in DataLoader(s, batch_size=None, num_workers=workers)]
    assert len(full) == 11
    for skip in (1, 4, 9, 10):
        s.set_skip(skip)
        tail = [b.rows.numpy() for b in DataLoader(s, batch_size=None, num_workers=workers)]
        assert len(tail) == len(full) - skip
        assert all(np.array_equal(a, b) for a, b in zip(full[skip:], tail))


def test_worker_shares_make_a_strict_rotation():
    from cellweave.data.plan import batches_before, worker_batch_range

    for nb in range(0, 30):
        for nw in range(1, 6):
            ranges = [worker_batch_range(nb, w, nw) for w in range(nw)]
            assert ranges[0][0] == 0 and ranges[-1][1] == nb
            assert all(ranges[i][1] == ranges[i + 1][0] for i in range(nw - 1))
            # simulate the DataLoader's round robin over live workers
            left = [b - a for a, b in ranges]
            made = [0] * nw
            order = []
            while any(left):
                for w in range(nw):
                    if left[w]:
                        order.append(w)
                        left[w] -= 1
            for step, w in enumerate(order):
                assert batches_before(step, nb, w, nw) == sum(1 for x in order[:step] if x == w)
                made[w] += 1


@pytest.mark.parametrize("workers", [2, 3])
def test_unpaired_resume_with_workers(tmp_path, workers):
    a = open_modality(write_zarr(counts_source(900, 10), tmp_path / "a.zarr"))
    b = open_modality(write_zarr(counts_source(250, 6, seed=1, prefix="p", modality="adt"), tmp_path / "b.zarr"))
    u = UnpairedStream({"rna": CellStream(a, 100, seed=2), "adt": CellStream(b, 100, seed=3)}, steps=20)
    full = [{m: x.rows.numpy() for m, x in s.items()} for s in DataLoader(u, batch_size=None, num_workers=workers)]
    for start in (1, 7, 13):
        u.set_start_step(start)
        tail = [{m: x.rows.numpy() for m, x in s.items()} for s in DataLoader(u, batch_size=None, num_workers=workers)]
        assert len(tail) == 20
        for x, y in zip(full[start:], tail):
            assert all(np.array_equal(x[m], y[m]) for m in ("rna", "adt"))


def test_make_loader_spawns_workers_for_soma_and_covers_every_cell(tmp_path):
    from cellweave.data import make_loader
    from cellweave.data.soma_store import write_soma

    src = counts_source(700, 15)
    exp = write_soma([src], tmp_path / "x.soma")
    soma_store = open_modality(f"{exp}::rna")
    loader = make_loader(CellStream(soma_store, 100, seed=1), num_workers=2)
    assert loader.multiprocessing_context is not None
    batches = list(loader)
    rows = np.concatenate([b.rows.numpy() for b in batches])
    assert np.array_equal(np.sort(rows), np.arange(700))
    b = batches[0]
    np.testing.assert_array_equal(b.dense().numpy(), src.X[b.rows.numpy()].toarray())
    # Zarr stores also survive pickling into spawned workers
    zstore = open_modality(write_zarr(src, tmp_path / "x.zarr"))
    spawned = make_loader(CellStream(zstore, 100, seed=1), num_workers=2, multiprocessing_context="spawn")
    assert [x.rows.tolist() for x in spawned] == [x.rows.tolist() for x in make_loader(CellStream(zstore, 100, seed=1), 2)]


def test_malloc_arena_cap_respects_the_users_setting(monkeypatch):
    import platform

    from cellweave.data import malloc

    glibc = platform.libc_ver()[0] == "glibc"
    monkeypatch.setattr(malloc, "_done", set())
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert malloc.limit_malloc_arenas() is False  # the user's environment wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert malloc.limit_malloc_arenas() is glibc
    malloc.release_free_memory()  # a no-op off glibc, never an error


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dense_places_every_value_with_empty_rows_and_any_dtype(dtype):
    import scipy.sparse as sp

    from cellweave.data import CellBatch

    rng = np.random.default_rng(4)
    D = rng.random((40, 30)) * (rng.random((40, 30)) < 0.2)
    D[[0, 7, 39]] = 0  # empty rows, first and last included
    X = sp.csr_matrix(D)
    b = CellBatch("rna", np.arange(40).astype(str), torch.arange(40), torch.from_numpy(X.data).to(dtype),
                  torch.from_numpy(X.indptr.astype(np.int64)), torch.from_numpy(X.indices.astype(np.int64)), 30,
                  torch.zeros(40))
    out = b.dense()
    assert out.dtype == dtype and out.shape == (40, 30)
    np.testing.assert_array_equal(out.float().numpy(), torch.from_numpy(D).to(dtype).float().numpy())
