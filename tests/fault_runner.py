"""Run the ``cellweave`` command and SIGKILL it at a chosen point (used by tests/test_faults.py; not collected).

Usage: ``python tests/fault_runner.py POINT N ARGS_JSON`` where POINT is

* ``checkpoint``: the N-th checkpoint write dies after half of its bytes reached the temporary file;
* ``embed``: the process dies right after the N-th block of embedding rows was written;
* ``after_checkpoint``: the process dies right after the N-th ``checkpoint.pt`` was written whole.

The kill is a real ``SIGKILL`` of this process (no cleanup, no ``finally``); the code paths are patched only to
choose the moment.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_in_checkpoint_write(n: int) -> None:
    from cellweave.data import atomic
    from cellweave.train import checkpoint

    calls = []

    def torn_write(path, payload: bytes) -> None:
        calls.append(path)
        if len(calls) == n:
            with open(atomic._temporary(Path(path), "tmp"), "wb") as fh:
                fh.write(payload[: len(payload) // 2])
            die()
        atomic.atomic_write_bytes(path, payload)

    checkpoint.atomic_write_bytes = torn_write


def kill_after_checkpoint(n: int) -> None:
    from cellweave.train import checkpoint

    save = checkpoint.save
    calls = []

    def save_then_die(path, payload) -> None:
        save(path, payload)
        if Path(path).name == "checkpoint.pt":
            calls.append(path)
            if len(calls) == n:
                die()

    checkpoint.save = save_then_die


def kill_after_embedding_block(n: int) -> None:
    from cellweave.data.embeddings import EmbeddingWriter

    write = EmbeddingWriter.write
    calls = []

    def write_then_die(self, rows, values) -> None:
        write(self, rows, values)
        calls.append(rows)
        if len(calls) == n:
            die()

    EmbeddingWriter.write = write_then_die


if __name__ == "__main__":
    point, n, args = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    torch.set_num_threads(1)
    {"checkpoint": kill_in_checkpoint_write, "embed": kill_after_embedding_block,
     "after_checkpoint": kill_after_checkpoint}[point](n)
    from cellweave.cli import main

    sys.exit(main(args))
