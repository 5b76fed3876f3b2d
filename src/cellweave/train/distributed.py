"""The few ``torch.distributed`` operations the trainer needs (all no-ops in a single process).

Gradients are averaged explicitly, per optimizer, right after each backward pass instead of through
``DistributedDataParallel``'s reducer: a training step here runs several backward passes (one per optimizer,
e.g. discriminator then generator) outside any ``forward`` call, which the reducer does not track.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is available and initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without ``torch.distributed``)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without ``torch.distributed``)."""
    return dist.get_world_size() if is_distributed() else 1


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (in place)."""
    if not is_distributed():
        return
    for tensor in module.state_dict().values():
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
