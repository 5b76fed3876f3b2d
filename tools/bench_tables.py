"""Regenerate the benchmark tables and plots of bench/RESULTS.md from the result files in bench/results/*.json.

Two kinds of result file are read, told apart by their content:

* ``bench/atlas.py --json``: one end-to-end run (``stages``: simulate, convert, fit and evaluate per method);
* ``bench/train.py --json``: one method's training benchmark (``cases``: the stream, and the in-memory baseline).

Tables (markdown):

* ``atlas``: every stage of every atlas run, one row per (cells, stage);
* ``atlas-<N>``: the stage table of the run at N cells per modality (the table ``bench/atlas.py`` prints);
* ``train``: every training benchmark, one row per (method, cells, case), with the stream / in-memory ratios.

In RESULTS.md a generated table sits between two markers, and ``--update`` rewrites only what lies between them::

    <!-- bench_tables: train -->
    ...
    <!-- /bench_tables -->

Plots (``--plots DIR``): ``atlas.png`` (wall time and peak PSS of each stage against the cell count, as
``bench/atlas.py --plot`` draws it) and ``train.png`` (steps/s and peak RSS of each method against the cell count).

    python tools/bench_tables.py                          # print every table
    python tools/bench_tables.py --update bench/RESULTS.md --plots bench/
    python tools/bench_tables.py --check bench/RESULTS.md # exit 1 when a marked table is out of date
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BEGIN = re.compile(r"<!-- bench_tables: (?P<name>[\w.-]+) -->")
END = "<!-- /bench_tables -->"


def _atlas_module():
    """``bench/atlas.py`` (its table and plot), loaded by path: bench/ is not a package."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("bench_atlas", ROOT / "bench" / "atlas.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


def load_results(folder: Path) -> dict[str, list[dict]]:
    """Result files by kind (``atlas``, ``train``), each with its ``_file`` name; other JSON files are skipped."""
    out: dict[str, list[dict]] = {"atlas": [], "train": []}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}: not valid JSON ({exc}); fix or remove the file")
        doc["_file"] = path.name
        if isinstance(doc.get("stages"), dict) and "cells_per_modality" in doc:
            out["atlas"].append(doc)
        elif isinstance(doc.get("cases"), dict) and "method" in doc:
            out["train"].append(doc)
    for docs in out.values():
        docs.sort(key=lambda d: (d.get("method", ""), d["cells_per_modality"]))
    return out


def _num(value, fmt: str = ",.0f") -> str:
    return "" if value is None else format(value, fmt)


def cells_label(n: int) -> str:
    """``10k``, ``1m`` ...: how result files and table names spell a cell count."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def atlas_table(docs: list[dict]) -> str:
    """One row per (cells, stage) of every atlas run."""
    rows = ["| cells per modality | stage | wall s | peak RSS (MB) | peak PSS (MB) | threads | steps/s | result |",
            "|---:|---|---:|---:|---:|---:|---:|---|"]
    for d in docs:
        threads = d.get("threads_by_stage", {})
        for name, r in d["stages"].items():
            if "error" in r:
                rows.append(f"| {d['cells_per_modality']:,} | {name} | | | | | | error: {r['error']} |")
                continue
            result = ""
            if "overall" in r:
                result = "overall {}, FOSCTTM {}".format(*(_num(r.get(k), ".3f") or "n/a" for k in ("overall", "foscttm")))
            rows.append(f"| {d['cells_per_modality']:,} | {name} | {_num(r.get('wall_s'))} | {_num(r.get('peak_rss_mb'))} | "
                        f"{_num(r.get('peak_pss_mb'))} | {threads.get(name, d.get('threads', ''))} | "
                        f"{_num(r.get('steps_per_s'), '.2f')} | {result} |")
    return "\n".join(rows)


def train_table(docs: list[dict]) -> str:
    """One row per (method, cells, case) of every training benchmark, with the stream / in-memory ratios."""
    rows = ["| method | cells per modality | case | steps/s | peak RSS (MB) | peak PSS (MB) | set-up s | embed cells/s | "
            "stream / in-memory |", "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for d in docs:
        for name, r in d["cases"].items():
            if "error" in r:
                rows.append(f"| {d['method']} | {d['cells_per_modality']:,} | {name} | | | | | | error: {r['error']} |")
                continue
            ratio = ""
            if name == "stream" and "ratio_steps_per_s" in d:
                ratio = f"steps/s x{d['ratio_steps_per_s']:.2f}, peak RSS x{d['ratio_peak_rss']:.2f}"
            rows.append(f"| {d['method']} | {d['cells_per_modality']:,} | {name} | {_num(r.get('steps_per_s'), '.3g')} | "
                        f"{_num(r.get('peak_rss_mb'))} | {_num(r.get('peak_pss_mb'))} | {_num(r.get('setup_s'))} | "
                        f"{_num(r.get('embed_cells_per_s'))} | {ratio} |")
    return "\n".join(rows)


def tables(results: dict[str, list[dict]]) -> dict[str, str]:
    """Every table by name."""
    out: dict[str, str] = {}
    if results["atlas"]:
        out["atlas"] = atlas_table(results["atlas"])
        table = _atlas_module().table
        for d in results["atlas"]:
            out[f"atlas-{cells_label(d['cells_per_modality'])}"] = table(d)
    if results["train"]:
        out["train"] = train_table(results["train"])
    return out


def update(text: str, generated: dict[str, str], where: str = "RESULTS.md") -> str:
    """``text`` with every marked table replaced by its generated version.

    Raises
    ------
    SystemExit
        When a marker names a table that no result file gives, or has no end marker.
    """
    out, pos = [], 0
    for m in BEGIN.finditer(text):
        if m.start() < pos:
            continue
        name = m.group("name")
        end = text.find(END, m.end())
        if end < 0:
            raise SystemExit(f"{where}: the table marker '{m.group(0)}' has no '{END}' after it; add one")
        if name not in generated:
            raise SystemExit(f"{where}: no result file gives the table {name!r} (tables: {', '.join(sorted(generated))})")
        out += [text[pos : m.end()], "\n", generated[name], "\n"]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def train_plot(docs: list[dict], out: Path) -> None:
    """Steps/s and peak RSS of each method's streamed training against the cell count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method in sorted({d["method"] for d in docs}):
        pts = sorted((d["cells_per_modality"], d["cases"]["stream"]) for d in docs
                     if d["method"] == method and "error" not in d["cases"].get("stream", {"error": 1}))
        if not pts:
            continue
        axes[0].plot([p[0] for p in pts], [p[1]["steps_per_s"] for p in pts], marker="o", label=method)
        axes[1].plot([p[0] for p in pts], [p[1]["peak_rss_mb"] / 1024 for p in pts], marker="o", label=method)
    for ax, what in zip(axes, ("steps/s (streamed)", "peak RSS (GiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("cells per modality")
        ax.set_ylabel(what)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("bench/train.py: streamed training against atlas size")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)


def write_plots(results: dict[str, list[dict]], folder: Path, results_dir: Path) -> list[Path]:
    """``atlas.png`` and ``train.png`` in ``folder`` (each when its result files exist)."""
    written = []
    if results["atlas"]:
        _atlas_module().plot([results_dir / d["_file"] for d in results["atlas"]], folder / "atlas.png")
        written.append(folder / "atlas.png")
    if results["train"]:
        train_plot(results["train"], folder / "train.png")
        written.append(folder / "train.png")
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of result files (default bench/results)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--update", type=Path, metavar="RESULTS_MD", help="rewrite the marked tables of this file")
    mode.add_argument("--check", type=Path, metavar="RESULTS_MD", help="exit 1 when a marked table is out of date")
    p.add_argument("--plots", type=Path, metavar="DIR", help="write atlas.png and train.png here")
    p.add_argument("--table", help="print only this table")
    args = p.parse_args(argv)
    results = load_results(args.results)
    generated = tables(results)
    if args.update or args.check:
        path = args.update or args.check
        text = path.read_text()
        new = update(text, generated, str(path))
        if args.check:
            stale = new != text
            print(f"{path}: {'tables out of date: run tools/bench_tables.py --update ' + str(path) if stale else 'tables up to date'}")
            return int(stale)
        if new != text:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(new)
            os.replace(tmp, path)
        print(f"{path}: {len(BEGIN.findall(text))} table(s) regenerated")
    elif args.table:
        if args.table not in generated:
            print(f"no table {args.table!r} (tables: {', '.join(sorted(generated))})", file=sys.stderr)
            return 2
        print(generated[args.table])
    else:
        for name, table in generated.items():
            print(f"### {name}\n\n{table}\n")
    if args.plots:
        for path in write_plots(results, args.plots, args.results):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
