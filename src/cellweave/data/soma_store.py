"""TileDB-SOMA modality stores: one Experiment, one Measurement per modality.

:func:`write_soma` streams :class:`~cellweave.data.source.ChunkSource` objects into a new SOMA Experiment,
chunk by chunk: every source becomes a measurement ``ms[modality]`` whose ``X["data"]`` is a float32
``SparseNDArray`` (dense sources store their nonzeros and are flagged dense in the measurement metadata).
Paired sources share their cells: ``obs`` holds each cell once, with ``has_<modality>`` columns when not
every cell is in every measurement.

:class:`SomaStore` reads one measurement by row ranges with a single coordinate read per call. It also
opens experiments written by ``tiledbsoma.io.from_anndata`` / ``from_h5ad``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
import tiledbsoma as soma

from ..errors import InputError
from .atomic import atomic_output
from .kind import KIND_SAMPLE, infer_kind
from .source import ChunkSource, Kind, Matrix
from .spec import FLAGS, StoreSpec, check_filter_columns
from .store import ModalityStore, Ranges
from .validate import ValueChecker, check_tables, obs_for_storage

DEFAULT_CHUNK_ROWS = 4096
WRITE_NNZ = 1 << 23  # nonzeros buffered per X write (one fragment each; ~160 MB of coordinates)
X_CAPACITY = 1 << 14  # nonzeros per X data tile: small tiles make scattered row reads cheap
X_ROW_TILE = 2048  # cells per X space tile

JOINID = "soma_joinid"
OBS_ID = "obs_id"
VAR_ID = "var_id"
FEATURE_NAME = "feature_name"  # CELLxGENE Census: gene symbol
FEATURE_ID = "feature_id"  # CELLxGENE Census: Ensembl id
EXAMPLE_FILTERS = {"obs_filter": "\"tissue_general == 'lung' and is_primary_data == True\"",
                   "var_filter": "\"feature_name in ['CD3E', 'MS4A1']\""}
DATA_LAYER = "data"
META_KIND = "cellweave_kind"
META_DENSE = "cellweave_dense"


def _has_column(modality: str) -> str:
    return f"has_{modality}"


# ----------------------------------------------------------------------------------------------- writing


def _union_column(parts: list[tuple[pd.Series, np.ndarray]], n: int) -> pd.Series:
    """One obs column over all ``n`` cells from the sources that have it (first non-missing value wins).

    ``parts`` pairs each source's column with the joinids of that source's rows.
    """
    strings = any(isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object for s, _ in parts)
    out: pd.Series | None = None
    for column, joinids in parts:
        values = column.to_numpy(dtype=object) if strings else column.array
        part = pd.Series(values, index=joinids).reindex(pd.RangeIndex(n))
        out = part if out is None else out.where(out.notna(), part)
    assert out is not None
    cats = [s.cat for s, _ in parts if isinstance(s.dtype, pd.CategoricalDtype)]
    if cats:
        categories = pd.unique(np.concatenate([c.categories.to_numpy(dtype=object) for c in cats]))
        return pd.Series(pd.Categorical(out, categories=categories, ordered=bool(cats[0].ordered)))
    if out.dtype == object and all(pd.api.types.is_bool_dtype(s.dtype) for s, _ in parts):
        return out.astype("boolean")
    return out


def _check_reserved(source: ChunkSource, table: pd.DataFrame, field: str, reserved: set[str]) -> None:
    clash = sorted(reserved.intersection(map(str, table.columns)))
    if clash:
        raise InputError(
            source.name,
            field,
            f"column names {clash} are reserved by the SOMA layout",
            "rename these columns before converting",
        )


def _union_obs(sources: Sequence[ChunkSource]) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Obs over the union of cells (first appearance order) and each source's row -> joinid map."""
    tables = [obs_for_storage(s.obs) for s in sources]
    ids = pd.Index(pd.unique(np.concatenate([t.index.to_numpy(dtype=object) for t in tables])))
    joinids = [ids.get_indexer(t.index).astype(np.int64) for t in tables]
    n = len(ids)
    names = list(dict.fromkeys(str(c) for t in tables for c in t.columns))
    columns = {
        name: _union_column([(t[name], j) for t, j in zip(tables, joinids) if name in t.columns], n) for name in names
    }
    obs = pd.DataFrame({JOINID: np.arange(n, dtype=np.int64), OBS_ID: ids.to_numpy(dtype=object), **columns})
    if any(len(j) != n for j in joinids):
        for source, j in zip(sources, joinids):
            has = np.zeros(n, dtype=bool)
            has[j] = True
            obs[_has_column(source.modality)] = has
    return obs, joinids


def _var_table(source: ChunkSource) -> pd.DataFrame:
    var = obs_for_storage(source.var)
    table = var.reset_index(drop=True)
    table.insert(0, VAR_ID, var.index.to_numpy(dtype=object))
    table.insert(0, JOINID, np.arange(len(var), dtype=np.int64))
    return table


def _write_dataframe(uri: str, df: pd.DataFrame, context: soma.SOMATileDBContext) -> soma.DataFrame:
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    with soma.DataFrame.create(uri, schema=table.schema, domain=[(0, len(df) - 1)], context=context) as out:
        out.write(table)
    return out


def _coo(X: Matrix, row_joinids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nonzero coordinates of a chunk: (cell joinids, feature joinids, float32 values)."""
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        if not X.has_canonical_format:
            X = X.copy()
            X.sum_duplicates()
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        cols, values = X.indices, X.data
    else:
        X = np.asarray(X)
        rows, cols = np.nonzero(X)
        values = X[rows, cols]
    return row_joinids[rows], cols.astype(np.int64), values.astype(np.float32, copy=False)


def _x_create_options(n_vars: int) -> soma.TileDBCreateOptions:
    """X tiling: one space tile spans every feature, so the global order is plain (cell, feature) order.

    Whole rows are then contiguous on disk, already-sorted chunks can be written without a sort, and small
    data tiles keep scattered row reads from decompressing much more than they return.
    """
    return soma.TileDBCreateOptions(
        capacity=X_CAPACITY, dims={"soma_dim_0": {"tile": X_ROW_TILE}, "soma_dim_1": {"tile": n_vars}}
    )


def _in_global_order(i: np.ndarray, j: np.ndarray) -> bool:
    """Whether coordinates are strictly increasing in (cell, feature) order (the X global order)."""
    di, dj = np.diff(i), np.diff(j)
    return bool(np.all((di > 0) | ((di == 0) & (dj > 0))))


class SparseWriter:
    """Buffer COO coordinates and write them to a SparseNDArray in few, large fragments.

    Buffers already in (cell, feature) order are written in global order, skipping TileDB's sort (about
    five times faster); others are sorted by TileDB.
    """

    def __init__(self, array: soma.SparseNDArray) -> None:
        self.array = array
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._nnz = 0

    def append(self, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> None:
        """Add the coordinates of one chunk (cell joinids, feature joinids, values)."""
        self._parts.append((i, j, d))
        self._nnz += len(d)
        if self._nnz >= WRITE_NNZ:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered."""
        if self._nnz:
            i, j, d = (np.concatenate(p) for p in zip(*self._parts))
            options = soma.TileDBWriteOptions(sort_coords=not _in_global_order(i, j))
            table = pa.table({"soma_dim_0": pa.array(i), "soma_dim_1": pa.array(j), "soma_data": pa.array(d)})
            self.array.write(table, platform_config=options)
        self._parts, self._nnz = [], 0


def _check_modalities(sources: Sequence[ChunkSource]) -> None:
    seen: dict[str, str] = {}
    for source in sources:
        mod = source.modality
        if not mod or "/" in mod:
            raise InputError(
                source.name, "modality", f"invalid measurement name {mod!r}", "use a non-empty name without '/'"
            )
        if mod in seen:
            raise InputError(
                source.name,
                "modality",
                f"modality {mod!r} is also used by {seen[mod]}",
                "give every source its own modality name (one SOMA measurement each)",
            )
        seen[mod] = source.name


def write_soma(
    sources: Sequence[ChunkSource],
    out: str | os.PathLike,
    overwrite: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write modalities to one SOMA Experiment at ``out``, one measurement per source, chunk by chunk.

    Cells are joined by id: ``obs`` holds every cell once, in order of first appearance, with the union of
    the sources' obs columns plus ``obs_id``; when some cell is missing from some measurement, a boolean
    ``has_<modality>`` column per modality says which cells each measurement has. Each measurement stores
    ``var`` (``var_id`` plus the source's columns), ``X["data"]`` (float32 ``SparseNDArray`` indexed by cell
    and feature joinids) and the metadata ``cellweave_kind`` and ``cellweave_dense``.

    Tables are checked before anything is written and values as they stream (NaN/Inf, negative or
    fractional counts). On any error nothing is left under ``out``.

    Parameters
    ----------
    sources
        The modalities; their ``modality`` names become measurement names and must be unique.
    out
        Target directory of the experiment.
    overwrite
        Replace an existing ``out``.
    chunk_rows
        Rows read from a source at a time.
    progress
        Optional callable ``progress(n_rows)`` called after each chunk.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    InputError
        No sources, duplicate modality names, reserved column names, bad ids or values, or ``out`` exists
        without ``overwrite``.
    """
    if not sources:
        raise InputError(str(out), "sources", "no modality to write", "pass at least one source")
    _check_modalities(sources)
    for source in sources:
        check_tables(source)
    has = {_has_column(s.modality) for s in sources}
    for source in sources:
        _check_reserved(source, source.obs, "obs columns", {JOINID, OBS_ID, *has})
        _check_reserved(source, source.var, "var columns", {JOINID, VAR_ID})
    obs, row_joinids = _union_obs(sources)

    with atomic_output(out, overwrite) as tmp:
        context = soma.SOMATileDBContext()
        uri = str(tmp)
        with soma.Experiment.create(uri, context=context) as exp:
            exp.set("obs", _write_dataframe(f"{uri}/obs", obs, context), use_relative_uri=True)
            with soma.Collection.create(f"{uri}/ms", context=context) as ms:
                exp.set("ms", ms, use_relative_uri=True)
                for source, joinids in zip(sources, row_joinids):
                    _write_measurement(
                        ms, f"{uri}/ms/{source.modality}", source, joinids, len(obs), chunk_rows, progress, context
                    )
    return Path(out)


def _write_measurement(
    ms: soma.Collection,
    uri: str,
    source: ChunkSource,
    row_joinids: np.ndarray,
    n_cells: int,
    chunk_rows: int,
    progress: Callable[[int], None] | None,
    context: soma.SOMATileDBContext,
) -> None:
    n_vars = source.var.shape[0]
    checker = ValueChecker(source.name, source.kind)
    with soma.Measurement.create(uri, context=context) as meas:
        ms.set(source.modality, meas, use_relative_uri=True)
        meas.set("var", _write_dataframe(f"{uri}/var", _var_table(source), context), use_relative_uri=True)
        with soma.Collection.create(f"{uri}/X", context=context) as layers:
            meas.set("X", layers, use_relative_uri=True)
            with soma.SparseNDArray.create(
                f"{uri}/X/{DATA_LAYER}", type=pa.float32(), shape=(n_cells, n_vars),
                platform_config=_x_create_options(n_vars), context=context,
            ) as array:
                layers.set(DATA_LAYER, array, use_relative_uri=True)
                writer = SparseWriter(array)
                n_rows = 0
                for start, X in source.iter_chunks(chunk_rows):
                    if X.shape[1] != n_vars or start != n_rows:
                        raise InputError(
                            source.name,
                            "X",
                            f"chunk at row {start} has shape {X.shape}; expected {n_vars} columns from row {n_rows}",
                            "the matrix must match var and come in row order",
                        )
                    checker.check(start, X)
                    writer.append(*_coo(X, row_joinids[start : start + X.shape[0]]))
                    n_rows += X.shape[0]
                    if progress is not None:
                        progress(X.shape[0])
                if n_rows != len(row_joinids):
                    raise InputError(
                        source.name,
                        "X",
                        f"{n_rows} matrix rows for {len(row_joinids)} cells in obs",
                        "obs and X must have the same cells",
                    )
                writer.flush()
        meas.metadata[META_KIND] = checker.kind or "counts"
        meas.metadata[META_DENSE] = not source.sparse


# ----------------------------------------------------------------------------------------------- reading


def _range_rows(ranges: Ranges) -> np.ndarray:
    """Row positions of ``[start, stop)`` ranges, concatenated."""
    ranges = [(a, b) for a, b in ranges if b > a]
    if not ranges:
        return np.zeros(0, dtype=np.int64)
    if len(ranges) == 1:
        return np.arange(ranges[0][0], ranges[0][1], dtype=np.int64)
    starts = np.array([a for a, _ in ranges], dtype=np.int64)
    lengths = np.array([b - a for a, b in ranges], dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) + offsets


class _Lookup:
    """Sorted unique joinids to read, and how to map read results back to the requested order."""

    def __init__(self, joinids: np.ndarray) -> None:
        if len(joinids) < 2 or bool(np.all(joinids[1:] > joinids[:-1])):
            self.unique, self.take = joinids, None
        else:
            self.unique, self.take = np.unique(joinids, return_inverse=True)
        self.contiguous = bool(len(self.unique)) and int(self.unique[-1] - self.unique[0]) + 1 == len(self.unique)

    @property
    def coords(self) -> slice | np.ndarray:
        """Coordinates for a SOMA read (a closed slice when the joinids are contiguous)."""
        return slice(int(self.unique[0]), int(self.unique[-1])) if self.contiguous else self.unique

    def positions(self, joinids: np.ndarray) -> np.ndarray:
        """Positions in ``unique`` of joinids returned by a read."""
        return joinids - self.unique[0] if self.contiguous else np.searchsorted(self.unique, joinids)


def _string_column(schema: pa.Schema, preferred: str, skip: set[str]) -> str | None:
    if preferred in schema.names:
        return preferred
    for field in schema:
        value_type = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if field.name not in skip and (pa.types.is_string(value_type) or pa.types.is_large_string(value_type)):
            return field.name
    return None


def _sorted_by_joinid(table: pa.Table) -> pa.Table:
    joinids = table[JOINID].to_numpy()
    if len(joinids) > 1 and not bool(np.all(joinids[1:] > joinids[:-1])):
        table = table.take(pa.array(np.argsort(joinids, kind="stable")))
    return table


def _as_pandas(column: pa.Array, name: str) -> pd.Series:
    """An Arrow column as a pandas Series; string columns become categorical."""
    values = column.to_pandas().rename(name).reset_index(drop=True)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        values = values.astype("category")
    return values


def _row_runs(dim0: np.ndarray, lookup: _Lookup) -> tuple[np.ndarray, np.ndarray] | None:
    """Group read results by cell when they come cell by cell (always so for X written by :func:`write_soma`).

    Returns the position (in ``lookup.unique``) of each run of equal cell joinids and the run lengths, or
    ``None`` when the cells come interleaved.
    """
    if len(dim0) > 1 and not bool(np.all(dim0[1:] >= dim0[:-1])):
        return None
    starts = np.flatnonzero(np.diff(dim0, prepend=-1))
    lengths = np.diff(np.append(starts, len(dim0)))
    return lookup.positions(dim0[starts]), lengths


class SomaStore(ModalityStore):
    """One measurement of a TileDB-SOMA Experiment, read by row ranges, optionally through a query.

    Rows are the cells that have this measurement (``obs['has_<measurement>']`` when present, else every
    obs row) and pass ``obs_filter``, in ``soma_joinid`` order; columns are the features that pass
    ``var_filter``, in ``soma_joinid`` order. Both filters run as one tiledbsoma ``ExperimentAxisQuery``, which
    reads only the joinids (and the filtered columns) of ``obs`` and ``var``; obs columns are then read for
    the selected cells only, one column at a time, when a run asks for them. ``modality`` starts as the
    measurement name and may be renamed; ``path``, ``stats_dir`` and the reads keep using ``measurement``.

    Cell ids are ``obs['obs_id']`` when present (cellweave and ``tiledbsoma.io`` experiments), else the
    ``soma_joinid`` as text (CELLxGENE Census has no id column).

    Parameters
    ----------
    experiment
        Path (or URI) of the SOMA Experiment.
    measurement
        Name of the measurement (the modality).
    layer
        ``X`` layer (default: ``data``, else the only layer; Census has ``raw`` and ``normalized``).
    obs_filter, var_filter
        tiledbsoma value filters on ``obs`` and on the measurement's ``var``.
    feature_key
        ``var`` column with the feature names (default: ``feature_name`` when present, else ``var_id``, else
        the first text column). ``feature_id`` (when present) is kept as :attr:`feature_ids`.

    Raises
    ------
    InputError
        One line naming what exists when the experiment cannot be opened, or the measurement, layer, a filter's
        column or the feature key is missing; when a filter is refused by tiledbsoma or selects nothing.
    """

    fork_safe = False  # TileDB hangs in a process forked after it was used: DataLoader workers are spawned

    def __init__(self, experiment: str | os.PathLike, measurement: str, layer: str | None = None,
                 obs_filter: str | None = None, var_filter: str | None = None, feature_key: str | None = None) -> None:
        self.experiment = str(experiment)
        self.measurement = measurement
        self.modality = measurement
        self.path = f"{self.experiment}::{measurement}"
        self.spec = StoreSpec(self.path, layer, obs_filter, var_filter, feature_key)
        self._pid: int | None = None
        self._owner_pid: int | None = os.getpid()
        self._handles: dict[str, Any] = {}
        if "://" not in self.experiment and not Path(self.experiment).exists():
            raise InputError(self.experiment, "experiment", "no such path", "pass the directory of a SOMA Experiment")
        context = soma.SOMATileDBContext()
        try:
            exp = soma.Experiment.open(self.experiment, context=context)
        except (soma.SOMAError, TypeError, ValueError, RuntimeError) as exc:
            raise InputError(
                self.experiment,
                "experiment",
                f"not a readable SOMA Experiment ({exc.__class__.__name__}: {exc})",
                "pass a directory written by `cellweave convert --format soma` or tiledbsoma.io.from_anndata",
            ) from exc
        with exp:
            self._init_from(exp)

    def _init_from(self, exp: soma.Experiment) -> None:
        present = sorted(exp.ms.keys()) if "ms" in exp else []
        if self.measurement not in present:
            raise InputError(
                self.experiment,
                f"ms['{self.measurement}']",
                f"no such measurement (this experiment has: {', '.join(present) or 'none'})",
                "pass one of the measurements present",
            )
        meas = exp.ms[self.measurement]
        self._layer = self._pick_layer(sorted(meas.X.keys()) if "X" in meas else [])
        X = meas.X[self._layer]
        if not isinstance(X, soma.SparseNDArray):
            raise InputError(self.path, f"X['{self._layer}']", f"is a {type(X).__name__}", "store X as a SparseNDArray")
        # cellweave describes the matrix it writes (X['data']) in the measurement metadata
        meta = dict(meas.metadata) if self._layer == DATA_LAYER else {}
        meta |= {k: v for k, v in dict(X.metadata).items() if k in (META_KIND, META_DENSE)}
        self.sparse = not bool(meta.get(META_DENSE, False))

        spec = self.spec
        obs_names = exp.obs.schema.names
        var_names = meas.var.schema.names
        if spec.obs_filter is not None:
            check_filter_columns(self.experiment, "obs", FLAGS["obs_filter"], spec.obs_filter, obs_names)
        if spec.var_filter is not None:
            check_filter_columns(self.path, "var", FLAGS["var_filter"], spec.var_filter, var_names)
        key = self._feature_column(meas.var.schema)
        has = _has_column(self.measurement)
        clauses = [f"({spec.obs_filter})"] if spec.obs_filter is not None else []
        if has in obs_names:
            clauses.append(f"{has} == True")
        var_columns = [JOINID, key] + ([FEATURE_ID] if FEATURE_ID in var_names and key != FEATURE_ID else [])
        with exp.axis_query(self.measurement, obs_query=soma.AxisQuery(value_filter=" and ".join(clauses) or None),
                            var_query=soma.AxisQuery(value_filter=spec.var_filter)) as query:
            joinids = self._run_query(lambda: query.obs_joinids().to_numpy(), "obs_filter")
            var = self._run_query(lambda: query.var(column_names=var_columns).concat(), "var_filter")
        var = _sorted_by_joinid(var)
        self.var_names = pd.Index(var[key].to_numpy(zero_copy_only=False).astype(str))
        self.feature_ids = (pd.Index(var[FEATURE_ID].to_numpy(zero_copy_only=False).astype(str))
                            if FEATURE_ID in var_columns else None)
        self._n_x_columns = int(X.shape[1])
        var_joinids = var[JOINID].to_numpy().astype(np.int64)
        if np.array_equal(var_joinids, np.arange(self._n_x_columns)):
            self._column_of: np.ndarray | None = None  # every feature, in X's column order
        else:
            if len(var_joinids) and int(var_joinids[-1]) >= self._n_x_columns:
                raise InputError(self.path, "var['soma_joinid']", f"joinids beyond the {self._n_x_columns} columns of "
                                 f"X['{self._layer}']", "rewrite the measurement")
            self._column_of = np.full(self._n_x_columns, -1, dtype=np.int64)
            self._column_of[var_joinids] = np.arange(len(var_joinids))
        if spec.var_filter is not None and not len(var_joinids):
            raise InputError(self.path, FLAGS["var_filter"], f"{spec.var_filter!r} selects no feature of {meas.var.count}",
                             "loosen the filter")

        self._id_column = OBS_ID if OBS_ID in obs_names else None  # None: the joinid is the id
        self._obs_keys = [n for n in obs_names if n not in (JOINID, self._id_column) and not n.startswith("has_")]
        self._joinids = np.sort(joinids).astype(np.int64)
        self.n_obs = len(self._joinids)
        if spec.obs_filter is not None and not self.n_obs:
            raise InputError(self.experiment, FLAGS["obs_filter"], f"{spec.obs_filter!r} selects no cell of "
                             f"{exp.obs.count}" + (f" (of those with {has})" if has in obs_names else ""),
                             "loosen the filter")
        self.kind = meta.get(META_KIND) or self._infer_kind(X)

    def _pick_layer(self, layers: list[str]) -> str:
        """The X layer asked for, else ``data``, else the only one; a clear error naming the layers otherwise."""
        listed = ", ".join(layers) or "none"
        wanted = self.spec.layer
        if wanted is not None:
            if wanted not in layers:
                raise InputError(self.path, f"X['{wanted}']", f"no such layer (this measurement has: {listed})",
                                 f"pass {FLAGS['layer']} with one of the layers present")
            return wanted
        if DATA_LAYER in layers:
            return DATA_LAYER
        if len(layers) == 1:
            return layers[0]
        raise InputError(self.path, "X", f"no '{DATA_LAYER}' layer and not exactly one layer (layers: {listed})",
                         f"choose one with {FLAGS['layer']} NAME (e.g. {FLAGS['layer']} {layers[0]})" if layers
                         else "write the matrix as X['data']")

    def _feature_column(self, schema: pa.Schema) -> str:
        """The var column of feature names: the one asked for, else ``feature_name``, ``var_id``, first text column."""
        wanted = self.spec.feature_key
        columns = [n for n in schema.names if n != JOINID]
        if wanted is not None:
            if wanted not in columns:
                raise InputError(self.path, f"var['{wanted}']", f"no such column (var has: {', '.join(columns) or 'none'})",
                                 f"pass {FLAGS['feature_key']} with one of the var columns listed")
            return wanted
        if FEATURE_NAME in columns:
            return FEATURE_NAME
        found = _string_column(schema, VAR_ID, {JOINID})
        if found is None:
            raise InputError(self.path, "var", "no string column with feature names",
                             f"add a '{VAR_ID}' column or pass {FLAGS['feature_key']} COLUMN")
        return found

    def _run_query(self, read: Callable[[], Any], option: str) -> Any:
        """Run a query read; tiledbsoma's refusal of a filter becomes one line naming the filter."""
        try:
            return read()
        except soma.SOMAError as exc:
            expression = getattr(self.spec, option)
            if expression is None:
                raise
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = self.experiment if option == "obs_filter" else self.path
            example = EXAMPLE_FILTERS[option]
            raise InputError(where, FLAGS[option], f"{expression!r} was refused by tiledbsoma ({detail})",
                             f"write a tiledbsoma value filter, e.g. {example}") from None

    def _infer_kind(self, X: soma.SparseNDArray) -> Kind:
        if not self.n_obs:
            return "counts"
        table = next(iter(X.read(coords=(self._joinids[:1024],)).tables()), None)
        values = np.zeros(0) if table is None else table["soma_data"].to_numpy()[:KIND_SAMPLE]
        return infer_kind(values)

    # SOMA handles are opened lazily, once per process. TileDB is not fork-safe: a process forked after this
    # one used TileDB hangs in its first TileDB call, so a store inherited through fork refuses to read and
    # one received by pickling (spawn / forkserver workers) opens its own context.
    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        if self._owner_pid not in (None, os.getpid()):
            raise InputError(
                self.path,
                "DataLoader workers",
                "TileDB cannot be used in a process forked from one that already used it (it would hang)",
                "pass multiprocessing_context='spawn' (or 'forkserver') to the torch DataLoader",
            )
        self._owner_pid = os.getpid()
        context = soma.SOMATileDBContext()
        exp = soma.Experiment.open(self.experiment, context=context)
        self._handles = {"experiment": exp, "obs": exp.obs, "X": exp.ms[self.measurement].X[self._layer]}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_pid"] = None
        state["_owner_pid"] = None
        return state

    @property
    def obs_keys(self) -> list[str]:
        return list(self._obs_keys)

    @property
    def stats_dir(self) -> Path:
        """``EXPERIMENT/.cellweave/MEASUREMENT``; a query keeps its own: ``MEASUREMENT@<hash of the options>``."""
        name = f"{self.measurement}@{self.spec.digest()}" if self.spec.options else self.measurement
        return Path(self.experiment) / ".cellweave" / name

    def _obs_values(self, joinids: np.ndarray, column: str) -> pa.Array:
        """One obs column for the given joinids, in their order."""
        self._open()
        lookup = _Lookup(joinids)
        table = self._handles["obs"].read(coords=(lookup.coords,), column_names=[JOINID, column]).concat()
        order = np.empty(len(lookup.unique), dtype=np.int64)
        order[lookup.positions(table[JOINID].to_numpy())] = np.arange(len(table))
        index = order if lookup.take is None else order[lookup.take]
        return table[column].combine_chunks().take(pa.array(index))

    def obs_column(self, key: str) -> pd.Series:
        if key not in self._obs_keys:
            return self.require_obs_key(key)
        if not self.n_obs:
            return pd.Series([], name=key, dtype=object)
        return _as_pandas(self._obs_values(self._joinids, key), key)

    def obs_names(self, ranges: Ranges) -> np.ndarray:
        rows = _range_rows(ranges)
        if not len(rows):
            return np.zeros(0, dtype=object)
        if self._id_column is None:
            return self._joinids[rows].astype(str).astype(object)
        ids = self._obs_values(self._joinids[rows], self._id_column)
        return np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object)

    def read_X(self, ranges: Ranges) -> Matrix:
        rows = _range_rows(ranges)
        if not len(rows):
            empty = np.zeros((0, self.n_vars), dtype=np.float32)
            return sp.csr_matrix(empty) if self.sparse else empty
        self._open()
        lookup = _Lookup(self._joinids[rows])
        table = self._handles["X"].read(coords=(lookup.coords, slice(None))).tables().concat()
        dim0 = table["soma_dim_0"].to_numpy()
        j = table["soma_dim_1"].to_numpy()
        d = table["soma_data"].to_numpy()
        if self._column_of is not None:  # a feature selection: keep its columns, renumbered (order kept)
            j = self._column_of[j]
            keep = j >= 0
            dim0, j, d = dim0[keep], j[keep], d[keep]
        shape = (len(lookup.unique), self.n_vars)
        runs = _row_runs(dim0, lookup)
        if self.sparse and runs is not None:
            counts = np.zeros(shape[0], dtype=np.int64)
            counts[runs[0]] = runs[1]
            X: Matrix = sp.csr_matrix((d, j.astype(np.int32), np.append(0, np.cumsum(counts))), shape=shape)
        elif self.sparse:
            X = sp.csr_matrix((d, (lookup.positions(dim0), j)), shape=shape)
        else:
            X = np.zeros(shape, dtype=d.dtype)
            X[lookup.positions(dim0) if runs is None else np.repeat(*runs), j] = d
        return X if lookup.take is None else X[lookup.take]
