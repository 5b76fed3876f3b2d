"""Shared by the benchmarks: run one case in a subprocess (its stderr, progress bars included, echoed as it comes)
and report its JSON result with the peak memory of its process tree (main process plus DataLoader/Dask workers),
sampled every 50 ms (PSS every 0.5 s); and write the results file.

Two figures: ``peak_rss_mb`` sums the RSS of every process of the tree, so pages that forked DataLoader workers
share with their parent (the imported libraries: ~330 MB for torch + zarr + anndata) count once per process;
``peak_pss_mb`` sums the proportional set size (Linux), which counts each shared page once in total -- the
memory the tree really occupies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

PSS_EVERY = 10  # RSS every 50 ms, PSS every 0.5 s


def measure(cmd: list[str], python: str | None = None) -> dict:
    """Run ``cmd`` with ``python`` (default: this one), which prints one JSON object as its last stdout line;
    add ``peak_rss_mb`` and ``peak_pss_mb``, or ``error``."""
    import psutil

    proc = subprocess.Popen([python or sys.executable, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out_bytes, err_tail = bytearray(), bytearray()
    readers = [threading.Thread(target=lambda: out_bytes.extend(proc.stdout.read()), daemon=True),
               threading.Thread(target=_echo, args=(proc.stderr, err_tail), daemon=True)]
    for reader in readers:  # read while it runs: a full pipe would block the case (hours of progress bars)
        reader.start()
    ps = psutil.Process(proc.pid)
    peak = peak_pss = 0
    samples = 0
    while proc.poll() is None:
        try:
            tree = [ps, *ps.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
            if samples % PSS_EVERY == 0:  # PSS walks every mapping: sampled less often, not to steal a core
                peak_pss = max(peak_pss, sum(getattr(p.memory_full_info(), "pss", 0) for p in tree))
        except psutil.Error:
            pass
        samples += 1
        time.sleep(0.05)
    for reader in readers:
        reader.join()
    out = out_bytes.decode()
    if proc.returncode != 0:
        last = [line for line in err_tail.decode(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
        return {"error": last[-1] if last else f"exit code {proc.returncode}"}
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = peak / 2**20
    if peak_pss:
        result["peak_pss_mb"] = peak_pss / 2**20
    return result


def _echo(stream, tail: bytearray, keep: int = 1 << 14) -> None:
    """Copy the case's stderr to ours as it comes (progress stays visible in the log), keeping its last bytes."""
    for chunk in iter(lambda: os.read(stream.fileno(), 1 << 12), b""):
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        tail.extend(chunk)
        del tail[:-keep]


def write_json(path: Path | None, results: dict) -> None:
    """Write the results file (creating its folder) when a path was given, atomically under this process's own
    temporary name (two benchmark processes writing one file no longer collide)."""
    if path is not None:
        from cellweave.data.atomic import atomic_write_bytes

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(results, indent=2).encode())
