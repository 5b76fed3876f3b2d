"""Flow and mass cytometry ``.fcs`` files (FCS 2.0, 3.0, 3.1), read through a memory map in row chunks.

The HEADER and TEXT segments are parsed here; the DATA segment (list mode, ``$DATATYPE`` F, D or I with one
bit width) is mapped with :class:`numpy.memmap`, so only the requested events are read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ...errors import InputError
from ..source import Kind

_FIX_EXPORT = "export the file again from the acquisition or analysis software"


def _header_offsets(raw: bytes, path: Path) -> tuple[str, list[int]]:
    """Version and the six segment offsets (TEXT, DATA, ANALYSIS begin/end) of the HEADER."""
    version = raw[:6].decode("ascii", errors="replace")
    if len(raw) < 58 or version not in ("FCS2.0", "FCS3.0", "FCS3.1"):
        raise InputError(path, "HEADER", f"not an FCS 2.0/3.0/3.1 file (starts with {raw[:6]!r})", "pass a list-mode .fcs file")
    try:
        offsets = [int(raw[10 + 8 * k : 18 + 8 * k].strip() or 0) for k in range(6)]
    except ValueError as exc:
        raise InputError(path, "HEADER", "segment offsets are not numbers", _FIX_EXPORT) from exc
    return version, offsets


def parse_text(segment: bytes, path: str | os.PathLike) -> dict[str, str]:
    """Keyword/value pairs of an FCS TEXT segment; keywords upper-cased.

    The first byte is the delimiter; a doubled delimiter inside a keyword or value stands for the character itself.

    Parameters
    ----------
    segment
        The TEXT bytes, from the leading delimiter to the last byte.
    path
        File name for messages.
    """
    if not segment:
        raise InputError(path, "TEXT", "the TEXT segment is empty", _FIX_EXPORT)
    try:
        text = segment.decode("utf-8")
    except UnicodeDecodeError:
        text = segment.decode("latin-1")
    delim, body = text[0], text[1:]
    placeholder = "\x00"
    tokens = [t.replace(placeholder, delim) for t in body.replace(delim * 2, placeholder).split(delim)]
    if len(tokens) % 2 and tokens[-1] == "":
        tokens = tokens[:-1]
    if len(tokens) % 2:
        raise InputError(path, "TEXT", "keywords and values do not pair up", _FIX_EXPORT)
    return {tokens[k].strip().upper(): tokens[k + 1] for k in range(0, len(tokens), 2)}


def _int(text: dict[str, str], key: str, path: Path) -> int:
    if key not in text:
        raise InputError(path, key, "required keyword missing from TEXT", _FIX_EXPORT)
    try:
        return int(text[key].strip())
    except ValueError as exc:
        raise InputError(path, key, f"not an integer: {text[key]!r}", _FIX_EXPORT) from exc


def _data_dtype(text: dict[str, str], n_par: int, path: Path) -> np.dtype:
    """On-disk dtype of one event value from $DATATYPE, $PnB and $BYTEORD."""
    datatype = text.get("$DATATYPE", "").strip().upper()
    widths = {int(text.get(f"$P{k}B", "0").strip() or 0) for k in range(1, n_par + 1)}
    order = text.get("$BYTEORD", "").replace(" ", "")
    if datatype not in ("F", "D", "I"):
        raise InputError(path, "$DATATYPE", f"unsupported data type {datatype!r}", "export as float (F), double (D) or integer (I) list-mode data")
    if len(widths) != 1:
        raise InputError(path, "$PnB", f"channels have different bit widths {sorted(widths)}", "export with one bit width for all channels (e.g. as float)")
    bits = widths.pop()
    if bits not in (8, 16, 32, 64) or (datatype == "F" and bits != 32) or (datatype == "D" and bits != 64):
        raise InputError(path, "$PnB", f"{bits}-bit values with $DATATYPE {datatype}", "export with 32-bit floats, 64-bit doubles, or 8/16/32/64-bit integers")
    n = bits // 8
    if order == ",".join(str(k) for k in range(1, n + 1)) or n == 1:
        endian = "<"
    elif order == ",".join(str(k) for k in range(n, 0, -1)):
        endian = ">"
    else:
        raise InputError(path, "$BYTEORD", f"byte order {order!r} is neither little nor big endian for {bits}-bit values", _FIX_EXPORT)
    code = "u" if datatype == "I" else "f"
    return np.dtype(f"{endian}{code}{n}")


class FcsSource:
    """Events of an ``.fcs`` file as a dense, ``normalized`` modality, read in row chunks through a memory map.

    Parameters
    ----------
    path
        The ``.fcs`` file (only its first data set is read).
    labels_csv
        Optional CSV without a header, one label per event in file order (e.g. a gating result).
    label_key
        obs column for the labels.
    modality
        Modality name.

    Notes
    -----
    Features are named by ``$PnS`` (the marker) where it is set, else ``$PnN`` (the detector), made unique;
    ``var`` keeps both as ``channel`` and ``marker``. Cell ids are ``<file stem>_<event index>``.
    """

    sparse = False

    def __init__(self, path: str | os.PathLike, labels_csv: str | os.PathLike | None = None, label_key: str = "cell_type", modality: str = "cytometry") -> None:
        self.path = Path(path)
        self.name = str(path)
        self.modality = modality
        self.kind: Kind | None = "normalized"
        size = self.path.stat().st_size
        with open(self.path, "rb") as fh:
            version, (t0, t1, d0, d1, _, _) = _header_offsets(fh.read(58), self.path)
            if not 58 <= t0 < t1 < size:
                raise InputError(self.path, "HEADER", f"TEXT segment {t0}-{t1} lies outside the {size}-byte file", _FIX_EXPORT)
            fh.seek(t0)
            text = parse_text(fh.read(t1 - t0 + 1), self.path)
        self.version, self.text = version, text
        mode = text.get("$MODE", "L").strip().upper()
        if mode != "L":
            raise InputError(self.path, "$MODE", f"mode {mode!r} is a histogram, not list-mode events", "export list-mode (L) data")
        n_par = _int(text, "$PAR", self.path)
        self._dtype = _data_dtype(text, n_par, self.path)
        if d0 == 0 or d1 == 0:  # FCS 3.x: offsets past 99,999,999 bytes are only in TEXT
            d0, d1 = _int(text, "$BEGINDATA", self.path), _int(text, "$ENDDATA", self.path)
        row_bytes = n_par * self._dtype.itemsize
        n_events = _int(text, "$TOT", self.path) if "$TOT" in text else (d1 - d0 + 1) // row_bytes
        if d0 + n_events * row_bytes > size or (d1 >= d0 and n_events * row_bytes > d1 - d0 + 1):
            raise InputError(
                self.path, "DATA", f"{n_events} events x {n_par} channels need {n_events * row_bytes} bytes from offset {d0}; "
                f"the segment ends at {d1} and the file at {size}", "the file is truncated: copy or export it again",
            )
        self._offset, self._shape = d0, (n_events, n_par)
        channels = [text.get(f"$P{k}N", f"P{k}").strip() for k in range(1, n_par + 1)]
        markers = [text.get(f"$P{k}S", "").strip() for k in range(1, n_par + 1)]
        names = [m or c for m, c in zip(markers, channels)]
        self.var = pd.DataFrame({"channel": channels, "marker": markers}, index=ad.utils.make_index_unique(pd.Index(names, dtype=str)))
        self.obs = pd.DataFrame(index=pd.Index([f"{self.path.stem}_{i}" for i in range(n_events)], dtype=str))
        if labels_csv is not None:
            self.obs[label_key] = self._labels(Path(labels_csv), n_events)

    def _labels(self, path: Path, n_events: int) -> np.ndarray:
        try:
            table = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InputError(path, "labels", f"cannot be read as a CSV ({exc})", "pass a CSV with one label per event and no header") from exc
        if table.shape[1] != 1:
            raise InputError(path, "labels", f"{table.shape[1]} columns, expected one label per line", "keep only the label column, without a header")
        if len(table) != n_events:
            raise InputError(
                path, "labels", f"{len(table)} labels for {n_events} events in {self.path.name}",
                "pass the labels written for this file: one per event, in event order, no header line",
            )
        return table[0].to_numpy(dtype=object)

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, events)`` in order, at most ``chunk_rows`` events each.

        Values come as native-endian float32, or float64 where float32 would round them (doubles, 32/64-bit ints).
        """
        n_events = self._shape[0]
        if n_events == 0:
            return
        mm = np.memmap(self.path, dtype=self._dtype, mode="r", offset=self._offset, shape=self._shape)
        exact_in_f32 = self._dtype.kind == "f" and self._dtype.itemsize == 4 or self._dtype.itemsize <= 2
        out_dtype = np.float32 if exact_in_f32 else np.float64
        for start in range(0, n_events, chunk_rows):
            yield start, np.asarray(mm[start : start + chunk_rows], dtype=out_dtype)
        del mm
