"""The ``cellweave`` command."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from .errors import InputError


def _cmd_convert(args: argparse.Namespace) -> None:
    from .data.convert import convert

    for path in convert(args.input, args.out, fmt=args.format, modality=args.modality, kind=args.kind,
                        labels_csv=args.labels, overwrite=args.overwrite, chunk_rows=args.chunk_rows):
        print(f"wrote {path}")


def _cmd_simulate(args: argparse.Namespace) -> None:
    from .simulate import simulate_atlas

    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    paths = simulate_atlas(args.out, args.cells, modalities=modalities, paired=args.paired, n_batches=args.batches,
                           fmt=args.format, seed=args.seed, n_genes=args.genes, n_proteins=args.proteins,
                           n_peaks=args.peaks, overwrite=args.overwrite)
    for name, path in paths.items():
        print(f"{name}: {path}")


def _cmd_stats(args: argparse.Namespace) -> None:
    from .data import open_modality
    from .data.preprocess import compute_stats, highly_variable_features

    store = open_modality(args.path)
    stats = compute_stats(store, target_sum=args.target_sum, progress=True)
    if store.kind == "counts":
        stats = highly_variable_features(store, stats, progress=True)
    path = stats.save(store.stats_dir)
    print(f"{store}: {stats.n_cells} cells, median library size {float(_median(stats.library_size)):.0f}; saved {path}")
    if stats.hvg_rank is not None:
        print(f"top {args.n_top} highly variable: {', '.join(stats.hvg(args.n_top)[:20])}{' ...' if args.n_top > 20 else ''}")


def _median(x):
    import numpy as np

    return np.median(x)


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(cells=args.cells, out=args.out)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cellweave`` command."""
    p = argparse.ArgumentParser(prog="cellweave", description="Atlas-scale single-cell multi-omics integration.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert .h5ad/.h5mu/10x/.fcs to Zarr or TileDB-SOMA, chunk by chunk")
    c.add_argument("input")
    c.add_argument("out")
    c.add_argument("--format", choices=["zarr", "soma"], default="zarr")
    c.add_argument("--modality", help="convert only this modality (or name the input's single modality)")
    c.add_argument("--kind", choices=["counts", "normalized"], help="matrix kind (default: inferred from values)")
    c.add_argument("--labels", help="FCS: CSV with one label per event (no header)")
    c.add_argument("--chunk-rows", type=int, default=4096)
    c.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    c.set_defaults(func=_cmd_convert)

    s = sub.add_parser("simulate", help="simulate a multi-modal atlas with known truth")
    s.add_argument("--cells", type=int, required=True)
    s.add_argument("--modalities", default="rna,adt,atac")
    s.add_argument("--out", required=True)
    s.add_argument("--paired", action="store_true", help="every modality measures the same cells")
    s.add_argument("--batches", type=int, default=2)
    s.add_argument("--format", choices=["zarr", "soma"], default="zarr")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--genes", type=int, default=2000)
    s.add_argument("--proteins", type=int, default=150)
    s.add_argument("--peaks", type=int, default=5000)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_simulate)

    t = sub.add_parser("stats", help="compute preprocessing statistics (one chunked pass) and store them beside the data")
    t.add_argument("path", help=".zarr, .h5ad or SOMA_DIR::MEASUREMENT")
    t.add_argument("--target-sum", type=float, default=1e4)
    t.add_argument("--n-top", type=int, default=2000, help="how many highly variable features to print")
    t.set_defaults(func=_cmd_stats)

    d = sub.add_parser("demo", help="simulate a small atlas and stream it (no network, no extra data)")
    d.add_argument("--cells", type=int, default=20_000)
    d.add_argument("--out", default=None, help="keep the demo outputs here (default: a temporary directory)")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input prints one clear line and exits with status 2."""
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        args.func(args)
    except InputError as exc:
        print(f"cellweave: error: {exc}", file=sys.stderr)
        return 2
    if args.command != "demo":
        print(f"done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
