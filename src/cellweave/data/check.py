"""Input checks before any work: one streamed pass per store (bounded memory) and checks across modalities.

Per store (:func:`scan_store`):

* the matrix can be read: for a Zarr store every stored chunk (or shard) of ``X`` decodes and none is
  missing (zarr would silently read a missing one as zeros), and the CSR arrays agree with each other; for
  other stores every row range reads. A bad chunk is named by its file;
* values are finite and, in a counts modality (``kind="counts"``: normalize_total and count likelihoods),
  non-negative integers (:class:`~cellweave.data.validate.ValueChecker`, as at conversion);
* the store has cells and features, ids are unique, and no cell of a counts modality is empty (library
  size 0). Features that are zero in every cell are only noted: real data keep them.

Across modalities (:func:`check_inputs`): obs columns a model uses (batch, labels) exist in every modality,
and every modality pair of a links table matches features of both stores.

Memory is one chunk of rows or one Zarr storage unit (plus the CSR row offsets, 8 bytes a cell, which the reader
keeps anyway). A clean store's report is cached beside the data (``stats_dir/checks.json``) under a fingerprint
of its files (names, sizes, modification times), so later fits read nothing again until the data change; a store
with problems is never cached.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from .fingerprint import data_fingerprint
from .open import open_modality
from .spec import StoreSpec, as_spec
from .source import Matrix
from .store import ModalityStore
from .validate import ValueChecker, duplicate_ids

#: Bump when the checks change, so cached reports of older checks are not trusted.
CHECKS_VERSION = 1
#: Rows per read of the value pass.
CHECK_ROWS = 8192
#: File name of the cached report in ``store.stats_dir``.
CACHE_FILE = "checks.json"
REWRITE_FIX = ("the store is corrupt or was cut short while being written or copied: write it again from its source "
               "(`cellweave convert INPUT OUT`)")


@dataclass
class StoreReport:
    """What the streamed pass found in one store.

    Attributes
    ----------
    path, modality, kind
        The store, its modality name and matrix kind (``counts`` or ``normalized``).
    n_obs, n_vars
        Cells and features.
    problems
        One :class:`~cellweave.errors.InputError` per problem found (empty: the store is fine).
    notes
        Remarks that are not errors (e.g. features zero in every cell).
    """

    path: str
    modality: str
    kind: str
    n_obs: int
    n_vars: int
    problems: list[InputError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems

    def summary(self) -> str:
        """One line: status, modality, path, kind and shape."""
        status = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        return f"{status}: {self.modality} {self.path} ({self.kind}, {self.n_obs} cells x {self.n_vars} features)"

    def to_json(self) -> dict[str, Any]:
        """Plain values (for the cache)."""
        return {"path": self.path, "modality": self.modality, "kind": self.kind, "n_obs": self.n_obs, "n_vars": self.n_vars,
                "problems": [[p.source, p.field, p.problem, p.fix] for p in self.problems], "notes": list(self.notes)}

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> StoreReport:
        """Inverse of :meth:`to_json`."""
        return cls(values["path"], values["modality"], values["kind"], int(values["n_obs"]), int(values["n_vars"]),
                   [InputError(*p) for p in values["problems"]], list(values["notes"]))


@dataclass
class InputsReport:
    """Reports of every store and the problems found across modalities.

    Attributes
    ----------
    stores
        Modality name -> its :class:`StoreReport`.
    across
        Problems between modalities (obs columns, links).
    notes
        Remarks across modalities that are not errors (e.g. link rows naming features no store has).
    """

    stores: dict[str, StoreReport]
    across: list[InputError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[InputError]:
        """Every problem: per store in order, then across modalities."""
        return [p for r in self.stores.values() for p in r.problems] + list(self.across)

    def raise_first(self) -> None:
        """Raise the first problem (nothing when there is none)."""
        if self.problems:
            raise self.problems[0]


def open_store(spec: str | os.PathLike | StoreSpec, modality: str | None = None, kind: str | None = None) -> ModalityStore:
    """:func:`~cellweave.data.open_modality` whose failures are all :class:`InputError` naming the file.

    A Zarr store that fails to open because of a damaged chunk gets that chunk named.

    Raises
    ------
    InputError
        When the store cannot be opened.
    """
    try:
        return open_modality(spec, modality, kind=kind)
    except InputError:
        raise
    except Exception as exc:  # any reader failure on open means a damaged or foreign file
        path = Path(as_spec(spec).path)
        damaged = _zarr_integrity(str(path)) if path.is_dir() else []
        if damaged:
            raise damaged[0] from exc
        raise InputError(spec, "store", f"cannot be opened ({type(exc).__name__}: {exc})", REWRITE_FIX) from exc


def open_checked(spec: str | os.PathLike | StoreSpec, modality: str | None = None, kind: str | None = None,
                 progress: bool = False, **options: str | None) -> ModalityStore:
    """Open a store for reading and check it first (:func:`scan_store`): what every reader of a whole store
    (``stats``, ``convert``, ``fit``) goes through, so a damaged store is refused before anything is computed or
    written. ``options``: store options (:class:`~cellweave.data.spec.StoreSpec`).

    Raises
    ------
    InputError
        The first problem found.
    """
    store = open_store(as_spec(spec, **options) if options else spec, modality, kind)
    report = scan_store(store, progress=progress)
    if report.problems:
        raise report.problems[0]
    return store


def scan_store(store: ModalityStore, chunk_rows: int = CHECK_ROWS, cache: bool = True, progress: bool = False) -> StoreReport:
    """Check one store in one streamed pass (see the module docstring).

    Parameters
    ----------
    store
        The modality.
    chunk_rows
        Rows per read.
    cache
        Reuse (and write) the report kept beside the data when the data did not change.
    progress
        Show a progress bar.

    Returns
    -------
    StoreReport
    """
    fingerprint = data_fingerprint(store, f"checks {CHECKS_VERSION} {store.kind}") if cache else None  # counts: stricter
    cached = _load_cache(store, fingerprint)
    if cached is not None:
        cached.path, cached.modality = store.path, store.modality
        return cached
    report = StoreReport(store.path, store.modality, store.kind, store.n_obs, store.n_vars)
    if store.n_obs == 0:
        report.problems.append(InputError(store.path, "obs", "the store has no cells", "pass a store that holds cells"))
    if store.n_vars == 0:
        report.problems.append(InputError(store.path, "var", "the store has no features", "pass a store that holds features"))
    damaged = _zarr_integrity(store.path) if _is_zarr(store) else []
    report.problems.extend(damaged)
    if damaged:
        return report
    dup = duplicate_ids(store.path, "var_names (feature names)", store.var_names)
    if dup is not None:
        report.problems.append(dup)
    try:
        dup = duplicate_ids(store.path, "obs_names (cell ids)", store.all_obs_names())
    except Exception as exc:  # noqa: BLE001 - a damaged obs table
        dup = InputError(store.path, "obs_names (cell ids)", f"cannot be read ({type(exc).__name__}: {exc})", REWRITE_FIX)
    if dup is not None:
        report.problems.append(dup)
    if store.n_obs and store.n_vars:
        _scan_values(store, report, chunk_rows, progress)
    if report.ok and fingerprint is not None:
        _save_cache(store, fingerprint, report)
    return report


def check_obs_keys(stores: Mapping[str, ModalityStore], keys: Sequence[str | None]) -> list[InputError]:
    """Problems with obs columns that must exist in every modality (``None`` keys are skipped)."""
    problems = []
    for key in dict.fromkeys(k for k in keys if k is not None):
        having = [m for m, s in stores.items() if key in s.obs_keys]
        for m, s in stores.items():
            if key in s.obs_keys:
                continue
            others = f"; modalities {having} have it" if having else ""
            problems.append(InputError(s.path, f"obs['{key}']", f"modality {m!r} has no such column{others} "
                                       f"(this store has: {', '.join(s.obs_keys) or 'none'})",
                                       "add the column to every modality under the same name and convert again, or do not "
                                       "use it"))
    return problems


def check_links(stores: Mapping[str, ModalityStore], links: str | os.PathLike,
                notes: list[str] | None = None) -> list[InputError]:
    """Problems with a links table: unreadable, naming another modality, or a pair matching no feature.

    Rows naming a feature that its modality's store does not have are not errors (a generic table names more
    features than one data set holds) but are never dropped silently: one note per modality pair, with the count
    and examples, is appended to ``notes``.
    """
    from ..links import read_links, require_links

    try:
        tables = read_links(links, modalities=list(stores))
    except InputError as exc:
        return [exc]
    problems = []
    for lk in tables:
        s, t = lk.source_modality, lk.target_modality
        try:
            require_links(lk, 1, list(stores[s].var_names), list(stores[t].var_names))
        except InputError as exc:
            problems.append(InputError(links, f"links {s} -> {t}", exc.problem, exc.fix))
            continue
        if notes is not None:
            note = _unknown_link_features(lk, stores[s].var_names, stores[t].var_names)
            if note:
                notes.append(f"{links}: links {s} -> {t}: {note}")
    return problems


def _unknown_link_features(lk: Any, source_names: Any, target_names: Any, n_examples: int = 3) -> str | None:
    """How many rows of a pair's links name features absent from the stores, with examples (``None``: none)."""
    table = lk.table
    src_missing = ~table["source_feature"].isin(source_names)
    tgt_missing = ~table["target_feature"].isin(target_names)
    bad = src_missing | tgt_missing
    if not bad.any():
        return None
    parts = []
    for modality, column, missing in ((lk.source_modality, "source_feature", src_missing),
                                      (lk.target_modality, "target_feature", tgt_missing)):
        names = table.loc[missing, column].drop_duplicates()
        if len(names):
            parts.append(f"{len(names)} {modality} feature(s) absent from its store, e.g. {names[:n_examples].tolist()}")
    return (f"{int(bad.sum())} of {len(table)} rows name features the stores do not have and are ignored ("
            + "; ".join(parts) + ")")


def check_inputs(stores: Mapping[str, ModalityStore], obs_keys: Sequence[str | None] = (),
                 links: str | os.PathLike | None = None, cache: bool = True, progress: bool = False) -> InputsReport:
    """Check every store (:func:`scan_store`) and what they must agree on.

    Parameters
    ----------
    stores
        Modality name -> store.
    obs_keys
        Obs columns that must exist in every modality (batch key, label key ...).
    links
        A links TSV whose modality pairs must each match features of both stores.
    cache, progress
        See :func:`scan_store`.

    Returns
    -------
    InputsReport
    """
    report = InputsReport({m: scan_store(s, cache=cache, progress=progress) for m, s in stores.items()})
    report.across.extend(check_obs_keys(stores, obs_keys))
    if links is not None:
        report.across.extend(check_links(stores, links, report.notes))
    return report


# ---------------------------------------------------------------------------------------- the value pass
def _nonzero_counts(X: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """Nonzero values per row and per column of a chunk."""
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        nz = X.data != 0
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        return np.bincount(rows[nz], minlength=X.shape[0]), np.bincount(X.indices[nz], minlength=X.shape[1])
    nz = np.asarray(X) != 0
    return nz.sum(1), nz.sum(0)


def _scan_values(store: ModalityStore, report: StoreReport, chunk_rows: int, progress: bool) -> None:
    """Values, empty cells and empty features, chunk by chunk; stops at the first unreadable chunk or bad value."""
    from tqdm.auto import tqdm

    checker = ValueChecker(store.path, store.kind)
    n = store.n_obs
    feature_nnz = np.zeros(store.n_vars, dtype=np.int64)
    empty, first_empty = 0, None
    with tqdm(total=n, desc=f"check {store.modality}", unit="cells", disable=not progress) as bar:
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            try:
                X = store.read_X([(start, stop)])
            except Exception as exc:  # noqa: BLE001 - any reader failure here is a damaged file
                report.problems.append(InputError(store.path, f"X rows {start}..{stop}",
                                                  f"cannot be read ({type(exc).__name__}: {exc})", REWRITE_FIX))
                return
            try:
                checker.check(start, X)
            except InputError as exc:
                report.problems.append(exc)
                return
            row_nnz, col_nnz = _nonzero_counts(X)
            feature_nnz += col_nnz
            zero_rows = np.flatnonzero(row_nnz == 0)
            if zero_rows.size and first_empty is None:
                first_empty = start + int(zero_rows[0])
            empty += zero_rows.size
            bar.update(stop - start)
    if empty:
        cell = store.obs_names([(first_empty, first_empty + 1)])[0]
        text = f"{empty} of {n} cells have no nonzero value, e.g. row {first_empty} (cell {cell!r})"
        if store.kind == "counts":
            report.problems.append(InputError(store.path, "X", f"{text}: a counts modality needs a library size above 0",
                                              "remove the empty cells (e.g. scanpy.pp.filter_cells(adata, min_counts=1)) "
                                              "and convert again"))
        else:
            report.notes.append(text)
    unused = int((feature_nnz == 0).sum())
    if unused:
        names = store.var_names[feature_nnz == 0][:3].tolist()
        report.notes.append(f"{unused} of {store.n_vars} features are zero in every cell (e.g. {names}); they carry "
                            "no information (scanpy.pp.filter_genes(adata, min_cells=1) drops them)")


# ---------------------------------------------------------------------------------------- Zarr integrity
def _is_zarr(store: ModalityStore) -> bool:
    from .zarr_store import ZarrStore

    return isinstance(store, ZarrStore)


def _units(arr) -> Sequence[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """Grid coordinates and selections of an array's storage units (shards when sharded, else chunks)."""
    unit = arr.shards or arr.chunks
    grid = [range(math.ceil(s / u)) for s, u in zip(arr.shape, unit)]
    return [(c, tuple(slice(i * u, min((i + 1) * u, s)) for i, u, s in zip(c, unit, arr.shape)))
            for c in itertools.product(*grid)]


def first_bad_unit(root: str, label: str, arr, check: Callable[[np.ndarray], str | None] | None = None) -> InputError | None:
    """The first storage unit of ``arr`` that is missing, does not decode, or fails ``check`` (a message)."""
    from zarr.core.sync import sync

    for coords, sel in _units(arr):
        key = arr.metadata.encode_chunk_key(coords)
        stored = f"{arr.path}/{key}" if arr.path else key
        where = f"{root}/{stored}"
        if not sync(arr.store.exists(stored)):
            return InputError(where, label, f"chunk {key} is missing (zarr would read it as zeros)", REWRITE_FIX)
        try:
            values = arr[sel]
        except Exception as exc:  # noqa: BLE001 - codec errors have many types
            return InputError(where, label, f"chunk {key} cannot be decoded ({type(exc).__name__}: {exc})", REWRITE_FIX)
        message = check(values) if check is not None else None
        if message:
            return InputError(where, label, f"chunk {key}: {message}", REWRITE_FIX)
    return None


def _zarr_integrity(path: str) -> list[InputError]:
    """Every storage unit of ``X`` decodes and none is missing; CSR arrays agree. Empty when all is well."""
    import zarr

    try:
        x = zarr.open_group(path, mode="r", use_consolidated=False)["X"]  # the arrays' own metadata, as the reader
    except Exception:  # noqa: BLE001 - not a Zarr store with an X: the store's own reader says what is wrong
        return []
    if isinstance(x, zarr.Array):
        bad = first_bad_unit(path, "X", x)
        return [bad] if bad is not None else []
    missing = [k for k in ("data", "indices", "indptr") if k not in x]
    if missing:
        return [InputError(path, "X", f"the sparse matrix lacks {missing}", REWRITE_FIX)]
    n_obs, n_vars = (int(v) for v in x.attrs.get("shape", (x["indptr"].shape[0] - 1, 0)))

    def in_range(idx: np.ndarray) -> str | None:
        if idx.size and (idx.min() < 0 or idx.max() >= n_vars):
            return f"feature indices outside [0, {n_vars})"
        return None

    def monotone(ptr: np.ndarray) -> str | None:
        if ptr.size and (ptr.min() < 0 or (np.diff(ptr) < 0).any()):
            return "row offsets decrease (or are negative)"
        return None

    for name, check in (("indptr", monotone), ("indices", in_range if n_vars else None), ("data", None)):
        bad = first_bad_unit(path, f"X/{name}", x[name], check)
        if bad is not None:
            return [bad]
    indptr = np.asarray(x["indptr"][:], dtype=np.int64)
    nnz = x["data"].shape[0]
    where = f"{path}/X/indptr"
    if len(indptr) != n_obs + 1:
        problem = f"has {len(indptr)} entries for {n_obs} cells (expected {n_obs + 1})"
    elif indptr[0] != 0 or (np.diff(indptr) < 0).any():
        problem = f"starts at {indptr[0]} or decreases between chunks (row offsets start at 0 and never decrease)"
    elif indptr[-1] != nnz or x["indices"].shape[0] != nnz:
        problem = f"ends at {indptr[-1]}, but X/data holds {nnz} values and X/indices {x['indices'].shape[0]}"
    else:
        return []
    return [InputError(where, "X/indptr", problem, REWRITE_FIX)]


# ---------------------------------------------------------------------------------------- the cache
def _load_cache(store: ModalityStore, fingerprint: str | None) -> StoreReport | None:
    if fingerprint is None:
        return None
    try:
        saved = json.loads((Path(store.stats_dir) / CACHE_FILE).read_text())
        if saved.get("fingerprint") == fingerprint:
            return StoreReport.from_json(saved["report"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def _save_cache(store: ModalityStore, fingerprint: str, report: StoreReport) -> None:
    """Keep a clean report beside the data; a read-only location just means no cache."""
    from .atomic import atomic_write_bytes

    try:
        directory = Path(store.stats_dir)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / CACHE_FILE, json.dumps({"fingerprint": fingerprint, "report": report.to_json()}).encode())
    except OSError:
        return

