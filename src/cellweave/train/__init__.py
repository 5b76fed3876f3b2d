"""One trainer for every model: device, mixed precision, DDP, checkpoints, early stopping, progress, logging.

A model subclasses :class:`TrainingModule` (its optimizers, training and validation steps); :class:`Trainer`
runs the loop over a cellweave stream and writes ``checkpoint.pt``, ``best.pt``, ``losses.csv`` and
``loss_curves.png`` into its run directory.
"""

from .module import StepContext, TrainingModule, adam
from .trainer import Trainer, TrainResult, seed_everything, to_device

__all__ = ["StepContext", "TrainResult", "Trainer", "TrainingModule", "adam", "seed_everything", "to_device"]
