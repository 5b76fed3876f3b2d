"""What every kNN backend provides, and the helpers they share."""

from __future__ import annotations

from typing import Protocol

import torch


class NeighborIndex(Protocol):
    """A searchable set of prepared vectors (unit rows for cosine, raw rows for euclidean).

    ``search(query, k, self_offset)`` returns ``(len(query), k)`` int64 indices into the data, nearest first
    or in any order (callers re-rank them by exact distance). When ``self_offset`` is given, query row ``i`` is
    data row ``self_offset + i`` and must not be returned as its own neighbour.
    """

    exact: bool

    def search(self, query: torch.Tensor, k: int, self_offset: int | None) -> torch.Tensor: ...


def drop_self(candidates: torch.Tensor, self_offset: int, k: int) -> torch.Tensor:
    """From ``k + 1`` candidates per row, remove the row's own index (or, where absent, the last candidate)."""
    n = candidates.shape[0]
    own = torch.arange(self_offset, self_offset + n, device=candidates.device)
    keep = candidates != own[:, None]
    missing = keep.all(dim=1)
    keep[missing, -1] = False
    return candidates[keep].view(n, k)


def check_complete(indices: torch.Tensor, backend: str) -> None:
    """Approximate searches can return -1 where they found fewer than k neighbours: refuse such results."""
    if bool((indices < 0).any()):
        raise RuntimeError(f"the {backend} search returned fewer than k neighbours for some points; "
                           "use an exact backend ('faiss' on fewer cells, or 'torch') or a smaller k")
