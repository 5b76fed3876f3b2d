"""The one training loop: step-based, manual multi-optimizer steps, exact resume, early stopping, logging."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset
from tqdm.auto import tqdm

from ..data.batch import CellBatch
from ..data.stream import make_loader
from ..errors import InputError
from . import checkpoint
from .convergence import Convergence, ConvergenceState
from .distributed import all_reduce_sums, any_rank, barrier, broadcast_buffers, broadcast_module, rank, world_size
from .history import LossLog, Row, plot_loss_curves
from .module import AUTOCAST_DTYPES, StepContext, TrainingModule

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
HISTORY = "losses.csv"
CURVES = "loss_curves.png"
#: Least wall time between two redraws of ``loss_curves.png`` at checkpoints (a redraw takes a second or more).
PLOT_EVERY_SECONDS = 60.0
#: Default wall time between two checkpoints (minutes).
CHECKPOINT_MINUTES = 10.0
#: Least steps between validations when stopping early (``val_every`` unset): on small data a pass is one or two
#: batches, and a validation loss compared at every step stops on its noise (bench/RESULTS.md: scMRDR on 200 cells
#: stopped at step 125-151 while its validation loss fell until step 2,000).
EARLY_STOPPING_LEAST_INTERVAL = 100
#: Why a run ended (``TrainResult.stop_reason``).
STOP_REASONS = ("max_steps", "early_stopping", "converged")

logger = logging.getLogger("cellweave.train")


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes
    ----------
    step
        Training steps completed.
    epoch
        Pass over the training stream the last step belonged to.
    best_val_loss, best_step
        Lowest whole-validation loss and its step (``None`` without validation).
    stopped_early
        Whether validation-based early stopping ended the run (the module then holds the best weights).
    stop_reason
        Why the run ended: ``"max_steps"``, ``"early_stopping"`` (validation loss) or ``"converged"`` (the
        convergence stop on the smoothed training loss, see :class:`~cellweave.train.convergence.Convergence`).
    history
        The loss log rows (as in ``losses.csv``).
    history_path, checkpoint_path, best_path
        Files in ``run_dir`` (``None`` without a run directory; ``best_path`` also without validation).
    """

    step: int
    epoch: int
    best_val_loss: float | None
    best_step: int | None
    stopped_early: bool
    history: list[Row] = field(repr=False)
    history_path: Path | None
    checkpoint_path: Path | None
    best_path: Path | None
    stop_reason: str = "max_steps"

    def summary(self) -> dict[str, Any]:
        """Where and why the run stopped (for the run's config and the log)."""
        return {"steps": self.step, "epoch": self.epoch, "stop_reason": self.stop_reason,
                "best_val_loss": self.best_val_loss, "best_step": self.best_step}


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move a batch (a :class:`CellBatch`, a tensor, or dicts / lists / tuples of them) to ``device``."""
    if isinstance(batch, CellBatch | torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if type(batch) in (list, tuple):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def flush_denormals(device: torch.device) -> Iterator[None]:
    """On the CPU, floats below the normal range are flushed to zero inside (the default mode outside).

    Weight decay drives the weights of little-used inputs towards zero, into the denormal range, where x86 CPUs
    compute ~7x slower: measured on an scMODAL run of 10,000 cells per modality (bench/RESULTS.md), a quarter of the
    RNA decoder's weights were denormal by step 9,410, and a step resumed from there took 5.1 s against 1.0 s with
    them flushed. Values below 1.2e-38 carry no information for training.
    """
    flushed = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Leave every global RNG as it was (DataLoader iterators and validation draw from torch's)."""
    state = checkpoint.get_rng_state()
    try:
        yield
    finally:
        checkpoint.set_rng_state(state)


class _Accumulator:
    """Sums of the logged training terms since the last log row (float64, on the device: no sync per step).

    Under ``torch.distributed`` the means are over every rank's steps (the same on every rank).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, terms: Mapping[str, float | torch.Tensor]) -> None:
        for k, v in terms.items():
            t = torch.as_tensor(v.detach() if isinstance(v, torch.Tensor) else v, dtype=torch.float64, device=self.device)
            self.sums[k] = self.sums[k] + t if k in self.sums else t
        self.count += 1

    def pop_means(self) -> dict[str, float]:
        all_reduce_sums(self.sums)
        n = self.count * world_size()
        means = {k: float(v) / n for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return means

    def state(self) -> dict[str, Any]:
        """The pending sums over all ranks (a collective under ``torch.distributed``) and the step count."""
        sums = all_reduce_sums({k: v.clone() for k, v in self.sums.items()})
        return {"sums": {k: v.cpu() for k, v in sums.items()}, "count": self.count}

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`: rank 0 holds the sums over all ranks, the others start from zero."""
        keep = rank() == 0
        self.sums = {k: (v if keep else torch.zeros_like(v)).to(self.device) for k, v in state["sums"].items()}
        self.count = state["count"]


@dataclass
class _State:
    """Where the loop stands (all of it goes into the checkpoint)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    seconds: float = 0.0
    best_val: float = math.inf
    best_step: int | None = None
    bad_validations: int = 0
    stopped_early: bool = False
    converged: bool = False
    conv_first: float | None = None
    conv_best: float = math.inf
    conv_bad: int = 0


class Trainer:
    """Runs a :class:`TrainingModule` for a number of steps over a cellweave stream.

    Parameters
    ----------
    max_steps
        Training steps (one batch of the training stream each); passes over the stream repeat as needed.
    device
        ``"auto"`` (CUDA when available, else CPU), or any ``torch.device`` spelling.
    precision
        ``"32"``, ``"bf16-mixed"``, ``"16-mixed"`` (autocast; a loss scaler for fp16 only) or ``"auto"``
        (bf16-mixed on a CUDA device that supports it, else 32).
    grad_clip
        Maximum total gradient norm of each optimizer update (``None``: no clipping).
    seed
        Seeds ``random``, numpy and torch at the start of :meth:`fit`; the same seed gives the same run on CPU.
    num_workers
        DataLoader worker processes per stream.
    log_every
        Steps per row of the loss log (a row holds the mean of each term over those steps).
    val_every
        Steps between validations (default: one pass over the training stream, and at least
        :data:`EARLY_STOPPING_LEAST_INTERVAL` steps when stopping early). Validation runs at multiples of
        ``val_every`` only.
    early_stopping_patience
        Stop after this many validations in a row without an improvement of ``min_delta``, and restore the
        best weights (``None``: never stop early).
    min_delta
        Smallest decrease of the validation loss that counts as an improvement.
    checkpoint_every
        Steps between checkpoints (one is always written at the end when ``run_dir`` is set).
    checkpoint_minutes
        Wall time between checkpoints, in minutes (default :data:`CHECKPOINT_MINUTES`; ``None``: by steps
        only). Checked every ``log_every`` steps; both rules may be set.
    convergence
        Stop once the smoothed training loss no longer improves (:class:`~cellweave.train.convergence.Convergence`;
        the module names the monitored terms in :meth:`TrainingModule.convergence_terms`). ``None``: run to
        ``max_steps`` (or to early stopping).
    run_dir
        Directory of ``checkpoint.pt``, ``best.pt``, ``losses.csv`` and ``loss_curves.png`` (``None``: write nothing).
        The curves are redrawn at checkpoints (at most once every :data:`PLOT_EVERY_SECONDS`) and at the end.
    progress
        Show a progress bar (on rank 0).

    Notes
    -----
    Under ``torch.distributed`` (initialised by the caller, e.g. ``torchrun``) every rank runs :meth:`fit` on its
    own shard of the streams (the same number of batches on every rank): rank 0's parameters and buffers are
    broadcast at the start, :meth:`StepContext.optimize` averages each optimizer's gradients over ranks after
    its backward pass (not through the ``DistributedDataParallel`` reducer, which cannot follow several
    backward passes per step outside ``forward``), so parameters stay identical; buffers updated from each
    rank's own batches (BatchNorm statistics ...) are set to rank 0's before every validation, checkpoint and
    at the end. Logged terms and validation sums are over all ranks; only rank 0 writes files and shows
    progress, and every rank returns from :meth:`fit` once the final checkpoint is written.
    """

    def __init__(self, max_steps: int, device: str | torch.device = "auto", precision: str = "auto",
                 grad_clip: float | None = None, seed: int = 0, num_workers: int = 0, log_every: int = 10,
                 val_every: int | None = None, early_stopping_patience: int | None = None, min_delta: float = 0.0,
                 checkpoint_every: int | None = None, run_dir: str | Path | None = None, progress: bool = True,
                 checkpoint_minutes: float | None = CHECKPOINT_MINUTES, convergence: Convergence | None = None) -> None:
        for name, value, least in [("max_steps", max_steps, 1), ("log_every", log_every, 1), ("val_every", val_every, 1),
                                   ("early_stopping_patience", early_stopping_patience, 1),
                                   ("checkpoint_every", checkpoint_every, 1), ("num_workers", num_workers, 0)]:
            if value is not None and (not isinstance(value, int) or value < least):
                raise InputError("Trainer", name, f"must be an integer >= {least}, got {value!r}", f"set {name} to {least} or more")
        if grad_clip is not None and not grad_clip > 0:
            raise InputError("Trainer", "grad_clip", f"must be positive, got {grad_clip!r}",
                             "set grad_clip > 0, or None for no clipping")
        if checkpoint_minutes is not None and not (isinstance(checkpoint_minutes, int | float) and checkpoint_minutes > 0):
            raise InputError("Trainer", "checkpoint_minutes", f"must be positive, got {checkpoint_minutes!r}",
                             "set checkpoint_minutes > 0, or None to checkpoint by steps only")
        if convergence is not None and not isinstance(convergence, Convergence):
            raise TypeError(f"convergence must be a cellweave.train.convergence.Convergence, got {type(convergence).__name__}")
        if min_delta < 0:
            raise InputError("Trainer", "min_delta", f"must be >= 0, got {min_delta!r}", "set min_delta to 0 or more")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if precision == "auto":
            precision = "bf16-mixed" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "32"
        if precision not in AUTOCAST_DTYPES:
            raise InputError("Trainer", "precision", f"unknown precision {precision!r}",
                             f"use one of {sorted(AUTOCAST_DTYPES)} or 'auto'")
        self.precision = precision
        self.max_steps = max_steps
        self.grad_clip = grad_clip
        self.seed = seed
        self.num_workers = num_workers
        self.log_every = log_every
        self.val_every = val_every
        self.patience = early_stopping_patience
        self.min_delta = min_delta
        self.checkpoint_every = checkpoint_every
        self.checkpoint_minutes = checkpoint_minutes
        self.convergence = convergence
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.progress = progress

    # ------------------------------------------------------------------ fit
    def fit(self, module: TrainingModule, train_data: IterableDataset, val_data: IterableDataset | None = None,
            resume: bool = False) -> TrainResult:
        """Train ``module`` on ``train_data`` for ``max_steps`` steps (or until early stopping).

        Parameters
        ----------
        module
            The model's training module (moved to the trainer's device in place).
        train_data
            A cellweave stream (:class:`~cellweave.data.CellStream`, :class:`~cellweave.data.PairedStream` or
            :class:`~cellweave.data.UnpairedStream`): anything with ``len``, ``set_epoch`` and ``set_skip``.
        val_data
            A stream for validation; its whole pass is evaluated each time (cell-weighted mean of
            :meth:`TrainingModule.validation_step`).
        resume
            Continue the run saved in ``run_dir/checkpoint.pt`` exactly where it stopped (same batches, same
            random numbers); ``max_steps`` may be larger than the checkpoint's. A run that stopped converged or
            early continues past its stop when resumed with that rule off (``convergence=None``,
            ``early_stopping_patience=None``): the rules decide when to stop, never what is trained.

        Returns
        -------
        TrainResult

        Raises
        ------
        InputError
            On an empty stream, a missing or incompatible checkpoint, or a checkpoint beyond ``max_steps``.
        """
        with flush_denormals(self.device):
            return self._fit(module, train_data, val_data, resume)

    def _fit(self, module: TrainingModule, train_data: IterableDataset, val_data: IterableDataset | None,
             resume: bool) -> TrainResult:
        if not isinstance(module, TrainingModule):
            raise TypeError(f"module must be a cellweave.train.TrainingModule, got {type(module).__name__}")
        n_train = self._check_stream(train_data, "train_data")
        if val_data is not None:
            self._check_stream(val_data, "val_data")
        main = rank() == 0
        run_dir = self.run_dir
        if resume and run_dir is None:
            raise InputError("Trainer", "run_dir", "resume=True needs the directory of the run to continue",
                             "pass Trainer(run_dir=...) pointing at the run that holds checkpoint.pt")
        ckpt_path = None if run_dir is None else run_dir / CHECKPOINT
        payload = checkpoint.load(ckpt_path) if resume else None
        if payload is not None and payload["loop"]["step"] > self.max_steps:
            done = payload["loop"]["step"]
            raise InputError(ckpt_path, "step", f"the checkpoint is at step {done}, beyond max_steps={self.max_steps}",
                             f"set max_steps to {done} or more")
        if run_dir is not None and main:
            run_dir.mkdir(parents=True, exist_ok=True)

        seed_everything(self.seed)
        device = self.device
        module.to(device)
        module.train()
        scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "16-mixed")
        ctx = StepContext(device, self.precision, {}, scaler, self.grad_clip)
        module.on_fit_start(ctx)
        optimizers = module.configure_optimizers()
        if (not isinstance(optimizers, Mapping) or not optimizers
                or not all(isinstance(o, torch.optim.Optimizer) for o in optimizers.values())):
            raise TypeError(f"{type(module).__name__}.configure_optimizers() must return a non-empty dict of torch optimizers")
        ctx.optimizers = dict(optimizers)

        st = _State()
        acc = _Accumulator(device)
        rule = self.convergence
        watch = module.convergence_terms() if rule is not None else {}
        conv_acc = _Accumulator(device)  # the monitored loss over the current convergence window
        log = LossLog(run_dir / HISTORY if run_dir is not None and main else None)
        best_state: dict[str, torch.Tensor] | None = None
        if payload is not None:
            checkpoint.check_compatible(ckpt_path, payload, module, optimizers)
            module.load_state_dict(payload["model"])
            for name, opt in optimizers.items():
                opt.load_state_dict(payload["optimizers"][name])
            scaler.load_state_dict(payload["scaler"])
            st = _State(**payload["loop"])
            st.converged = st.converged and self.convergence is not None  # a stop holds only while its rule is on
            st.stopped_early = st.stopped_early and self.patience is not None
            ctx.step, ctx.epoch = st.step, st.epoch
            acc.load(payload["log_acc"])
            if payload.get("conv_acc") is not None:
                conv_acc.load(payload["conv_acc"])
            best_state = payload["best_model"]
            # rows up to the checkpoint; its own step's row only if it was a regular one (nothing pending then)
            log.restore(lambda r: r["step"] < st.step or (r["step"] == st.step and acc.count == 0))
            checkpoint.set_rng_state(payload["rng"])
        elif run_dir is not None and main:
            (run_dir / BEST).unlink(missing_ok=True)
        broadcast_module(module)

        least = EARLY_STOPPING_LEAST_INTERVAL if self.patience is not None else 1
        val_every = (self.val_every or max(n_train, least)) if val_data is not None else None
        pin = device.type == "cuda"
        last_ckpt = st.step if payload is not None else -1
        started = time.perf_counter() - st.seconds
        plotted = -math.inf

        def plot(force: bool) -> None:
            nonlocal plotted
            if force or time.perf_counter() - plotted >= PLOT_EVERY_SECONDS:
                plot_loss_curves(log.rows, log.columns, run_dir / CURVES)
                plotted = time.perf_counter()

        last_ckpt_time = time.perf_counter()

        def save_checkpoint(log_acc: dict[str, Any], conv_state: dict[str, Any]) -> None:
            nonlocal last_ckpt_time
            st.seconds = time.perf_counter() - started
            checkpoint.save(ckpt_path, {
                "format": checkpoint.CHECKPOINT_FORMAT, "module_class": checkpoint.class_name(module),
                "model": checkpoint.cpu_state(module), "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                "scaler": scaler.state_dict(), "loop": vars(st).copy(), "best_model": best_state,
                "log_acc": log_acc, "conv_acc": conv_state, "rng": checkpoint.get_rng_state(),
            })
            last_ckpt_time = time.perf_counter()
            plot(force=False)

        def checkpoint_due() -> bool:
            """By steps, or by wall time (rank 0's clock decides; checked every ``log_every`` steps)."""
            if run_dir is None:
                return False
            if self.checkpoint_every and st.step % self.checkpoint_every == 0:
                return True
            if self.checkpoint_minutes is None or st.step % self.log_every:
                return False
            return any_rank(main and time.perf_counter() - last_ckpt_time >= 60.0 * self.checkpoint_minutes)

        def check_convergence() -> None:
            """At the end of each window: take its mean of the monitored loss; stop once converged."""
            state = ConvergenceState(st.conv_first, st.conv_best, st.conv_bad)
            value = conv_acc.pop_means()["monitor"]
            state.update(value, rule)
            st.conv_first, st.conv_best, st.conv_bad = state.first, state.best, state.bad_windows
            if state.converged(st.step, rule):
                st.converged = True
                if main:
                    logger.info("converged at step %d: the smoothed training loss (%s) improved by less than %g of its "
                                "progress in %d windows of %d steps", st.step, ", ".join(watch), rule.rel_tol,
                                rule.patience, rule.window)

        def flush(val: Mapping[str, float] | None) -> None:
            row: Row = {"step": st.step, "epoch": ctx.epoch, **acc.pop_means()}
            row.update({f"val_{k}": v for k, v in (val or {}).items()})
            row.update({f"lr_{n}": float(o.param_groups[0]["lr"]) for n, o in optimizers.items()})
            row["seconds"] = time.perf_counter() - started
            if main:
                log.append(row)
                shown = {k: v for k, v in row.items() if k not in ("step", "epoch", "seconds") and not k.startswith("lr_")}
                bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})

        bar = tqdm(total=self.max_steps, initial=st.step, desc="train", unit="step", disable=not (self.progress and main),
                   dynamic_ncols=True)
        with bar:
            while st.step < self.max_steps and not st.stopped_early and not st.converged:
                if st.batch_in_epoch >= n_train:  # len(stream) decides where a pass ends
                    st.epoch += 1
                    st.batch_in_epoch = 0
                train_data.set_epoch(st.epoch)
                train_data.set_skip(st.batch_in_epoch)
                loader = make_loader(train_data, self.num_workers, pin)
                with preserved_rng():
                    batches = iter(loader)
                for batch in batches:
                    ctx.step, ctx.epoch = st.step, st.epoch
                    terms = module.training_step(to_device(batch, device, pin), ctx)
                    acc.add(terms)
                    if rule is not None:
                        conv_acc.add({"monitor": sum(w * terms.get(k, 0.0) for k, w in watch.items())})
                    st.step += 1
                    st.batch_in_epoch += 1
                    bar.update(1)
                    val = None
                    if val_every is not None and st.step % val_every == 0:
                        broadcast_buffers(module)
                        val = self._validate(module, val_data, ctx)
                        if val["loss"] < st.best_val - self.min_delta:
                            st.best_val, st.best_step, st.bad_validations = val["loss"], st.step, 0
                            best_state = checkpoint.cpu_state(module)
                            if run_dir is not None and main:
                                checkpoint.save(run_dir / BEST, {"format": checkpoint.CHECKPOINT_FORMAT,
                                                                 "module_class": checkpoint.class_name(module),
                                                                 "model": best_state, "step": st.step, "val_loss": st.best_val})
                        else:
                            st.bad_validations += 1
                        st.stopped_early = self.patience is not None and st.bad_validations >= self.patience
                    if val is not None or st.step % self.log_every == 0:
                        flush(val)
                    if rule is not None and st.step % rule.window == 0:
                        check_convergence()
                    if checkpoint_due():
                        broadcast_buffers(module)
                        log_acc, conv_state = acc.state(), conv_acc.state()
                        if main:
                            save_checkpoint(log_acc, conv_state)
                        last_ckpt = st.step
                    if st.step >= self.max_steps or st.stopped_early or st.converged or st.batch_in_epoch >= n_train:
                        break
                else:
                    raise InputError("train_data", "batches", f"pass {st.epoch} ended after {st.batch_in_epoch} batches, "
                                     f"but len() promised {n_train}",
                                     "check the stream's sharding (fewer DataLoader workers or ranks, a smaller batch size)")
                del batches
        broadcast_buffers(module)
        if run_dir is not None and last_ckpt != st.step:
            log_acc, conv_state = acc.state(), conv_acc.state()
            if main:
                save_checkpoint(log_acc, conv_state)
        if acc.count:
            flush(None)  # the partial interval after the last regular row (dropped again on resume)
        if run_dir is not None and main:
            plot(force=True)
        barrier()
        if st.stopped_early and best_state is not None:
            module.load_state_dict(best_state)
        return TrainResult(
            step=st.step, epoch=st.epoch, best_val_loss=None if st.best_step is None else st.best_val,
            best_step=st.best_step, stopped_early=st.stopped_early, history=log.rows,
            history_path=None if run_dir is None else run_dir / HISTORY, checkpoint_path=ckpt_path,
            best_path=None if run_dir is None or st.best_step is None else run_dir / BEST,
            stop_reason="early_stopping" if st.stopped_early else "converged" if st.converged else "max_steps",
        )

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _check_stream(data: IterableDataset, name: str) -> int:
        for attr in ("set_epoch", "set_skip", "__len__"):
            if not hasattr(data, attr):
                raise TypeError(f"{name} must be a cellweave stream (with set_epoch, set_skip and len); got {type(data).__name__}")
        n = len(data)
        if n < 1:
            raise InputError(name, "batches", "the stream has no batch per epoch on this rank",
                             "use a smaller batch size, fewer ranks, or a store with cells")
        return n

    def _validate(self, module: TrainingModule, val_data: IterableDataset, ctx: StepContext) -> dict[str, float]:
        """Cell-weighted means over the whole validation pass (summed over ranks)."""
        module.eval()
        sums: dict[str, torch.Tensor] = {}
        pin = ctx.device.type == "cuda"
        with preserved_rng(), torch.no_grad():
            val_data.set_epoch(0)
            val_data.set_skip(0)
            for batch in make_loader(val_data, self.num_workers, pin):
                out = module.validation_step(to_device(batch, ctx.device, pin), ctx)
                if "loss" not in out or "n" not in out:
                    raise KeyError(f"{type(module).__name__}.validation_step() must return 'loss' (a sum over cells) and 'n' "
                                   f"(the number of cells); got {sorted(out)}")
                for k, v in out.items():
                    t = torch.as_tensor(v.detach() if isinstance(v, torch.Tensor) else v, dtype=torch.float64, device=ctx.device)
                    sums[k] = sums[k] + t if k in sums else t
        module.train()
        all_reduce_sums(sums)
        n = float(sums.pop("n"))
        if n <= 0:
            raise InputError("val_data", "cells", "the validation pass counted no cells", "validate on a stream with cells")
        return {k: float(v) / n for k, v in sums.items()}
