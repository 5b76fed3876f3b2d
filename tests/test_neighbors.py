"""cellweave.neighbors against independent references: sklearn brute-force kNN and a dense numpy MNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from cellweave.errors import InputError
from cellweave.neighbors import choose_backend, knn, knn_graph, mnn_pairs
from cellweave.neighbors.faiss_index import faiss_gpu_available

METRICS = ("euclidean", "cosine")
K = 15


# ---------------------------------------------------------------- data and references

@pytest.fixture(scope="module")
def random_data() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1500, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def pbmc() -> np.ndarray:
    """Real data: the 700 x 50 PCA of scanpy's bundled pbmc68k_reduced."""
    sc = pytest.importorskip("scanpy", reason="scanpy (test extra) provides the pbmc68k_reduced data")
    return np.ascontiguousarray(sc.datasets.pbmc68k_reduced().obsm["X_pca"], dtype=np.float32)


@pytest.fixture(params=["random", "pbmc"])
def dataset(request, random_data, pbmc) -> np.ndarray:
    return random_data if request.param == "random" else pbmc


def sklearn_knn(data, k, metric, query=None):
    nn = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(data)
    return nn.kneighbors(query)


def true_distances(query, data, metric) -> np.ndarray:
    """Dense float64 distance matrix (cosine: 1 - cos, zero rows at distance 1 from everything)."""
    q, x = np.asarray(query, np.float64), np.asarray(data, np.float64)
    if metric == "euclidean":
        return cdist(q, x)
    qn = q / np.where((n := np.linalg.norm(q, axis=1, keepdims=True)) == 0, 1, n)
    xn = x / np.where((n := np.linalg.norm(x, axis=1, keepdims=True)) == 0, 1, n)
    return 1 - qn @ xn.T


def check_consistent(d, i, query, data, metric, exclude_self):
    """Returned distances are the true distances of the returned indices, sorted, without repeats or self."""
    dense = true_distances(query, data, metric)
    rows = np.arange(len(i))[:, None]
    np.testing.assert_allclose(dense[rows, i], d, atol=1e-5)
    assert np.all(np.diff(d, axis=1) >= 0)
    assert all(len(set(r)) == len(r) for r in i)
    if exclude_self:
        assert not np.any(i == np.arange(len(i))[:, None])


def check_exact(d, i, ref_d, ref_i, query, data, metric, exclude_self):
    """Identical to the reference up to ties: same sorted distances, and indices that have those distances."""
    assert i.dtype == np.int64 and i.shape == ref_i.shape
    np.testing.assert_allclose(d, ref_d, atol=1e-5)
    check_consistent(d, i, query, data, metric, exclude_self)
    assert (i == ref_i).mean() > 0.99


def recall(i, ref_i) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(i, ref_i, strict=True)]))


def mnn_reference(a, b, k, metric) -> set[tuple[int, int]]:
    """Mutual nearest neighbours by brute force: full float64 distances, argsort both ways, set intersection."""
    dense = true_distances(a, b, metric)
    near_b = np.argsort(dense, axis=1, kind="stable")[:, :min(k, len(b))]
    near_a = np.argsort(dense, axis=0, kind="stable")[:min(k, len(a)), :]
    return {(i, int(j)) for i in range(len(a)) for j in near_b[i] if i in near_a[:, j]}


def as_set(pairs: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in pairs.tolist()}


# ---------------------------------------------------------------- knn: exact backends

@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_exact_self_knn_matches_sklearn(dataset, backend, metric):
    ref_d, ref_i = sklearn_knn(dataset, K, metric)
    d, i = knn(dataset, K, metric=metric, backend=backend)
    assert isinstance(d, np.ndarray) and d.dtype == np.float32
    check_exact(d, i, ref_d, ref_i, dataset, dataset, metric, exclude_self=True)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_exact_query_knn_matches_sklearn(pbmc, backend, metric):
    data, query = pbmc[:500], pbmc[500:]
    ref_d, ref_i = sklearn_knn(data, K, metric, query)
    d, i = knn(data, K, query, metric=metric, backend=backend)
    check_exact(d, i, ref_d, ref_i, query, data, metric, exclude_self=False)


def test_torch_tensors_in_torch_tensors_out(pbmc):
    ref_d, ref_i = sklearn_knn(pbmc, K, "cosine")
    d, i = knn(torch.from_numpy(pbmc), K, metric="cosine", backend="faiss")
    assert isinstance(d, torch.Tensor) and isinstance(i, torch.Tensor) and i.dtype == torch.int64
    check_exact(d.numpy(), i.numpy(), ref_d, ref_i, pbmc, pbmc, "cosine", exclude_self=True)


@pytest.mark.parametrize("backend", ["torch", "faiss", "auto"])
def test_float64_kept_and_precise(pbmc, backend):
    x = pbmc.astype(np.float64)
    ref_d, ref_i = sklearn_knn(x, K, "euclidean")
    d, i = knn(x, K, backend=backend)
    assert d.dtype == np.float64
    np.testing.assert_allclose(d, ref_d, rtol=1e-12, atol=1e-10)
    assert (i == ref_i).mean() > 0.99


def test_integer_and_half_inputs_are_searched_as_float32():
    x = np.random.default_rng(1).integers(0, 50, size=(300, 6))
    ref_d, _ = sklearn_knn(x.astype(np.float64), 5, "euclidean")
    d, i = knn(x, 5, backend="torch")
    assert d.dtype == np.float32
    np.testing.assert_allclose(d, ref_d, atol=1e-5)
    d16, _ = knn(torch.from_numpy(x).half(), 5, backend="torch")
    assert d16.dtype == torch.float32
    np.testing.assert_allclose(d16.numpy(), ref_d, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("backend", ["torch", "faiss", "faiss-hnsw"])
def test_blocked_equals_unblocked(random_data, backend, metric):
    whole = knn(random_data, K, metric=metric, backend=backend)
    blocked = knn(random_data, K, metric=metric, backend=backend, block_size=97, progress=True)
    np.testing.assert_array_equal(blocked[1], whole[1])
    np.testing.assert_allclose(blocked[0], whole[0], rtol=0, atol=1e-6)


def test_cosine_zero_rows_are_at_distance_one(random_data):
    x = random_data[:400].copy()
    x[[3, 50, 77]] = 0
    ref_d, ref_i = sklearn_knn(x, 5, "cosine")
    for backend in ("torch", "faiss"):
        d, i = knn(x, 5, metric="cosine", backend=backend)
        assert np.isfinite(d).all()
        np.testing.assert_allclose(d[[3, 50, 77]], 1.0, atol=1e-6)
        np.testing.assert_allclose(d, ref_d, atol=1e-5)
        check_consistent(d, i, x, x, "cosine", exclude_self=True)


# ---------------------------------------------------------------- knn: self-exclusion

@pytest.mark.parametrize("backend", ["torch", "faiss", "faiss-hnsw"])
def test_self_exclusion(pbmc, backend):
    implicit = knn(pbmc, K, backend=backend)
    explicit = knn(pbmc, K, pbmc, backend=backend, exclude_self=True)
    np.testing.assert_array_equal(implicit[1], explicit[1])
    d, i = knn(pbmc, K, backend=backend, exclude_self=False)
    np.testing.assert_array_equal(i[:, 0], np.arange(len(pbmc)))
    np.testing.assert_allclose(d[:, 0], 0, atol=1e-6)
    np.testing.assert_array_equal(i[:, 1:], implicit[1][:, :-1])


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_duplicate_points_find_each_other_not_themselves(random_data, backend):
    x = np.concatenate([random_data[:200], random_data[:200]])
    d, i = knn(x, 3, backend=backend)
    twin = (np.arange(400) + 200) % 400
    np.testing.assert_array_equal(i[:, 0], twin)
    np.testing.assert_allclose(d[:, 0], 0, atol=1e-6)
    assert not np.any(i == np.arange(400)[:, None])


# ---------------------------------------------------------------- knn: approximate backends

@pytest.mark.parametrize("metric", METRICS)
def test_hnsw_recall(dataset, metric):
    _, ref_i = sklearn_knn(dataset, K, metric)
    d, i = knn(dataset, K, metric=metric, backend="faiss-hnsw")
    assert recall(i, ref_i) >= 0.95
    check_consistent(d, i, dataset, dataset, metric, exclude_self=True)


@pytest.mark.slow  # pynndescent compiles its numba kernels in every new process: ~30-60 s on 2 cores
@pytest.mark.parametrize("metric", METRICS)
def test_pynndescent_recall(dataset, metric):
    _, ref_i = sklearn_knn(dataset, K, metric)
    d, i = knn(dataset, K, metric=metric, backend="pynndescent")
    assert recall(i, ref_i) >= 0.95
    check_consistent(d, i, dataset, dataset, metric, exclude_self=True)
    data, query = dataset[:500], dataset[500:]
    _, ref_i = sklearn_knn(data, K, metric, query)
    d, i = knn(data, K, query, metric=metric, backend="pynndescent")
    assert recall(i, ref_i) >= 0.95
    check_consistent(d, i, query, data, metric, exclude_self=False)


# ---------------------------------------------------------------- knn: backend choice, GPU

def test_backend_choice():
    small, big, huge = torch.empty(1000, 2), torch.empty(50_001, 2), torch.empty(200_001, 2)
    assert choose_backend("auto", small, data_is_numpy=True) == "faiss"
    assert choose_backend("auto", big, data_is_numpy=True) == "faiss-hnsw"
    assert choose_backend("auto", big, data_is_numpy=False) == ("faiss-gpu" if faiss_gpu_available() else "torch")
    assert choose_backend("faiss", big, data_is_numpy=True) == "faiss"
    assert choose_backend("faiss", huge, data_is_numpy=True) == "faiss-hnsw"
    assert choose_backend("pynndescent", huge, data_is_numpy=True) == "pynndescent"


@pytest.mark.skipif(faiss_gpu_available(), reason="faiss sees a GPU here")
def test_faiss_gpu_unavailable_is_a_clear_error(pbmc):
    with pytest.raises(InputError, match="faiss-gpu"):
        knn(torch.from_numpy(pbmc), K, backend="faiss-gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", METRICS)
def test_cuda_backends_match_sklearn(pbmc, metric):
    ref_d, ref_i = sklearn_knn(pbmc, K, metric)
    x = torch.from_numpy(pbmc).cuda()
    backends = ["torch", "auto"] + (["faiss-gpu"] if faiss_gpu_available() else [])
    for backend in backends:
        d, i = knn(x, K, metric=metric, backend=backend, block_size=128)
        assert d.is_cuda and i.is_cuda
        check_exact(d.cpu().numpy(), i.cpu().numpy(), ref_d, ref_i, pbmc, pbmc, metric, exclude_self=True)
    pairs = mnn_pairs(x[:350], x[350:], k=K, metric=metric)
    assert pairs.is_cuda
    assert as_set(pairs) == mnn_reference(pbmc[:350], pbmc[350:], K, metric)


# ---------------------------------------------------------------- knn: edge cases and errors

def test_empty_query_gives_empty_result(pbmc):
    d, i = knn(pbmc, K, pbmc[:0])
    assert d.shape == (0, K) and i.shape == (0, K) and i.dtype == np.int64


def test_k_equal_to_all_other_points(random_data):
    x = random_data[:40]
    ref_d, ref_i = sklearn_knn(x, 39, "euclidean")
    d, i = knn(x, 39, backend="torch")
    check_exact(d, i, ref_d, ref_i, x, x, "euclidean", exclude_self=True)
    d, i = knn(x, 40, x[:5], backend="faiss")
    assert sorted(i[0]) == list(range(40))


@pytest.mark.parametrize("call, field", [
    (lambda x: knn(x, 700), "k"),
    (lambda x: knn(x, 701, x[:3]), "k"),
    (lambda x: knn(x, 0), "k"),
    (lambda x: knn(x, 2.5), "k"),
    (lambda x: knn(x, 5, x[:, :10]), "query"),
    (lambda x: knn(x[:, 0], 5), "data"),
    (lambda x: knn(x[:0], 5), "data"),
    (lambda x: knn(x, 5, metric="manhattan"), "metric"),
    (lambda x: knn(x, 5, backend="annoy"), "backend"),
    (lambda x: knn(x, 5, x[:10], exclude_self=True), "exclude_self"),
    (lambda x: knn(x, 5, block_size=0), "block_size"),
    (lambda x: knn(np.where(np.arange(700)[:, None] == 123, np.nan, x), 5), "data"),
    (lambda x: knn(x, 5, np.full((2, 50), np.inf)), "query"),
])
def test_bad_input_raises_input_error(pbmc, call, field):
    with pytest.raises(InputError) as err:
        call(pbmc)
    assert err.value.field == field


def test_nan_error_names_the_row(pbmc):
    x = pbmc.copy()
    x[123, 4] = np.nan
    with pytest.raises(InputError, match="row 123"):
        knn(x, 5, backend="faiss")


# ---------------------------------------------------------------- knn_graph

def test_knn_graph_from_zarr_and_dask_equals_numpy(tmp_path, random_data):
    zarr = pytest.importorskip("zarr")
    da = pytest.importorskip("dask.array")
    ref_d, ref_i = sklearn_knn(random_data, K, "cosine")
    z = zarr.create_array(tmp_path / "emb.zarr", data=random_data, chunks=(256, 16))
    dk = da.from_array(random_data.astype(np.float64), chunks=(300, 16))
    for X in (z, dk):
        d, i = knn_graph(X, K, metric="cosine", backend="torch", block_size=100)
        assert isinstance(d, np.ndarray)
        check_exact(d, i, ref_d, ref_i, random_data, random_data, "cosine", exclude_self=True)
    d, i = knn_graph(z, K, metric="cosine", backend="faiss-hnsw")
    assert recall(i, ref_i) >= 0.95


def test_knn_graph_rejects_sparse(random_data):
    import scipy.sparse as sp

    with pytest.raises(InputError, match="dense"):
        knn_graph(sp.csr_matrix(random_data), 5)


# ---------------------------------------------------------------- mnn_pairs

@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("sizes, k", [((300, 250), 30), ((200, 200), 5), ((120, 90), 1)])
def test_mnn_matches_dense_reference(metric, sizes, k):
    rng = np.random.default_rng(sum(sizes) + k)
    a = rng.standard_normal((sizes[0], 12)).astype(np.float32)
    b = rng.standard_normal((sizes[1], 12)).astype(np.float32) + 0.3
    pairs = mnn_pairs(torch.from_numpy(a), torch.from_numpy(b), k=k, metric=metric)
    assert pairs.dtype == torch.int64 and pairs.shape[1] == 2
    expected = mnn_reference(a, b, k, metric)
    assert len(expected) > 0
    assert as_set(pairs) == expected
    assert len(as_set(pairs)) == pairs.shape[0]
    keys = pairs[:, 0] * len(b) + pairs[:, 1]
    assert bool((keys[1:] > keys[:-1]).all())


@pytest.mark.parametrize("metric", METRICS)
def test_mnn_on_two_halves_of_pbmc(pbmc, metric):
    a, b = pbmc[:350], pbmc[350:]
    pairs = mnn_pairs(torch.from_numpy(a), torch.from_numpy(b), k=30, metric=metric)
    assert as_set(pairs) == mnn_reference(a, b, 30, metric)


def test_mnn_k_larger_than_a_batch():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 8)), rng.standard_normal((40, 8))
    pairs = mnn_pairs(torch.from_numpy(a), torch.from_numpy(b), k=30)
    # every cell of a is among the (clipped) 5 neighbours of every cell of b: all of a's 30 choices are mutual
    assert pairs.shape == (5 * 30, 2)
    assert as_set(pairs) == mnn_reference(a, b, 30, "cosine")


def test_mnn_empty_batches():
    x = torch.randn(10, 4)
    for a, b in ((x[:0], x), (x, x[:0])):
        pairs = mnn_pairs(a, b)
        assert pairs.shape == (0, 2) and pairs.dtype == torch.int64


def test_mnn_zero_rows_take_no_part():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((60, 10)), rng.standard_normal((50, 10))
    zero_a, zero_b = [0, 7, 33], [5, 49]
    a[zero_a], b[zero_b] = 0, 0
    pairs = mnn_pairs(torch.from_numpy(a), torch.from_numpy(b), k=8, metric="cosine")
    keep_a, keep_b = np.setdiff1d(np.arange(60), zero_a), np.setdiff1d(np.arange(50), zero_b)
    expected = {(int(keep_a[i]), int(keep_b[j])) for i, j in mnn_reference(a[keep_a], b[keep_b], 8, "cosine")}
    assert as_set(pairs) == expected
    only_zero = mnn_pairs(torch.zeros(4, 10), torch.from_numpy(b), k=3)
    assert only_zero.shape == (0, 2)


def test_mnn_ignores_autocast_and_gradients():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((80, 16)).astype(np.float32), rng.standard_normal((70, 16)).astype(np.float32)
    ta = torch.from_numpy(a).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pairs = mnn_pairs(ta, torch.from_numpy(b), k=10)
    assert not pairs.requires_grad
    assert as_set(pairs) == mnn_reference(a, b, 10, "cosine")


@pytest.mark.parametrize("a, b, k, field", [
    (torch.randn(5, 3), torch.randn(5, 4), 3, "a, b"),
    (torch.randn(5), torch.randn(5, 4), 3, "a, b"),
    (torch.randn(5, 4), torch.randn(5, 4), 0, "k"),
    (torch.full((5, 4), float("nan")), torch.randn(5, 4), 3, "a, b"),
    (torch.randn(5, 4), torch.randn(5, 4), 3.0, "k"),
])
def test_mnn_bad_input(a, b, k, field):
    with pytest.raises(InputError) as err:
        mnn_pairs(a, b, k=k)
    assert err.value.field == field
    with pytest.raises(InputError, match="metric"):
        mnn_pairs(torch.randn(3, 2), torch.randn(3, 2), metric="jaccard")
