"""What the paired-data models (CVQVAE, FactVAE) share: checks that the stores measure the same cells and agree
on batches, and the input reductions (PCA / LSI) kept beside the data and copied into the run."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..data import ModalityStore, Preprocess
from ..errors import InputError
from ..reduce import Reduction, load_or_fit

REDUCTIONS = "reductions"


def check_paired(stores: Mapping[str, ModalityStore]) -> int:
    """Require every store to hold the same cell ids (in any order); returns the number of cells.

    Raises
    ------
    InputError
        Naming the store whose cells differ, how many differ and a few of them.
    """
    names = list(stores)
    if len(names) < 2:
        raise InputError("modalities", "modalities", f"a paired model needs two or more modalities, got {names}",
                         "pass every modality measured in the cells, e.g. rna=... atac=...")
    anchor = stores[names[0]].all_obs_names()
    if anchor.has_duplicates:
        raise InputError(stores[names[0]].path, "obs_names", "cell ids repeat", "give every cell a unique id")
    for m in names[1:]:
        ids = stores[m].all_obs_names()
        only_here, only_anchor = ids.difference(anchor), anchor.difference(ids)
        if len(only_here) or len(only_anchor) or ids.has_duplicates:
            example = list(only_here[:3]) or list(only_anchor[:3])
            raise InputError(stores[m].path, "obs_names",
                             f"not the same cells as {names[0]!r} ({stores[names[0]].path}): {len(only_here)} cell ids only in "
                             f"{m!r}, {len(only_anchor)} only in {names[0]!r} (e.g. {example}); paired models need the same "
                             "cells measured in every modality",
                             "subset every store to the shared cell ids, or integrate them as unpaired modalities "
                             "(cellweave fit --method scmodal)")
    return len(anchor)


def batch_categories(stores: Mapping[str, ModalityStore], batch_key: str | None) -> list[str]:
    """The batch categories (sorted, as the stream codes them); every store must carry the same ones.

    Raises
    ------
    InputError
        When a store lacks the column or the stores' categories differ.
    """
    if batch_key is None:
        return []
    found = {m: sorted(set(s.require_obs_key(batch_key).astype(str))) for m, s in stores.items()}
    first = next(iter(found))
    for m, cats in found.items():
        if cats != found[first]:
            raise InputError(stores[m].path, f"obs['{batch_key}']", f"batches {cats[:5]} differ from {first!r}'s "
                             f"{found[first][:5]}", "give the paired stores the same batch column")
    return found[first]


def fitted_reductions(stores: Mapping[str, ModalityStore], specs: Mapping[str, tuple[str, dict]],
                      given: Mapping[str, Reduction | str | os.PathLike] | None, progress: bool) -> dict[str, Reduction]:
    """One reduction per modality in ``specs`` (``method, settings``): given ones (objects or saved directories),
    else kept beside the data (fitted on first use)."""
    given = dict(given or {})
    out = {}
    for m, (method, settings) in specs.items():
        red = given.get(m)
        if red is None:
            out[m] = load_or_fit(stores[m], method, progress=progress, **settings)
            continue
        red = red if isinstance(red, Reduction) else Reduction.load(red)
        if red.method != method or red.var_names != list(map(str, stores[m].var_names)):
            raise InputError(f"reductions[{m!r}]", "reduction", f"a {red.method} of other features than {m!r}'s store",
                             f"pass a {method} fitted on {stores[m].path}")
        out[m] = red
    return out


def save_reductions(run_dir: Path, reductions: Mapping[str, Reduction]) -> None:
    """Copy the input reductions into ``RUN/reductions/<modality>`` (a run is self-contained)."""
    for m, red in reductions.items():
        red.save(run_dir / REDUCTIONS / m, overwrite=True)


def run_reductions(run_dir: Path, modalities: list[str]) -> dict[str, Path]:
    """The reductions saved in a run, by modality."""
    return {m: run_dir / REDUCTIONS / m for m in modalities if (run_dir / REDUCTIONS / m).exists()}


def pca_settings(store: ModalityStore, n_components: int, n_top_genes: int | None, seed: int,
                 features: list[str] | None = None) -> dict:
    """PCA settings of a modality: log-normalised counts of ``features``, else of the highly variable genes when the
    store is wider than ``n_top_genes``, else of every feature (values as they are for a normalized store); at most
    as many components as features."""
    top = n_top_genes if features is None and store.kind == "counts" and n_top_genes and store.n_vars > n_top_genes else None
    width = len(features) if features is not None else top or store.n_vars
    return {"n_components": min(n_components, width, store.n_obs - 1), "features": features,
            "preprocess": Preprocess(normalize=True, n_top_genes=top, scale=False, max_value=None), "seed": seed}


def lsi_settings(store: ModalityStore, n_components: int, seed: int, features: list[str] | None = None) -> dict:
    """LSI settings of a peak modality (the first, depth-driven component dropped)."""
    width = store.n_vars if features is None else len(features)
    return {"n_components": min(n_components, width - 1, store.n_obs - 1), "skip_first": True, "seed": seed,
            "features": features}
