"""The one guard of every command that writes an output (``--out``): refuse, lock, and name what cannot be written.

:func:`output_guard` is entered before a command does any work and held until it is done:

* an existing output is refused unless ``overwrite`` (or ``resume``, for a run continued in place); an empty
  directory counts as absent;
* a lock file beside the output, ``.<name>.lock``, is held with ``fcntl.flock`` for the whole command, so a
  second writer of the same output stops at once with one line naming the holder's pid. The kernel releases
  the lock when its holder dies however it dies, so a lock file left by a killed process is simply taken over;
* an output that cannot be written (a read-only or immutable directory, ``/proc``, a path under a file, a
  file where a directory is expected, a full disk) is one :class:`~cellweave.errors.InputError` naming the
  path and the reason, whether found before the work starts or while writing.

The guard is re-entrant within one thread: a block nested in a guard of the same path (the CLI holds a run across
``fit`` and ``embed`` while ``model.fit(run_dir=...)`` holds it itself) runs under the outer guard's decisions
and lock; any other thread or process is refused.

With ``overwrite`` an existing output written in place (``in_place=True``, e.g. a training run) is moved
aside under a temporary name first: it is removed when the command succeeds, and put back when the command
fails before the new output holds anything worth keeping (``keep_partial`` says what is).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import InputError
from .atomic import _remove, _temporary, remove_stale_temporaries

WRITABLE_FIX = "choose an output path in a directory you can write to"
#: How the refusal of an existing output names the options that lift it: command-line flags ...
CLI_OPTIONS = ("--overwrite", "--resume")
#: ... or the Python API's keyword arguments.
API_OPTIONS = ("overwrite=True", "resume=True")

_held: dict[tuple[str, int], int] = {}  # (absolute path, thread) -> depth of the guards this thread holds on it


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output: ``.<name>.lock`` in the same directory."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def unwritable(path: str | os.PathLike, exc: OSError) -> InputError:
    """The one-line error for an output that cannot be written (``exc``: what the system said)."""
    where = exc.filename if exc.filename else path
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        reason = "a parent is a file, not a directory"
    elif exc.errno == errno.EPERM:
        reason += " (an immutable or protected location?)"
    return InputError(path, "output path", f"cannot be written: {reason} ({where})", WRITABLE_FIX)


def _is_under(filename: object, path: Path) -> bool:
    """Whether an OSError's filename lies at, under, or beside (a temporary or lock of) ``path``."""
    if not isinstance(filename, str | bytes | os.PathLike):
        return False
    try:
        f = Path(os.fsdecode(filename)).absolute()
    except (TypeError, ValueError):
        return False
    p = path.absolute()
    return f == p or p in f.parents or (f.parent == p.parent and f.name.startswith(f".{p.name}.")) or f in p.parents


class _Lock:
    """An exclusive ``flock`` on ``lock_path(path)`` with this process's pid written in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = lock_path(path)
        self.fd: int | None = None

    def holder(self) -> str:
        try:
            text = self.file.read_text().strip()
        except OSError:
            return "another process"
        host, _, pid = text.rpartition(" ")
        return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "") if pid else "another process"

    def acquire(self) -> None:
        for _ in range(10):  # retried only when the file was replaced between open and flock
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise InputError(self.path, "lock", f"another cellweave command ({self.holder()}) is writing this output "
                                 f"(lock {self.file})", "wait until it ends, or write to another path") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:  # its holder removed it as we opened it: lock the new one
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
                self.fd = fd
                return
            os.close(fd)
        raise InputError(self.path, "lock", f"the lock {self.file} keeps changing", "retry; another command is racing for it")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self.fd).st_ino == os.stat(self.file).st_ino:
                os.unlink(self.file)  # while still locked: a waiting opener then sees a new inode and retries
        os.close(self.fd)
        self.fd = None


def _occupied(path: Path, directory: bool) -> bool:
    """Whether ``path`` holds an output (an empty directory does not)."""
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    if path.exists() or path.is_symlink():
        if directory:
            raise InputError(path, "output path", "is a file, not a directory", "remove it or choose another path")
        return True
    return False


def _make_parents(directory: Path) -> list[Path]:
    """``mkdir -p directory``; return the directories it created, outermost first."""
    missing = []
    d = directory
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    directory.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _probe(directory: Path) -> None:
    """Create and remove a file in ``directory``: the one reliable writability test (root ignores modes)."""
    probe = directory / f".cellweave-probe-{os.getpid()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def output_guard(path: str | os.PathLike, overwrite: bool = False, resume: bool = False, directory: bool = True,
                 refuse_existing: bool = True, in_place: bool = False,
                 keep_partial: Callable[[Path], bool] | None = None,
                 options: tuple[str, str] = CLI_OPTIONS) -> Iterator[Path]:
    """Hold an output for the length of a command (see the module docstring).

    Parameters
    ----------
    path
        The output (directory or file).
    overwrite
        Replace an existing output.
    resume
        Continue an existing output in place (a training run): it must exist; it is not replaced.
    directory
        The output is a directory (a file in its place is refused).
    refuse_existing
        Refuse an existing output without ``overwrite``; ``False`` for a directory that receives several outputs,
        each checked by its writer (``cellweave convert OUT_DIR``).
    in_place
        The command writes into ``path`` itself (not through a temporary and a rename): with ``overwrite`` the
        old output is moved aside first.
    keep_partial
        For ``in_place`` with ``overwrite``: whether a failed command's new output is worth keeping (else the
        old one is put back).
    options
        How the refusal of an existing output names ``overwrite`` and ``resume``: :data:`CLI_OPTIONS` (flags) or
        :data:`API_OPTIONS` (keyword arguments).

    Yields
    ------
    Path
        ``path``.

    Raises
    ------
    InputError
        Existing output, another writer holding the lock, or an output that cannot be written.
    """
    path = Path(path)
    key = (os.path.abspath(path), threading.get_ident())
    if key in _held:  # nested in this thread's own guard of the same output: held, and decided, already
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    trash: Path | None = None
    created: list[Path] = []
    lock = _Lock(path)
    try:
        try:
            occupied = _occupied(path, directory)
            if occupied and refuse_existing and not (overwrite or resume):
                raise InputError(path, "output path", "already exists", f"choose another path or pass {options[0]}"
                                 + (f" (or {options[1]} to continue it)" if in_place else ""))
            created = _make_parents(path.parent)
            lock.acquire()
            remove_stale_temporaries(path)
            if occupied and in_place and overwrite and not resume:
                trash = _temporary(path, "old")
                os.replace(path, trash)
            elif path.is_dir() and (in_place or resume):
                _probe(path)
        except OSError as exc:
            raise unwritable(path, exc) from None
        _held[key] = 1
        try:
            yield path
        except OSError as exc:
            if _is_under(exc.filename, path) or _is_under(getattr(exc, "filename2", None), path):
                raise unwritable(path, exc) from exc
            raise
    except BaseException:
        _held.pop(key, None)
        if trash is not None:
            if keep_partial is not None and keep_partial(path):
                _remove(trash)
            else:
                _remove(path)
                os.replace(trash, path)
            trash = None
        lock.release()
        for d in reversed(created):  # directories this command made, left empty: nothing new on disk
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    finally:
        _held.pop(key, None)
        if trash is not None:
            _remove(trash)
        lock.release()
