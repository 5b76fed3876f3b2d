"""Benchmark: the cost of ``import cellweave, cellweave.models, cellweave.data`` against ``import torch, anndata``.

Each statement runs in a fresh interpreter, ``--repeats`` times, alternating; the script prints the median wall
time, CPU time and peak RSS of each and their ratios (issue budget: at most 1.5x the time and under 300 MB more RSS).

    python bench/import_time.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
CASES = {"baseline": "import torch, anndata", "cellweave": "import cellweave, cellweave.models, cellweave.data"}
PROBE = """
import json, resource, time
t, c = time.perf_counter(), time.process_time()
{statement}
print(json.dumps([time.perf_counter() - t, time.process_time() - c, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))
"""


def once(statement: str) -> tuple[float, float, float]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(statement=statement)], env=env, capture_output=True,
                         text=True, check=True).stdout
    seconds, cpu, rss = json.loads(out.strip().splitlines()[-1])
    return seconds, cpu, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in CASES}
    for _ in range(args.repeats):
        for name, statement in CASES.items():
            runs[name].append(once(statement))
    med = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in runs.items()}
    for name, (seconds, cpu, rss) in med.items():
        print(f"{name:10s} {CASES[name]!r}: {seconds:.2f} s wall, {cpu:.2f} s CPU, peak RSS {rss:.0f} MB "
              f"(median of {args.repeats})")
    (tb, cb, rb), (tc, cc, rc) = med["baseline"], med["cellweave"]
    print(f"cellweave / baseline: wall x{tc / tb:.2f}, CPU x{cc / cb:.2f}, RSS +{rc - rb:.0f} MB")


if __name__ == "__main__":
    main()
