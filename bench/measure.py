"""Shared by the benchmarks: run one case in a subprocess and report its JSON result with the peak RSS of its
process tree (main process plus DataLoader/Dask workers), sampled every 50 ms; and write the results file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def measure(cmd: list[str]) -> dict:
    """Run ``cmd`` (which prints one JSON object as its last stdout line); add ``peak_rss_mb``, or ``error``."""
    import psutil

    proc = subprocess.Popen([sys.executable, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True)))
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        last = [line for line in err.strip().splitlines() if line.strip()]
        return {"error": last[-1] if last else f"exit code {proc.returncode}"}
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = peak / 2**20
    return result


def write_json(path: Path | None, results: dict) -> None:
    """Write the results file (creating its folder) when a path was given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))
