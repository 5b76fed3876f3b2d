"""The convergence stop: end training once the smoothed training loss has stopped improving.

Every ``window`` steps the trainer takes the mean, over that window, of a *monitored* loss: the weighted sum of
the training terms a module names in :meth:`~cellweave.train.TrainingModule.convergence_terms` (the terms that
should go down; adversarial terms, which oscillate by design, are left out). The window improved when it
beats the best window so far by more than ``rel_tol`` of the progress made so far (first window minus this
one): the tolerance is relative to how far the loss has come, so it needs no loss scale and works for
terms that are negative (e.g. a geometry similarity). After ``patience`` windows in a row without an
improvement, and not before ``min_steps``, training stops. The models' default
(:meth:`Convergence.for_data`) makes a window one epoch, and at least 100 steps, and never stops before step 500
nor before a method's least number of passes over the data (scMODAL: 100; see ``bench/RESULTS.md``: on a
10,000-cell atlas its loss flattens by step 500 while its matching keeps improving up to 100 epochs) or its least
number of steps (scMRDR: 2,000).

:func:`replay_stop` applies the same rule to the rows of a ``losses.csv`` (``bench/budget.py`` replays it on
logged runs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InputError
from .budget import least_epoch_steps


@dataclass(frozen=True)
class Convergence:
    """When to stop a run whose training loss no longer improves.

    Parameters
    ----------
    window
        Steps per smoothing window (the monitored loss is averaged over each window).
    rel_tol
        A window improves when it is lower than the best window so far by more than ``rel_tol`` times the
        progress so far (first window minus this window).
    patience
        Windows in a row without an improvement before stopping.
    min_steps
        Never stop before this many steps.
    """

    window: int = 100
    rel_tol: float = 0.02
    patience: int = 2
    min_steps: int = 500

    def __post_init__(self) -> None:
        for name, least in (("window", 1), ("patience", 1), ("min_steps", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                raise InputError("convergence", name, f"must be an integer >= {least}, got {value!r}",
                                 f"set {name} to {least} or more")
        if not (isinstance(self.rel_tol, int | float) and 0 <= self.rel_tol < 1):
            raise InputError("convergence", "rel_tol", f"must be in [0, 1), got {self.rel_tol!r}", "set rel_tol to e.g. 0.02")

    @classmethod
    def for_data(cls, steps_per_epoch: int, least_epochs: int = 0, least_steps: int = 0) -> Convergence:
        """The default rule for a stream of ``steps_per_epoch`` batches: windows of one epoch, at least 100 steps
        (small data: many epochs per window; atlases: a window is a pass over the cells); no stop before
        ``least_epochs`` passes over the data (up to :data:`~cellweave.train.budget.LEAST_EPOCHS_MAX_STEPS` steps)
        nor before ``least_steps`` (nor before step 500)."""
        return cls(window=max(cls.window, steps_per_epoch),
                   min_steps=max(cls.min_steps, least_epoch_steps(least_epochs, steps_per_epoch), least_steps))

    def as_dict(self) -> dict[str, Any]:
        """The settings, for the run's config."""
        return asdict(self)


@dataclass
class ConvergenceState:
    """Where the rule stands (saved in the checkpoint, so a resumed run stops where the uninterrupted one does)."""

    first: float | None = None
    best: float = math.inf
    bad_windows: int = 0

    def update(self, value: float, rule: Convergence) -> bool:
        """Take one window's mean; whether it improved."""
        if self.first is None:
            self.first, self.best = value, value
            return True
        progress = max(self.first - value, 0.0)
        improved = value < self.best and self.best - value > rule.rel_tol * progress
        if improved:
            self.best, self.bad_windows = value, 0
        else:
            self.best = min(self.best, value)
            self.bad_windows += 1
        return improved

    def converged(self, step: int, rule: Convergence) -> bool:
        """Whether the run should stop after ``step`` steps."""
        return self.bad_windows >= rule.patience and step >= rule.min_steps


def monitored(terms: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The weighted sum of the monitored terms (a term a step did not report counts 0)."""
    return float(sum(w * float(terms.get(k, 0.0)) for k, w in weights.items()))


def replay_stop(rows: Sequence[Mapping[str, float]], weights: Mapping[str, float],
                rule: Convergence | None = None) -> int | None:
    """The step at which the rule stops a run logged in ``rows`` (``losses.csv``: each row holds the means over
    the steps since the previous row); ``None`` when it never stops within the log."""
    rule = rule or Convergence()
    state = ConvergenceState()
    total, count, previous = 0.0, 0, 0
    for row in rows:
        step = int(row["step"])
        n = step - previous
        previous = step
        total += n * monitored(row, weights)
        count += n
        if step % rule.window == 0 and count:
            state.update(total / count, rule)
            total, count = 0.0, 0
            if state.converged(step, rule):
                return step
    return None
