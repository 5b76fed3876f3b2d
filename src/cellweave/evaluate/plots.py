"""UMAP plots of an embedding, coloured by modality, label and batch (umap-learn, matplotlib Agg).

UMAP runs on a random subset of at most ``max_cells`` cells (50,000 by default, as scMODAL), seeded. The
figures are drawn on matplotlib's Agg canvas without pyplot, so no display and no global state are touched.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .compute import subset_rows

UMAP_MAX_CELLS = 50_000
MAX_LEGEND = 30


def umap_coordinates(X: np.ndarray, *, max_cells: int = UMAP_MAX_CELLS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2-D UMAP of a random subset of at most ``max_cells`` cells.

    Returns
    -------
    rows, coordinates
        The subset's row numbers (sorted) and its ``(len(rows), 2)`` UMAP coordinates.
    """
    with warnings.catch_warnings():  # umap's import warns that TensorFlow (unused here) is absent
        warnings.simplefilter("ignore")
        import umap

    n = X.shape[0]
    rows = subset_rows(n, max_cells, seed)
    reducer = umap.UMAP(n_neighbors=min(15, len(rows) - 1), min_dist=0.3, random_state=seed, n_jobs=1)
    return rows, np.asarray(reducer.fit_transform(np.asarray(X[rows], dtype=np.float32)))


def plot_umap(
    coords: np.ndarray, colors: dict[str, Sequence], path: str | os.PathLike, *, title: str = "",
) -> Path:
    """One panel per colouring (``{"modality": values, "label": values, ...}``), saved as a PNG.

    Categories are drawn in a shuffled order so that none hides the others; more than 30 categories get no
    legend.
    """
    path = Path(path)
    panels = list(colors.items())
    fig = Figure(figsize=(5.2 * len(panels), 4.6), dpi=110)
    FigureCanvasAgg(fig)
    size = max(0.5, min(12.0, 30000 / max(len(coords), 1)))
    order = np.random.default_rng(0).permutation(len(coords))
    for i, (key, values) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        codes, names = pd.factorize(np.asarray(values).astype(str), sort=True)
        palette = _palette(len(names))
        ax.scatter(coords[order, 0], coords[order, 1], c=palette[codes[order]], s=size, linewidths=0, rasterized=True)
        ax.set_title(f"{title}: {key}" if title else key, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP1", fontsize=8)
        ax.set_ylabel("UMAP2", fontsize=8)
        if len(names) <= MAX_LEGEND:
            handles = [ax.scatter([], [], color=palette[j], s=20, label=str(name)) for j, name in enumerate(names)]
            ax.legend(handles=handles, fontsize=6, markerscale=1, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    return path


def _palette(n: int) -> np.ndarray:
    from matplotlib import colormaps

    base = colormaps["tab20"].colors if n > 10 else colormaps["tab10"].colors
    return np.array([base[i % len(base)] for i in range(max(n, 1))])
