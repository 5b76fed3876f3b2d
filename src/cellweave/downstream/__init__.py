"""After training: label and location transfer between modalities (kNN vote or minibatch optimal transport;
per model, imputation and feature relationships)."""

from .label_transfer import knn_vote, transfer_labels
from .ot_transfer import minibatch_plans, ot_transfer, ot_transfer_labels, ot_vote

__all__ = ["knn_vote", "minibatch_plans", "ot_transfer", "ot_transfer_labels", "ot_vote", "transfer_labels"]
