"""``cellweave evaluate``: embeddings in, a report directory out (written atomically).

The directory holds ``metrics.json``, ``report.md``, one UMAP PNG per embedding and the runs' loss curves.
Every input is checked (keys, values, NaN) before any metric runs, and the directory appears under its final
name only once complete.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.atomic import atomic_output, check_output_path
from ..errors import InputError
from .inputs import DEFAULT_OBSM_KEY, Embedding, read_embedding, read_run
from .plots import UMAP_MAX_CELLS, plot_umap, umap_coordinates
from .report import metrics_document, render_markdown, write_json
from .suite import EvalSettings, EvaluationResult, check_embedding, evaluate_embedding, obs_values


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "embedding"


def _unique_names(embeddings: Sequence[Embedding]) -> None:
    seen: dict[str, int] = {}
    for emb in embeddings:
        base = emb.name
        if base in seen:
            seen[base] += 1
            emb.name = f"{base}-{seen[base]}"
        else:
            seen[base] = 1


def load_inputs(
    runs: Sequence[str | os.PathLike] | None = None,
    paths: Sequence[str | os.PathLike] | None = None,
    obsm_keys: Sequence[str] | None = None,
    *,
    pre_obsm_key: str | None = None,
) -> list[Embedding]:
    """The embeddings named on the command line: each run (``--run``), or the stores of ``--embedding`` read
    as one embedding; once per obsm key (several keys compare several embeddings of the same cells).

    Raises
    ------
    InputError
        When neither or both of ``runs`` and ``paths`` are given, or an input is unreadable.
    """
    keys = list(obsm_keys or [DEFAULT_OBSM_KEY])
    if bool(runs) == bool(paths):
        raise InputError("evaluate", "--run/--embedding", "pass either run directories or embedding stores",
                         "use --run RUN [--run RUN2 ...] or --embedding PATH [PATH ...]")
    out = []
    for key in keys:
        if runs:
            for run in runs:
                emb = read_run(run, key, pre_obsm_key=pre_obsm_key)
                emb.name = emb.name if len(keys) == 1 else f"{emb.name}:{key}"
                out.append(emb)
        else:
            out.append(read_embedding(list(paths), key, pre_obsm_key=pre_obsm_key))
    return out


def evaluate_to_dir(
    embeddings: Sequence[Embedding],
    out: str | os.PathLike,
    *,
    label_key: str,
    batch_key: str | None = None,
    modality_key: str | None = None,
    pair_key: str | None = None,
    settings: EvalSettings | None = None,
    plots: bool = True,
    umap_max_cells: int = UMAP_MAX_CELLS,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate embeddings and write the report directory.

    Parameters
    ----------
    embeddings
        What to evaluate (:func:`~cellweave.evaluate.read_embedding` / :func:`~cellweave.evaluate.read_run`);
        several are compared side by side.
    out
        Report directory to create.
    label_key, batch_key, modality_key, pair_key
        obs columns (see :func:`~cellweave.evaluate.evaluate_embedding`). Without ``modality_key``, an
        embedding read from several stores uses the modality column it got.
    settings
        Suite settings.
    plots
        Draw UMAP plots (on at most ``umap_max_cells`` cells).
    umap_max_cells
        UMAP subset size.
    overwrite
        Replace an existing ``out``.
    progress
        Progress bars.

    Returns
    -------
    dict
        The content of ``metrics.json``.

    Raises
    ------
    InputError
        Existing output, missing keys, bad values, NaN in an embedding: before any metric is computed.
    """
    settings = settings or EvalSettings()
    check_output_path(out, overwrite)
    if not embeddings:
        raise InputError("evaluate", "inputs", "no embedding given", "pass --run RUN or --embedding PATH")
    _unique_names(embeddings)
    keys_of: dict[str, dict[str, str | None]] = {}
    for emb in embeddings:
        keys = {"label": label_key, "batch": batch_key, "modality": modality_key or emb.modality_key, "pair": pair_key}
        check_embedding(emb.X, emb.source)
        for role, key in keys.items():
            if key:
                obs_values(emb.obs, key, emb.source, f"--{role}-key")
        if emb.X_pre is not None:
            check_embedding(emb.X_pre, emb.source, "unintegrated representation")
        keys_of[emb.name] = keys

    results: list[EvaluationResult] = []
    for emb in embeddings:
        k = keys_of[emb.name]
        results.append(evaluate_embedding(
            emb.X, emb.obs, label_key=label_key, batch_key=batch_key, modality_key=k["modality"], pair_key=pair_key,
            X_pre=emb.X_pre, name=emb.name, source=emb.source, settings=settings, progress=progress,
        ))
    sources = {e.name: e.source for e in embeddings}
    keys_used = {"label": label_key, "batch": batch_key,
                 "modality": modality_key or next((e.modality_key for e in embeddings if e.modality_key), None),
                 "pair": pair_key}
    doc = metrics_document(results, settings, keys_used, sources)
    with atomic_output(out, overwrite=overwrite) as tmp:
        tmp.mkdir(parents=True)
        images: dict[str, list[str]] = {}
        for emb in embeddings:
            files = images.setdefault(emb.name, [])
            slug = _slug(emb.name)
            if plots:
                rows, coords = umap_coordinates(emb.X, max_cells=umap_max_cells, seed=settings.seed)
                k = keys_of[emb.name]
                colors = {role: np.asarray(obs_values(emb.obs, key, emb.source, f"--{role}-key"))[rows]
                          for role, key in (("modality", k["modality"]), ("label", k["label"]), ("batch", k["batch"])) if key}
                plot_umap(coords, colors, tmp / f"umap_{slug}.png", title=emb.name)
                files.append(f"umap_{slug}.png")
            if emb.loss_curve is not None:
                shutil.copy2(emb.loss_curve, tmp / f"loss_{slug}.png")
                files.append(f"loss_{slug}.png")
        (tmp / "metrics.json").write_text(write_json(doc))
        (tmp / "report.md").write_text(render_markdown(results, keys_used, sources, images))
    return doc
