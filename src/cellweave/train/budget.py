"""The step budget of a run: ``max_steps="auto"`` fitted to the data, ``max_epochs``, or a fixed count.

``"auto"`` gives ``max(AUTO_MIN_STEPS, AUTO_EPOCHS x batches per epoch, least_epochs x batches per epoch)``
steps (the last at most ``LEAST_EPOCHS_MAX_STEPS``), capped by the authors' own budget (a step count, or an epoch
count times the batches per epoch), and at least ``least_steps`` even where that cap is lower. ``least_epochs``
and ``least_steps`` are a method's own floors (scMODAL: 100 passes; scMRDR: 75 passes and 2,000 steps, as its
authors' 200 epochs are 200 steps on 200 cells; see :attr:`~cellweave.models.base.IntegrationModel.least_epochs`). The figures were chosen from the quality-vs-steps
curves in ``bench/RESULTS.md`` (``bench/budget.py``): on small data a fixed epoch count is far too few optimizer
updates, on atlases the authors' budget is far more passes than needed, and the convergence stop
(:mod:`cellweave.train.convergence`) ends many runs before the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

#: Least steps of an automatic budget (small data: one batch per epoch still needs this many updates).
AUTO_MIN_STEPS = 2000
#: Passes over the largest modality of an automatic budget (large data).
AUTO_EPOCHS = 20
#: Most steps a method's ``least_epochs`` floor asks for (the longest run the budget curves were measured to):
#: on an atlas 20 passes are already far more steps.
LEAST_EPOCHS_MAX_STEPS = 10_000


def least_epoch_steps(least_epochs: int, steps_per_epoch: int) -> int:
    """The steps of a method's ``least_epochs`` floor: that many passes, at most :data:`LEAST_EPOCHS_MAX_STEPS`."""
    return min(least_epochs * steps_per_epoch, LEAST_EPOCHS_MAX_STEPS)


@dataclass(frozen=True)
class AuthorsBudget:
    """The training length of a method's reference code: ``steps`` per run, or ``epochs`` over the data."""

    steps: int | None = None
    epochs: int | None = None

    def ceiling(self, steps_per_epoch: int) -> int:
        """The authors' budget in steps for ``steps_per_epoch`` batches per epoch."""
        if self.steps is not None:
            return self.steps
        return (self.epochs or 0) * steps_per_epoch


@dataclass(frozen=True)
class ResolvedBudget:
    """The step count of a run and how it was reached (written to the run's config)."""

    max_steps: int
    rule: str
    steps_per_epoch: int

    def as_dict(self) -> dict[str, int | str]:
        return {"max_steps": self.max_steps, "rule": self.rule, "steps_per_epoch": self.steps_per_epoch}


def resolve_budget(max_steps: int | str, max_epochs: int | None, steps_per_epoch: int, authors: AuthorsBudget,
                   where: str = "fit", least_epochs: int = 0, least_steps: int = 0) -> ResolvedBudget:
    """The number of training steps.

    Parameters
    ----------
    max_steps
        A step count, or ``"auto"``.
    max_epochs
        Passes over the training stream (only with ``max_steps="auto"``); overrides the automatic budget.
    steps_per_epoch
        Batches per pass over the training stream (the longest modality for unpaired streams).
    authors
        The method's reference budget: the ceiling of ``"auto"``.
    where
        Named in errors.
    least_epochs
        Passes over the data an automatic budget gives at least, up to :data:`LEAST_EPOCHS_MAX_STEPS` steps (still
        capped by the authors' budget).
    least_steps
        Steps an automatic budget gives at least, above the authors' budget if need be.

    Raises
    ------
    InputError
        On a step or epoch count below 1, an unknown string, or both a step count and ``max_epochs``.
    """
    if steps_per_epoch < 1:
        raise InputError(where, "steps_per_epoch", f"must be >= 1, got {steps_per_epoch}", "train on a stream with cells")
    if max_epochs is not None:
        if max_steps != "auto":
            raise InputError(where, "max_epochs", f"given together with max_steps={max_steps!r}",
                             "pass one of max_steps and max_epochs")
        if not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or max_epochs < 1:
            raise InputError(where, "max_epochs", f"must be an integer >= 1, got {max_epochs!r}", "set max_epochs to 1 or more")
        return ResolvedBudget(max_epochs * steps_per_epoch, f"{max_epochs} epochs x {steps_per_epoch} steps", steps_per_epoch)
    if max_steps == "auto":
        ceiling = authors.ceiling(steps_per_epoch)
        wanted = max(AUTO_MIN_STEPS, AUTO_EPOCHS * steps_per_epoch, least_epoch_steps(least_epochs, steps_per_epoch))
        capped = min(wanted, ceiling) if ceiling > 0 else wanted
        steps = max(capped, least_steps)
        cap = f"{authors.steps} steps" if authors.steps is not None else f"{authors.epochs} epochs"
        floor = (f", the method's {least_epochs} epochs up to {LEAST_EPOCHS_MAX_STEPS} steps" if least_epochs > AUTO_EPOCHS
                 else "")
        rule = (f"auto: max({AUTO_MIN_STEPS}, {AUTO_EPOCHS} epochs{floor}; {steps_per_epoch} steps per epoch) = {wanted}"
                + (f", capped at the authors' {cap} = {ceiling}" if 0 < ceiling < wanted else "")
                + (f", raised to the method's least {least_steps} steps" if steps > capped else ""))
        return ResolvedBudget(int(steps), rule, steps_per_epoch)
    if isinstance(max_steps, str):
        try:
            max_steps = int(max_steps)
        except ValueError:
            raise InputError(where, "max_steps", f"must be an integer or 'auto', got {max_steps!r}",
                             "pass e.g. --max-steps 5000, or --max-steps auto") from None
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
        raise InputError(where, "max_steps", f"must be an integer >= 1 or 'auto', got {max_steps!r}", "set max_steps to 1 or more")
    return ResolvedBudget(max_steps, "fixed", steps_per_epoch)

