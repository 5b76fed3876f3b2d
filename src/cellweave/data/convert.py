"""``cellweave convert``: any supported input to Zarr stores or one SOMA experiment, chunk by chunk."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import InputError
from .names import check_modality_name
from .atomic import check_output_path
from .source import ChunkSource, Kind
from .write_zarr import DEFAULT_CHUNK_ROWS, write_zarr


def select_modalities(sources: list[ChunkSource], modality: str | None, name: str) -> list[ChunkSource]:
    """Keep the requested modality (renaming a single-modality input), or all of them."""
    if modality is None:
        return sources
    if len(sources) == 1:
        sources[0].modality = modality
        return sources
    picked = [s for s in sources if s.modality == modality]
    if not picked:
        raise InputError(name, "modality", f"no modality {modality!r} (the input has: {', '.join(s.modality for s in sources)})",
                         "pass one of those names to --modality")
    return picked


def convert(input_path: str | os.PathLike, out: str | os.PathLike, fmt: str = "zarr", modality: str | None = None,
            kind: Kind | None = None, labels_csv: str | None = None, overwrite: bool = False,
            chunk_rows: int = DEFAULT_CHUNK_ROWS, progress: bool = True,
            store_options: Mapping[str, str] | None = None) -> list[Path]:
    """Convert an input file to Zarr or SOMA.

    Parameters
    ----------
    input_path
        ``.h5ad``, ``.h5mu``, a 10x ``filtered_feature_bc_matrix`` folder or ``.h5``, ``.fcs``, or a Zarr store
        (to move it into SOMA).
    out
        Zarr: the ``.zarr`` store for a single modality, else a directory that receives ``<modality>.zarr``
        per modality. SOMA: the experiment (one measurement per modality).
        A SOMA measurement ``SOMA_DIR::MEASUREMENT`` is read through ``store_options`` (a query's cells and
        features, e.g. to extract one tissue of an atlas).
    fmt
        ``"zarr"`` or ``"soma"``.
    modality
        Convert only this modality (or name the single modality of the input).
    kind
        ``"counts"`` or ``"normalized"``; default: inferred from the values.
    labels_csv
        FCS only: one label per event, no header.
    overwrite
        Replace existing outputs.
    chunk_rows
        Rows per chunk.
    progress
        Show progress bars.
    store_options
        ``layer``, ``obs_filter``, ``var_filter``, ``feature_key`` for a SOMA input
        (see :class:`~cellweave.data.StoreSpec`).

    Returns
    -------
    list of Path
        The written stores.
    """
    from .readers import open_source

    if fmt not in ("zarr", "soma"):
        raise InputError(str(out), "--format", f"unknown output format {fmt!r}", "use --format zarr or --format soma")
    if modality is not None:
        check_modality_name(modality, "--modality")
    src_path = Path(input_path)
    if "::" in str(input_path) or store_options:
        from .check import open_checked
        from .store import StoreSource

        sources: list[ChunkSource] = [StoreSource(open_checked(input_path, kind=kind, progress=progress, **(store_options or {})))]
    elif src_path.is_dir() and ((src_path / "zarr.json").exists() or (src_path / ".zgroup").exists()):
        from .check import open_checked
        from .store import StoreSource

        sources = [StoreSource(open_checked(src_path, kind=kind, progress=progress))]
    elif labels_csv is not None:
        if src_path.suffix.lower() != ".fcs":
            raise InputError(str(input_path), "--labels", "per-event labels are only read for .fcs inputs",
                             "add labels to the obs of an .h5ad/.h5mu input instead")
        from .readers import FcsSource

        sources = [FcsSource(src_path, labels_csv=labels_csv)]
    else:
        sources = open_source(input_path, kind=kind)
    sources = select_modalities(sources, modality, str(input_path))
    for s in sources:  # names from the input (h5mu modalities, 10x feature types) become file names too
        check_modality_name(s.modality, f"{input_path}: modality")
    out = Path(out)
    if fmt == "soma":
        from .soma_store import write_soma

        total = sum(len(s.obs) for s in sources)
        with tqdm(total=total, desc="convert -> soma", unit="cells", disable=not progress) as bar:
            return [write_soma(sources, out, overwrite=overwrite, chunk_rows=chunk_rows, progress=bar.update)]
    if len(sources) == 1 and (modality is not None or out.suffix == ".zarr"):
        targets = [(sources[0], out)]
    else:
        targets = [(s, out / f"{s.modality}.zarr") for s in sources]
    for _, target in targets:  # refuse before writing anything
        check_output_path(target, overwrite)
    written = []
    for s, target in targets:
        with tqdm(total=len(s.obs), desc=f"convert {s.modality} -> zarr", unit="cells", disable=not progress) as bar:
            written.append(write_zarr(s, target, overwrite=overwrite, chunk_rows=chunk_rows, progress=bar.update))
    return written
