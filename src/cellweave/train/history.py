"""The loss log of a run: ``losses.csv`` (appended as training goes) and ``loss_curves.png``."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping
from pathlib import Path

from ..data.atomic import atomic_write_bytes

Row = dict[str, float | int]
FIXED_FIRST = ("step", "epoch")
FIXED_LAST = ("seconds",)


def _column_order(keys: list[str]) -> list[str]:
    """step, epoch, train terms, ``val_`` terms, ``lr_`` columns, seconds (first appearance order in each group)."""
    rest = [k for k in keys if k not in FIXED_FIRST + FIXED_LAST]
    val = [k for k in rest if k.startswith("val_")]
    lr = [k for k in rest if k.startswith("lr_")]
    train = [k for k in rest if k not in val and k not in lr]
    return [*FIXED_FIRST, *train, *val, *lr, *FIXED_LAST]


def _fmt(value: float | int | None) -> str:
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


class LossLog:
    """Rows of ``step, epoch, <terms>, val_<terms>, lr_<optimizer>, seconds``, kept in memory and on disk.

    Rows are appended to the CSV as they come; the file is rewritten (atomically) only when a new column
    appears, e.g. the first validation. Floats are written with ``repr`` so they read back exactly.

    Parameters
    ----------
    path
        The CSV file; ``None`` keeps the rows in memory only.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: list[Row] = []
        self.columns: list[str] = list(FIXED_FIRST + FIXED_LAST)

    def _text(self, rows: list[Row], header: bool) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if header:
            writer.writerow(self.columns)
        for row in rows:
            writer.writerow([_fmt(row.get(c)) for c in self.columns])
        return out.getvalue()

    def _rewrite(self) -> None:
        if self.path is not None:
            atomic_write_bytes(self.path, self._text(self.rows, header=True).encode())

    def append(self, row: Row) -> None:
        """Add a row (and write it)."""
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new or len(self.rows) == 1:
            self.columns = _column_order(self.columns + new)
            self._rewrite()
        elif self.path is not None:
            with open(self.path, "a", newline="") as fh:
                fh.write(self._text([row], header=False))

    def restore(self, keep: Callable[[Row], bool]) -> None:
        """Read the existing CSV back (resume), keep the rows ``keep`` accepts and rewrite the file.

        A row cut short by a killed process (the last one, appended after the checkpoint) is dropped.
        """
        if self.path is None or not self.path.is_file():
            return
        with open(self.path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = [row for row in map(_parse_row, reader) if row is not None]
            self.columns = _column_order(list(reader.fieldnames or self.columns))
        self.rows = [r for r in rows if keep(r)]
        self._rewrite()


def _parse_row(raw: Mapping[str | None, str | list[str] | None]) -> Row | None:
    """A CSV row as numbers; ``None`` for a torn row (missing or extra fields, or a value that is not a number)."""
    if None in raw or any(v is None for v in raw.values()) or any(raw.get(k, "") == "" for k in FIXED_FIRST):
        return None
    try:
        return {k: (int(v) if k in FIXED_FIRST else float(v)) for k, v in raw.items() if v != ""}
    except ValueError:
        return None


def plot_loss_curves(rows: list[Row], columns: list[str], path: Path) -> None:
    """One panel per training loss term against step, the matching ``val_`` curve overlaid; log-y where positive.

    A validation term without a training term of the same name gets its own panel. ``columns`` are the log's
    columns (:attr:`LossLog.columns`).
    """
    keys = columns
    train = [k for k in keys if k not in FIXED_FIRST + FIXED_LAST and not k.startswith(("val_", "lr_"))]
    panels = train + [k for k in keys if k.startswith("val_") and k[4:] not in train]
    if not panels:
        return
    from matplotlib.figure import Figure  # imported where used: keeps `import cellweave` light

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, panels):
        curves: Mapping[str, str] = {name: "train" if not name.startswith("val_") else "validation"}
        if not name.startswith("val_") and f"val_{name}" in keys:
            curves = {name: "train", f"val_{name}": "validation"}
        values = []
        for key, label in curves.items():
            pts = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=label, marker="o" if label == "validation" else None, markersize=3)
                values.extend(ys)
        if values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        if len(curves) > 1:
            ax.legend()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
