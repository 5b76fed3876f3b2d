"""A store spec: which store, and which of its cells, features and matrix a run reads.

Atlases are used by querying them (one tissue, primary data only, a gene panel), never whole. A
:class:`StoreSpec` carries that query from the command line or the Python API to every reader, and into the
run's ``config.toml``, so that resume, embed and map read exactly the same cells and features.

The options apply to TileDB-SOMA measurements (``SOMA_DIR::MEASUREMENT``):

* ``layer``: the ``X`` layer (default: ``data``, else the only layer);
* ``obs_filter`` / ``var_filter``: tiledbsoma value filters on ``obs`` / the measurement's ``var``
  (e.g. ``"tissue_general == 'lung' and is_primary_data == True"``), run as an ``ExperimentAxisQuery``;
* ``feature_key``: the ``var`` column giving feature names (default: ``feature_name`` when present, else
  ``var_id``).

In a config, a spec is the plain path when it has no option, else a table::

    [inputs]
    rna = { path = "census.soma::RNA", layer = "raw", obs_filter = "tissue_general == 'lung'" }
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InputError

#: The options of a spec besides its path, in the order they are shown.
OPTIONS = ("layer", "obs_filter", "var_filter", "feature_key")
#: Command-line flag of each option.
FLAGS = {name: "--" + name.replace("_", "-") for name in OPTIONS}


@dataclass(frozen=True)
class StoreSpec:
    """A store path plus the query that selects what is read from it.

    Parameters
    ----------
    path
        ``.zarr``, ``.h5ad`` or ``SOMA_EXPERIMENT::MEASUREMENT``.
    layer
        SOMA ``X`` layer to read (default: ``data``, else the only layer).
    obs_filter
        tiledbsoma value filter selecting cells from ``obs``.
    var_filter
        tiledbsoma value filter selecting features from the measurement's ``var``.
    feature_key
        ``var`` column with the feature names (default: ``feature_name`` when present, else ``var_id``).
    """

    path: str
    layer: str | None = None
    obs_filter: str | None = None
    var_filter: str | None = None
    feature_key: str | None = None

    @property
    def is_soma(self) -> bool:
        """Whether the path names a SOMA measurement (``EXPERIMENT::MEASUREMENT``; ``FILE.h5mu::MODALITY`` is not)."""
        return "::" in self.path and not self.path.split("::", 1)[0].endswith(".h5mu")

    @property
    def options(self) -> dict[str, str]:
        """The options that are set (name -> value)."""
        return {k: v for k, v in asdict(self).items() if k != "path" and v is not None}

    def resolved(self) -> StoreSpec:
        """The same spec with an absolute local path (a SOMA ``::MEASUREMENT`` and remote URIs kept)."""
        root, sep, meas = self.path.partition("::")
        if "://" not in root:
            root = str(Path(root).resolve())
        return replace(self, path=f"{root}{sep}{meas}")

    def to_config(self) -> str | dict[str, str]:
        """What a run's config records: the path alone, or a table with the options that are set."""
        return {"path": self.path, **self.options} if self.options else self.path

    def digest(self) -> str:
        """A short hash of the options (names caches of what this query selects)."""
        text = "|".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def check_applies(self) -> None:
        """Refuse options on a store that is not a SOMA measurement (they would silently do nothing).

        Raises
        ------
        InputError
            When an option is set and the path is not ``SOMA_DIR::MEASUREMENT``.
        """
        if self.options and not self.is_soma:
            flags = ", ".join(FLAGS[k] for k in self.options)
            raise InputError(self.path, flags, "these options select from TileDB-SOMA measurements only",
                             "pass SOMA_DIR::MEASUREMENT, or drop them for .zarr/.h5ad stores")


def as_spec(value: StoreSpec | str | os.PathLike | Mapping[str, Any], **options: str | None) -> StoreSpec:
    """A :class:`StoreSpec` from a path, a config table or a spec, with ``options`` set on top (``None``: keep).

    Raises
    ------
    InputError
        For a table without ``path`` or with unknown keys.
    """
    if isinstance(value, StoreSpec):
        spec = value
    elif isinstance(value, Mapping):
        known = {f.name for f in fields(StoreSpec)}
        unknown = sorted(set(map(str, value)) - known)
        if unknown or "path" not in value:
            problem = f"unknown keys {unknown}" if unknown else "no 'path'"
            raise InputError("inputs", str(dict(value)), f"store table has {problem}",
                             f"use the keys {', '.join(sorted(known))} (path required)")
        spec = StoreSpec(**{k: (None if v is None else str(v)) for k, v in value.items()})
    else:
        spec = StoreSpec(str(value))
    updates = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(updates) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown store options {unknown}; expected {OPTIONS}")
    return replace(spec, **updates) if updates else spec


def input_record(value: Any) -> str | dict[str, str]:
    """How a run's config records one input: an opened store's spec (or path), or the given spec with an absolute
    path; the plain path when no option is set."""
    spec = getattr(value, "spec", None)
    if isinstance(spec, StoreSpec):
        return spec.resolved().to_config()
    if hasattr(value, "path") and not isinstance(value, StoreSpec | Mapping):
        return str(value.path)
    return as_spec(value).resolved().to_config()


# --------------------------------------------------------------------------------------------- filters


def filter_columns(expression: str) -> list[str]:
    """Column names a tiledbsoma value filter refers to (``attr('name')`` included), in order of appearance.

    Returns an empty list when the expression is not Python-parseable (tiledbsoma then reports the syntax).
    """
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return []
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    out: list[str] = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Name) and id(node) not in called:
            name = node.id
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "attr" and node.args:
            arg = node.args[0]
            name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
        if name is not None and name not in out:
            out.append(name)
    return out


def check_filter_columns(where: str, table: str, flag: str, expression: str, columns: Iterable[str]) -> None:
    """Refuse a filter naming a column the table lacks, naming the columns it has.

    Raises
    ------
    InputError
        ``where``: ``flag`` uses ``column``, which ``table`` does not have (with the list of those it has).
    """
    present = list(columns)
    missing = [c for c in filter_columns(expression) if c not in present]
    if missing:
        raise InputError(where, flag, f"{expression!r} uses {table} column {missing[0]!r}, which does not exist "
                         f"({table} has: {', '.join(present)})", f"filter on one of the {table} columns listed")


# --------------------------------------------------------------------------------------------- command line


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--layer``, ``--obs-filter``, ``--var-filter`` and ``--feature-key`` to a command that reads stores."""
    g = parser.add_argument_group("SOMA query (applies to SOMA_DIR::MEASUREMENT inputs)")
    g.add_argument(FLAGS["layer"], metavar="NAME", help="X layer to read (default: 'data', else the only layer; "
                   "e.g. 'raw' for CELLxGENE Census)")
    g.add_argument(FLAGS["obs_filter"], metavar="EXPR", help="tiledbsoma value filter on obs selecting the cells, e.g. "
                   "\"tissue_general == 'lung' and is_primary_data == True\"")
    g.add_argument(FLAGS["var_filter"], metavar="EXPR", help="tiledbsoma value filter on var selecting the features")
    g.add_argument(FLAGS["feature_key"], metavar="COLUMN", help="var column with the feature names "
                   "(default: feature_name when present, else var_id)")


def store_options(args: argparse.Namespace) -> dict[str, str]:
    """The store options given on the command line (name -> value)."""
    return {k: getattr(args, k) for k in OPTIONS if getattr(args, k, None) is not None}


def specs_from_args(paths: Mapping[str, str], args: argparse.Namespace) -> dict[str, StoreSpec | str]:
    """Apply the command line's store options to the SOMA inputs among ``paths`` (name -> path).

    Non-SOMA inputs stay plain paths. Options given while no input is a SOMA measurement are refused.

    Raises
    ------
    InputError
        When options are given but no input is ``SOMA_DIR::MEASUREMENT``.
    """
    options = store_options(args)
    if not options:
        return dict(paths)
    if not any("::" in str(p) for p in paths.values()):
        StoreSpec(next(iter(paths.values()), "inputs"), **options).check_applies()
    return {m: as_spec(p, **options) if "::" in str(p) else p for m, p in paths.items()}
