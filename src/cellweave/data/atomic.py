"""Atomic outputs: write under a temporary name beside the target, rename when complete.

A temporary is named ``.<name>.tmp-<host>-<pid>`` after the process writing it, so temporaries left by a
killed writer (SIGKILL, power loss) are never mistaken for the output and are removed by the next write of
the same target on that host.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _temporary(path: Path, tag: str) -> Path:
    """This process's temporary for ``path`` (``tag``: ``tmp`` for the new content, ``old`` for the replaced)."""
    return path.with_name(f".{path.name}.{tag}-{socket.gethostname()}-{os.getpid()}")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` left by writers on this host that no longer run; return them.

    Temporaries of running processes (a concurrent writer) and of other hosts are left alone.
    """
    path = Path(path)
    host = socket.gethostname()
    removed = []
    prefix = f".{path.name}."
    for entry in path.parent.glob(glob.escape(prefix) + "*"):
        tag, _, owner = entry.name[len(prefix):].partition("-")
        entry_host, _, pid = owner.rpartition("-")
        if tag in ("tmp", "old") and entry_host == host and pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            _remove(entry)
            removed.append(entry)
    return removed


def check_output_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite``; return the path. An empty directory is not an output.

    Raises
    ------
    InputError
        When ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    empty_dir = path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    if (path.exists() or path.is_symlink()) and not empty_dir and not overwrite:
        raise InputError(path, "output path", "already exists", "choose another path or pass --overwrite")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write into; on success rename it to ``path``.

    On any exception the temporary output is removed and ``path`` is left as it was (absent, or the old
    content when overwriting), so no half-written store is ever visible under the final name.
    """
    path = check_output_path(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _temporary(path, "tmp")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if path.exists():
        trash = _temporary(path, "old")
        os.replace(path, trash)
        os.replace(tmp, path)
        _remove(trash)
    else:
        os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = _temporary(path, "tmp")
    with open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
