"""Keep glibc's allocator from growing one heap per reading thread.

A stream process allocates its read-ahead blocks on one thread and frees them on another (and zarr decodes on
its event-loop thread). glibc then grows a separate arena per thread, and freed blocks stay mapped in each:
on a 1M-cell store that was ~200 MB per process, the difference between the RSS at 100k and at 1M cells.
Two arenas keep that memory reused at no measured cost in throughput (``bench/stream.py``).

Nothing here runs at import: the stream calls :func:`limit_malloc_arenas` when it starts reading, the
``cellweave`` command at its start, and a program that wants it earlier (before its own threads) calls it itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import cache

STREAM_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number
_done: set[int] = set()


@cache
def _libc():
    """glibc, or ``None`` (another platform or C library)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        glibc = hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")  # glibc's extensions
    except OSError:
        return None
    return libc if glibc else None


def limit_malloc_arenas(arenas: int = STREAM_ARENAS) -> bool:
    """Cap glibc's malloc arenas for threads created from now on, once per process.

    Returns ``True`` where it took effect; a no-op (``False``) off Linux/glibc, or where the user set
    ``MALLOC_ARENA_MAX`` (theirs wins).
    """
    pid = os.getpid()
    if pid in _done:
        return True
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    libc = _libc()
    ok = libc is not None and bool(libc.mallopt(_M_ARENA_MAX, int(arenas)))
    if ok:
        _done.add(pid)
    return ok


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``); a no-op elsewhere.

    Called by the stream after each read-ahead block is consumed: the blocks are tens of MB, allocated and
    freed in varying sizes, and without it a reading process's heap creeps up by ~100-200 MB over the first
    few hundred thousand cells before it levels off.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
