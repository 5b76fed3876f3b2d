"""Similarity-structure alignment (FactVAE eqs. 10-11): a student embedding learns the teacher's in-batch geometry."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_similarity_matrix(z: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of rows of ``z``: ``(n, n)``."""
    u = F.normalize(z.float(), dim=1)
    return u @ u.T


def similarity_structure_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean_i 1 - cos(S^s_i, S^t_i)`` with ``S`` the in-batch cosine-similarity matrices of the two embeddings.

    Rows ``i`` of ``student`` and ``teacher`` are the same cell. The teacher is detached: only the student learns.

    Parameters
    ----------
    student, teacher
        Embeddings ``(n, d_s)`` and ``(n, d_t)`` of the same ``n`` cells (the widths may differ).
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student and teacher must hold the same cells, got {student.shape[0]} and {teacher.shape[0]} rows")
    s_student = cosine_similarity_matrix(student)
    with torch.no_grad():
        s_teacher = cosine_similarity_matrix(teacher)
    return (1.0 - F.cosine_similarity(s_student, s_teacher, dim=1)).mean()
