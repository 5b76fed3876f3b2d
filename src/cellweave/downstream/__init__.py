"""After training: label transfer between modalities (and, per model, imputation and feature relationships)."""

from .label_transfer import knn_vote, transfer_labels

__all__ = ["knn_vote", "transfer_labels"]
