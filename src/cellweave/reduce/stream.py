"""Reductions applied in the stream: paired minibatches carry the reduced cells next to (or instead of) the raw ones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..data.batch import CellBatch
from ..data.preprocess import Preprocess
from ..data.store import ModalityStore
from ..data.stream import PairedStream
from ..errors import InputError
from .reduction import Reduction


def raw_features(reduction: Reduction) -> Preprocess:
    """The stream transform that yields the raw values a reduction reads: its features, not normalised."""
    return Preprocess(normalize=False, features=list(reduction.features), scale=False, max_value=None)


class ReducedPairedStream(PairedStream):
    """A :class:`~cellweave.data.PairedStream` whose minibatches also hold reduced cells.

    Each modality with a reduction is read raw over the reduction's features (``library_size`` stays the total
    over all the store's features); its reduced cells (a dense :class:`~cellweave.data.CellBatch`) are added
    under ``key``, or replace the raw batch when ``key`` is the modality's name. Reductions run where the
    batches are made (DataLoader workers), on the CPU.

    Parameters
    ----------
    stores
        The paired modalities (the first one's cell order anchors the join).
    reductions
        Modality -> ``(reduction, key)``.
    preprocess
        Transforms of the modalities without a reduction.
    **kwargs
        As for :class:`~cellweave.data.PairedStream` (``batch_size``, ``batch_key``, ``shuffle``, ``seed`` ...).
    """

    def __init__(self, stores: Sequence[ModalityStore], reductions: Mapping[str, tuple[Reduction, str]],
                 preprocess: Mapping[str, Preprocess] | None = None, **kwargs) -> None:
        names = [s.modality for s in stores]
        unknown = sorted(set(reductions) - set(names))
        if unknown:
            raise InputError("stream", "reductions", f"no paired modality named {unknown[0]!r}", f"use one of {names}")
        keys = [key for _, key in reductions.values()]
        clash = [k for m, (_, k) in reductions.items() if keys.count(k) > 1 or (k in names and k != m)]
        if clash:
            raise InputError("stream", "reductions", f"output key {clash[0]!r} is taken by another entry",
                             "use the modality's own name (replace its batch) or a name no modality has")
        self.reductions = dict(reductions)
        pp = dict(preprocess or {}) | {m: raw_features(red) for m, (red, _) in self.reductions.items()}
        super().__init__(stores, preprocess=pp, **kwargs)

    def _read(self, positions: np.ndarray, cuts: list[int]) -> list[dict[str, CellBatch]]:
        steps = super()._read(positions, cuts)
        for step in steps:
            for m, (red, key) in self.reductions.items():
                step[key] = red.reduce_batch(step[m], modality=key)
        return steps
