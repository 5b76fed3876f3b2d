"""The few ``torch.distributed`` operations cellweave needs (all no-ops in a single process).

Gradients are averaged explicitly, per optimizer, right after each backward pass instead of through
``DistributedDataParallel``'s reducer: a training step here runs several backward passes (one per optimizer,
e.g. discriminator then generator) outside any ``forward`` call, which the reducer does not track.

Processes are started by ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``); :func:`distributed_session` joins them into one process group: NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..errors import InputError

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is available and initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without ``torch.distributed``)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without ``torch.distributed``)."""
    return dist.get_world_size() if is_distributed() else 1


def _launched_world_size() -> int:
    """The world size a launcher such as ``torchrun`` announced in ``WORLD_SIZE`` (1 when none did)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise InputError("environment", "WORLD_SIZE", f"not an integer: {value!r}",
                         "launch with torchrun, or unset WORLD_SIZE for a single process") from None


@contextlib.contextmanager
def distributed_session(device: str = "auto", timeout: timedelta = timedelta(minutes=30)) -> Iterator[bool]:
    """Join the process group a launcher set up (``torchrun``), and leave it on exit.

    Does nothing (yields ``False``) when no launcher announced more than one process or when a group is
    already initialised by the caller. The backend is NCCL when the processes train on CUDA devices, each
    on ``cuda:LOCAL_RANK``, and gloo otherwise.

    Parameters
    ----------
    device
        The training device setting (``"auto"``, ``"cpu"``, ``"cuda"`` ...): decides the backend.
    timeout
        How long a collective waits for the other ranks before failing.

    Yields
    ------
    bool
        Whether this call initialised a process group.
    """
    if _launched_world_size() <= 1 or is_distributed():
        yield False
        return
    cuda = torch.cuda.is_available() and (device == "auto" or str(device).startswith("cuda"))
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    try:
        yield True
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank arrives here."""
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. computing statistics it caches on disk); the others run it after."""
    if rank() != 0:
        barrier()
    yield
    if rank() == 0:
        barrier()


def broadcast_object(value: T, src: int = 0) -> T:
    """``value`` of rank ``src`` on every rank (any picklable value; collectives of small control data only)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank (a collective: every rank must call it)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def on_rank_zero(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result to every rank.

    When ``fn`` raises on rank 0, rank 0 re-raises it and every other rank raises an error that carries its
    message (an :class:`~cellweave.errors.InputError` stays one), so no rank is left waiting.
    """
    result: Any = None
    failure: tuple[str, tuple[str, ...]] | None = None
    error: BaseException | None = None
    if rank() == 0:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the other ranks were told
            error = exc
            failure = (("input", (exc.source, exc.field, exc.problem, exc.fix)) if isinstance(exc, InputError)
                       else ("other", (f"{type(exc).__name__}: {exc}",)))
    result, failure = broadcast_object((result, failure))
    if error is not None:
        raise error
    if failure is not None:
        kind, args = failure
        if kind == "input":
            raise InputError(*args)
        raise RuntimeError(f"rank 0 failed: {args[0]}")
    return result


def _collective_device() -> torch.device:
    """Where small control tensors live for the current backend (NCCL needs them on the GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _dense(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Strided tensors only: sparse buffers are constants built from the inputs, identical on every rank."""
    return [t for t in tensors if t.layout == torch.strided]


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (in place)."""
    if not is_distributed():
        return
    for tensor in _dense(module.state_dict().values()):
        dist.broadcast(tensor, src=0)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics, running variances ...) to every rank (in place).

    Parameters stay in step by themselves (same start, averaged gradients); buffers updated from each rank's
    own minibatches drift apart and are brought back to rank 0's values with this.
    """
    if not is_distributed():
        return
    for tensor in _dense(module.buffers()):
        dist.broadcast(tensor, src=0)


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks with one flat all-reduce.

    A trainable parameter without a gradient on this rank contributes zeros, so every rank reduces buffers
    of the same size.
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def all_reduce_sums(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum each tensor of ``sums`` over ranks (keys reduced in sorted order, the same on every rank)."""
    if is_distributed():
        for key in sorted(sums):
            dist.all_reduce(sums[key])
    return sums
