"""What a model gives the trainer (:class:`TrainingModule`) and what the trainer gives a step (:class:`StepContext`).

The module does the math (its optimizers, one training step, one validation step); the :class:`~cellweave.train.Trainer`
runs the loop. Optimization is manual, as in Lightning's manual optimization: a step may update several
optimizers in any order (e.g. five discriminator updates, then one generator update) by calling
:meth:`StepContext.optimize` for each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from .distributed import average_gradients

#: autocast dtype of each precision setting (``None``: full precision, autocast off).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class StepContext:
    """Handed by the trainer to every hook and step of a :class:`TrainingModule`.

    Parameters
    ----------
    device
        Where the module and the batches live.
    precision
        ``"32"``, ``"bf16-mixed"`` or ``"16-mixed"``.
    optimizers
        The module's optimizers by name (empty until :meth:`TrainingModule.configure_optimizers` ran).
    scaler
        Loss scaler (enabled for ``"16-mixed"`` only).
    grad_clip
        Maximum total gradient norm per optimizer update (``None``: no clipping).

    Attributes
    ----------
    step
        Number of training steps completed before the current one (0 in the first step).
    epoch
        Current pass over the training stream.
    """

    def __init__(self, device: torch.device, precision: str, optimizers: Mapping[str, torch.optim.Optimizer],
                 scaler: torch.amp.GradScaler, grad_clip: float | None) -> None:
        self.device = device
        self.precision = precision
        self.optimizers = dict(optimizers)
        self.scaler = scaler
        self.grad_clip = grad_clip
        self.step = 0
        self.epoch = 0

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed-precision region (a no-op at precision ``"32"``)."""
        dtype = AUTOCAST_DTYPES[self.precision]
        with torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype is not None):
            yield

    def optimize(self, loss: torch.Tensor, name: str) -> torch.Tensor | None:
        """One update of optimizer ``name`` from ``loss``.

        zero_grad -> (scaled) backward -> gradient averaging over DDP ranks -> unscale -> clipping of the
        total norm of this optimizer's gradients to ``grad_clip`` -> optimizer step -> scaler update.

        Parameters
        ----------
        loss
            Scalar to minimise.
        name
            Key of the optimizer in :meth:`TrainingModule.configure_optimizers`.

        Returns
        -------
        torch.Tensor or None
            Total gradient norm before clipping, when ``grad_clip`` is set.
        """
        if name not in self.optimizers:
            raise KeyError(f"no optimizer named {name!r}; configure_optimizers() returned {sorted(self.optimizers)}")
        opt = self.optimizers[name]
        params = [p for group in opt.param_groups for p in group["params"]]
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        average_gradients(params)
        self.scaler.unscale_(opt)
        norm = None
        if self.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.grad_clip)
        self.scaler.step(opt)
        self.scaler.update()
        return norm


def adam(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with PyTorch's fused kernel (one kernel updates every parameter; PyTorch has it for the CPU, CUDA, MPS
    and XPU); it agrees with the multi-tensor default to float rounding.

    The fused kernel makes the six Adam updates of an scMODAL step (one generator, five discriminator) ~3x faster
    on one CPU thread than the multi-tensor default.
    """
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


class TrainingModule(torch.nn.Module):
    """Base class of every cellweave model's training module (the math; the trainer runs the loop).

    Subclasses implement :meth:`configure_optimizers` and :meth:`training_step`, and :meth:`validation_step`
    when trained with validation data.
    """

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers by name, e.g. ``{"generator": ..., "discriminator": ...}``."""
        raise NotImplementedError(f"{type(self).__name__} must implement configure_optimizers()")

    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, float | torch.Tensor]:
        """One training step on ``batch`` (already on ``ctx.device``); updates through ``ctx.optimize``.

        Returns
        -------
        dict
            Named loss terms to log (floats or detached scalar tensors).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement training_step()")

    def validation_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Loss *sums* over the cells of ``batch`` and their number.

        Returns
        -------
        dict
            ``{"loss": sum over cells, "n": number of cells, ...}``; the trainer reports every key but ``n``
            as its sum over the whole validation stream divided by the total ``n`` (a cell-weighted mean).
            ``loss`` drives early stopping and the best checkpoint.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement validation_step() to be validated")

    def convergence_terms(self) -> dict[str, float]:
        """Weights of the logged training terms whose sum the convergence stop watches (default: ``loss``).

        Name the terms that should keep going down while the model improves; leave out adversarial terms,
        which oscillate by design. A term a step does not report counts 0.
        """
        return {"loss": 1.0}

    def on_fit_start(self, ctx: StepContext) -> None:
        """Called once per fit, after seeding and moving to the device and before the optimizers are made."""


@contextlib.contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no gradient inside; the module's previous mode after."""
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was)
