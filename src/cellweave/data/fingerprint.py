"""Fingerprints of a store's data files, so that what is kept beside the data (check reports, fitted reductions,
reduced cells) is reused only while the data it was computed from are unchanged.

A fingerprint hashes the store's kind and shape and the name, size and modification time of every file under
the store's data root (the SOMA experiment for a measurement). Sidecars (``.cellweave``) and the elements
cellweave itself writes into an input store (``obsm``/``varm``/``obsp``/``varp``: embeddings written into a
SOMA measurement) are left out, so embedding a store does not invalidate what was computed from its cells.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .store import ModalityStore

#: Directories under a store's root that never hold model inputs.
SKIPPED_DIRS = frozenset({".cellweave", "obsm", "varm", "obsp", "varp"})


def data_root(store: ModalityStore) -> Path:
    """The file or directory holding the store's data (a SOMA measurement's experiment)."""
    return Path(str(store.path).split("::", 1)[0])


def data_files(root: Path) -> list[tuple[str, Path]]:
    """(relative name, path) of every input file under ``root`` (or ``root`` itself), in a stable order."""
    if root.is_file():
        return [(root.name, root)]
    out = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS)
        out.extend((str(Path(directory, f).relative_to(root)), Path(directory, f)) for f in sorted(names))
    return out


def data_fingerprint(store: ModalityStore, salt: str = "") -> str | None:
    """Hash of ``salt``, the store's kind and shape, and every data file's name, size and modification time.

    Parameters
    ----------
    store
        A local store.
    salt
        Mixed into the hash (e.g. the version of what is cached).

    Returns
    -------
    str or None
        A hex digest, or None when the data root is not a local path (a remote store: nothing to stat).
    """
    root = data_root(store)
    if not root.exists():
        return None
    h = hashlib.sha256(f"{salt}|{store.kind}|{store.n_obs}|{store.n_vars}".encode())
    for name, f in data_files(root):
        st = f.stat()
        h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _record(cached: Path) -> Path:
    return cached.with_name(cached.name + ".source")


def still_current(store: ModalityStore, cached: str | os.PathLike) -> bool:
    """Whether the cache at ``cached`` (a file or directory beside the data) was computed from the store's data
    as they are now: its recorded fingerprint equals the store's.

    A cache without a record (written by an earlier version, or its writer stopped between the cache and the
    record) and a store that cannot be fingerprinted (remote) count as current: the caller's own shape checks
    then decide.
    """
    try:
        recorded = _record(Path(cached)).read_text().strip()
    except OSError:
        return True
    now = data_fingerprint(store)
    return now is None or recorded == now


def record_source(store: ModalityStore, cached: str | os.PathLike) -> None:
    """Record the store's fingerprint beside the cache at ``cached`` (nothing for a remote store; a read-only
    location just means no record)."""
    from .atomic import atomic_write_bytes

    fingerprint = data_fingerprint(store)
    if fingerprint is None:
        return
    try:
        atomic_write_bytes(_record(Path(cached)), fingerprint.encode())
    except OSError:
        return
