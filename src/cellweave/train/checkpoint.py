"""Checkpoints that load with ``torch.load(..., weights_only=True)``: tensors and plain Python values only.

RNG states are stored as tensors and lists (never pickled generator objects), so a resumed run draws the same
random numbers as an uninterrupted one.
"""

from __future__ import annotations

import io
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.atomic import atomic_write_bytes
from ..errors import InputError

CHECKPOINT_FORMAT = 1


def class_name(module: torch.nn.Module) -> str:
    """Fully qualified class name, stored to refuse a checkpoint of another model."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()``."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def get_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy-global and Python ``random`` states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": [int(x) for x in internal], "gauss_next": gauss_next},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def save(path: Path, payload: Mapping[str, Any]) -> None:
    """Serialise ``payload`` with ``torch.save`` and write it atomically (temporary file, then rename)."""
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    atomic_write_bytes(path, buf.getvalue())


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Raises
    ------
    InputError
        When the file is absent or is not a cellweave checkpoint.
    """
    if not path.is_file():
        raise InputError(path, "checkpoint", "there is no checkpoint to resume from",
                         "call fit(..., resume=False) to start a new run, or set run_dir to the directory of the run to continue")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise InputError(path, "checkpoint", f"cannot be read ({type(exc).__name__}: {exc})",
                         "resume from a checkpoint.pt written by cellweave's Trainer, or start a new run") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "checkpoint", "is not a cellweave training checkpoint (format "
                         f"{payload.get('format') if isinstance(payload, dict) else None!r}, expected {CHECKPOINT_FORMAT})",
                         "resume from a checkpoint.pt written by cellweave's Trainer, or start a new run")
    return payload


def check_compatible(path: Path, payload: Mapping[str, Any], module: torch.nn.Module,
                     optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
    """Refuse a checkpoint of another model class, other parameter shapes or other optimizers.

    Raises
    ------
    InputError
        Naming the first difference.
    """
    fix = "resume with the same model and settings that wrote the checkpoint, or start a new run in another run_dir"
    if payload["module_class"] != class_name(module):
        raise InputError(path, "module_class",
                         f"the checkpoint is of {payload['module_class']}, the model is {class_name(module)}", fix)
    saved = {k: tuple(v.shape) for k, v in payload["model"].items()}
    current = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if saved.keys() != current.keys():
        diff = sorted(saved.keys() ^ current.keys())
        raise InputError(path, "model", f"parameter names differ from the model's, e.g. {diff[:5]}", fix)
    wrong = [f"{k}: {saved[k]} vs {current[k]}" for k in saved if saved[k] != current[k]]
    if wrong:
        raise InputError(path, "model", f"parameter shapes differ from the model's (checkpoint vs model), e.g. {wrong[:3]}", fix)
    if set(payload["optimizers"]) != set(optimizers):
        raise InputError(path, "optimizers",
                         f"the checkpoint has {sorted(payload['optimizers'])}, the model {sorted(optimizers)}", fix)
