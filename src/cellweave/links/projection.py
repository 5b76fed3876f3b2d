"""A linked-feature view given by two linear maps instead of a feature table (e.g. learned canonical directions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class LinkProjection:
    """The linked features of a modality pair as projections of each side's input features.

    A source cell's linked features are ``x_s @ source + source_offset``, a target cell's
    ``x_t @ target + target_offset``; column ``k`` of both is one shared (e.g. canonical) direction.

    Attributes
    ----------
    source, target
        ``(d_s, K)`` and ``(d_t, K)`` float32 matrices over the model's input features.
    source_offset, target_offset
        ``(K,)`` float32 shifts.
    """

    source: np.ndarray
    target: np.ndarray
    source_offset: np.ndarray
    target_offset: np.ndarray

    def __post_init__(self) -> None:
        k = self.source.shape[1] if self.source.ndim == 2 else -1
        if (self.target.ndim != 2 or self.target.shape[1] != k or self.source_offset.shape != (k,)
                or self.target_offset.shape != (k,) or k < 1):
            raise InputError("link projection", "shapes", f"source {self.source.shape}, target {self.target.shape}, "
                             f"offsets {self.source_offset.shape} and {self.target_offset.shape} do not describe K >= 1 "
                             "shared directions", "give (d_s, K) and (d_t, K) matrices and two (K,) offsets")

    @property
    def n_components(self) -> int:
        """Number of shared directions K."""
        return int(self.source.shape[1])
