"""A minibatch as the stream yields it: sparse rows stay sparse until they reach the device."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch


@dataclass
class CellBatch:
    """Cells of one modality in one minibatch.

    Attributes
    ----------
    modality
        Modality name.
    obs_names
        Cell ids (numpy array of str).
    rows
        Row numbers of the cells in their store.
    values, crow_indices, col_indices
        CSR rows (``crow_indices`` / ``col_indices`` are ``None`` for dense rows held in ``values``).
    n_vars
        Number of columns of the (transformed) matrix.
    library_size
        Per-cell sum of the raw values before any transform (for count likelihoods).
    batch, label
        Integer codes of the batch and label obs columns (``None`` when not requested).
    mask
        Boolean ``(n_vars,)``: which columns this modality measures, when the batch is laid out in a shared
        feature space; ``None`` when every column is measured.
    center, scale, max_value
        Per-column centering and scaling applied by :meth:`dense` (``None``: no scaling).
    """

    modality: str
    obs_names: np.ndarray
    rows: torch.Tensor
    values: torch.Tensor
    crow_indices: torch.Tensor | None
    col_indices: torch.Tensor | None
    n_vars: int
    library_size: torch.Tensor
    batch: torch.Tensor | None = None
    label: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    center: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    max_value: float | None = None

    def __len__(self) -> int:
        return len(self.obs_names)

    @property
    def is_sparse(self) -> bool:
        return self.crow_indices is not None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CellBatch:
        """Move every tensor to ``device`` (rows stay sparse)."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def sparse(self) -> torch.Tensor:
        """The rows as a ``torch.sparse_csr_tensor`` (dense rows are returned as they are)."""
        if not self.is_sparse:
            return self.values
        return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values, size=(len(self), self.n_vars),
                                       check_invariants=False)

    def _scatter_dense(self) -> torch.Tensor:
        if self.values.device.type == "cpu" and self.values.dtype in (torch.float32, torch.float64):
            # scipy's C loop: ~5x torch's indexed assignment on CPU, the same values (a CSR row holds a column once)
            import scipy.sparse as sp

            csr = sp.csr_array((self.values.numpy(), self.col_indices.numpy(), self.crow_indices.numpy()),
                               shape=(len(self), self.n_vars), copy=False)
            return torch.from_numpy(csr.toarray())
        rows = torch.repeat_interleave(torch.arange(len(self), device=self.values.device), torch.diff(self.crow_indices))
        X = torch.zeros(len(self), self.n_vars, dtype=self.values.dtype, device=self.values.device)
        X[rows, self.col_indices] = self.values
        return X

    def dense(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Dense ``(cells, n_vars)`` float tensor on ``device``, scaled and clipped when the stream asked for it."""
        b = self.to(device) if device is not None else self
        X = b._scatter_dense() if b.is_sparse else b.values
        if b.center is not None:
            X = (X - b.center) / b.scale
            if b.max_value is not None:
                X = X.clamp(-b.max_value, b.max_value)
            if b.mask is not None:
                X = X * b.mask
        return X
