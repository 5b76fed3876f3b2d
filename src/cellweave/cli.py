"""The ``cellweave`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from .data.names import check_modality_name
from .errors import InputError
from .log import cli_logging, verbosity_level

log = logging.getLogger("cellweave.cli")  # also when run as `python -m cellweave.cli`


def _cmd_convert(args: argparse.Namespace) -> None:
    from .data.convert import convert
    from .data.output import output_guard
    from .data.spec import store_options

    with output_guard(args.out, overwrite=args.overwrite, refuse_existing=False):  # each store is refused by convert
        paths = convert(args.input, args.out, fmt=args.format, modality=args.modality, kind=args.kind,
                        labels_csv=args.labels, overwrite=args.overwrite, chunk_rows=args.chunk_rows,
                        store_options=store_options(args))
    for path in paths:
        log.info("wrote %s", path)


def _parse_modalities(items: Sequence[str]) -> dict[str, str]:
    """``NAME=PATH`` items (``PATH``: a store, ``FILE.h5mu::MODALITY``, ``SOMA_DIR::MEASUREMENT``); a bare ``FILE.h5mu``
    stands for all its modalities, each under its own name."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep and item.endswith(".h5mu"):
            from .data.readers.h5 import h5mu_sources

            pairs = [(s.modality, f"{item}::{s.modality}") for s in h5mu_sources(item)] if os.path.exists(item) else []
            if not pairs:
                raise InputError(item, "path", "does not exist", "pass an existing .h5mu file")
        elif not sep or not name or not path:
            raise InputError("--modality", item, "expected NAME=PATH (or FILE.h5mu: all its modalities)",
                             "write e.g. --modality rna=rna.zarr --modality adt=data.h5mu::adt")
        else:
            check_modality_name(name, f"--modality {item}")
            pairs = [(name, path)]
        for name, path in pairs:
            if name in out:
                raise InputError("--modality", name, "given twice", "name each modality once")
            out[name] = path
    return out


def _parse_kinds(items: Sequence[str] | None) -> dict[str | None, str]:
    """``--kind KIND`` (every modality) and ``--kind NAME=KIND`` -> ``{None or NAME: KIND}``."""
    from .data.kind import check_kind

    out: dict[str | None, str] = {}
    for item in items or ():
        name, sep, kind = item.rpartition("=")
        check_kind(kind, f"--kind {item}")
        out[name if sep else None] = kind
    return out


def _cmd_fit(args: argparse.Namespace) -> None:
    from .data.align import align_store
    from .data.check import open_store
    from .models import METHODS, MODEL_CONFIGS
    from .models.run import FEATURES, check_config, read_config, read_feature_records, run_guard
    from .train.distributed import distributed_session, rank, rank_zero_first

    config = args.config or (os.path.join(args.out, "config.toml") if args.resume and not args.modality else None)  # a resumed run reads its own
    cfg = read_config(config) if config else {}
    source = str(config or "config")
    check_config(cfg, source)
    train = dict(cfg.get("train", {}))
    for key in ("max_steps", "max_epochs", "device", "num_workers", "checkpoint_every", "checkpoint_minutes", "convergence",
                "precision"):
        value = getattr(args, key)
        if value is not None:
            train[key] = value
    from .data.spec import as_spec, specs_from_args, store_options

    if args.modality:
        inputs = specs_from_args(_parse_modalities(args.modality), args)
    else:
        if store_options(args):
            raise InputError(source, "inputs", "SOMA query options were given without --modality",
                             "the run's [inputs] keep their own query; pass --modality NAME=PATH to use these options")
        inputs = dict(cfg.get("inputs", {}))
    if not inputs:
        raise InputError(source, "inputs", "no modality given", "pass --modality NAME=PATH (twice or more) or an [inputs] table")
    kinds = dict(cfg.get("matrix_kinds", {})) | _parse_kinds(args.kind)
    every = kinds.pop(None, None)
    unknown = sorted(set(kinds) - set(inputs))
    if unknown:
        raise InputError("--kind", unknown[0], "names no modality", f"use one of {', '.join(inputs)}")
    if args.resume and (Path(args.out) / FEATURES).is_dir():  # a resumed run reads its stores aligned to its features
        records = read_feature_records(args.out, list(inputs))
        inputs = {m: align_store(open_store(p, m, kinds.get(m, every)), records[m]) for m, p in inputs.items()}
    else:
        inputs = {m: open_store(as_spec(p).resolved(), m, kinds.get(m, every)) if kinds.get(m, every) else p
                  for m, p in inputs.items()}
    method = args.method or cfg.get("method", "scmodal")
    if method not in METHODS:
        raise InputError(source, "method", f"unknown method {method!r}", f"use one of {', '.join(sorted(METHODS))}")
    model_cls = METHODS[method]
    if "model" in cfg:
        MODEL_CONFIGS[method].from_dict(cfg["model"], source)  # keys, types and ranges, naming the file
    settings = {"links": args.links or cfg.get("links", "auto"), "links_augment": args.links_augment or cfg.get("links_augment"),
                "config": cfg.get("model"), "kinds": cfg.get("kinds"),
                "genes_bed": args.genes_bed or cfg.get("genes_bed"), "batch_key": args.batch_key or cfg.get("batch_key"),
                "seed": int(cfg.get("seed", args.seed)), "progress": True}
    # the run is held from here to the end (model.fit re-enters the guard); under torchrun rank 0 alone holds it
    # and the launcher stops the other ranks when it fails; one process group, rank 0 reports
    with run_guard(args.out, overwrite=args.overwrite, resume=args.resume), distributed_session(str(train.get("device", "auto"))):
        with rank_zero_first():  # rank 0 checks the inputs and caches their statistics; the other ranks read them
            model = model_cls.from_settings(inputs, settings)
        say = log.info if rank() == 0 else (lambda *_: None)
        for (s, t), (cols, _) in getattr(model, "link_matrices", {}).items():
            say(f"links {s} -> {t}: {len(cols)} linked features")
        t0 = time.perf_counter()
        result = model.fit(_steps(train.get("max_steps", "auto")), run_dir=args.out, device=train.get("device", "auto"),
                           precision=train.get("precision", "auto"), num_workers=int(train.get("num_workers", 0)),
                           checkpoint_every=train.get("checkpoint_every"), resume=args.resume, overwrite=args.overwrite,
                           max_epochs=train.get("max_epochs"), checkpoint_minutes=_minutes(train.get("checkpoint_minutes", 10.0)),
                           convergence=None if train.get("convergence", "auto") == "off" else "auto")
        dt = time.perf_counter() - t0
        say(f"stopped at step {result.step} ({_WHY[result.stop_reason]})")
        for learned in getattr(model, "learned", {}).values():
            say(learned.summary())
        paths = model.embed()
        say(f"trained {result.step} steps in {dt:.0f}s; embeddings: " + ", ".join(str(p) for p in paths.values()))
        for m, key in model.soma_keys.items():
            say(f"{m}: embedding written into SOMA obsm['{key}']")


def _cmd_map(args: argparse.Namespace) -> None:
    from .data.output import output_guard
    from .data.spec import specs_from_args
    from .models import METHODS
    from .models.run import read_config

    cfg = read_config(args.run)
    method = cfg.get("method")
    if method not in METHODS:
        raise InputError(args.run, "config.toml", f"unknown method {method!r}", "pass a run written by `cellweave fit`")
    device = args.device or "auto"
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = METHODS[method].from_run(args.run, device=device, min_overlap=args.min_overlap)
    with output_guard(args.out, overwrite=args.overwrite, in_place=True):
        paths = model.map_query(specs_from_args(_parse_modalities(args.modality), args), args.out,
                                batch_key=args.batch_key, label_key=args.label_key, min_overlap=args.min_overlap,
                                max_steps=args.max_steps, k=args.k, overwrite=args.overwrite)
    new = model.query_summary.get("new_batches")
    if new:
        log.info(f"new batches {new}: fitted {model.query_summary['steps']} steps with the reference frozen "
                 f"(loss {model.query_summary['first_loss']:.1f} -> {model.query_summary['last_loss']:.1f})")
    for m, path in paths.items():
        log.info(f"{m}: {path}")
        if m in model.soma_keys:
            log.info(f"{m}: embedding written into SOMA obsm['{model.soma_keys[m]}']")
    for m, table in model.query_labels.items():
        line = f"{m}: {args.label_key} transferred to {len(table)} cells (mean confidence {table['confidence'].mean():.2f}"
        if "true" in table:
            line += f", accuracy {(table['predicted'] == table['true']).mean():.3f}"
        log.info(line + f"); {Path(args.out) / 'labels' / (m + '.tsv')}")


_WHY = {"max_steps": "the step budget is spent", "converged": "converged: the smoothed training loss stopped improving",
        "early_stopping": "early stopping: the validation loss stopped improving"}


def _steps(value: str | int) -> str | int:
    """``--max-steps``: ``auto`` or a step count."""
    if isinstance(value, str) and value != "auto":
        try:
            return int(value)
        except ValueError:
            raise InputError("--max-steps", value, "not an integer or 'auto'", "pass e.g. --max-steps 5000 or --max-steps auto") from None
    return value


def _minutes(value: float | str) -> float | None:
    """``--checkpoint-minutes``: minutes, or ``off`` (0 also turns time-based checkpoints off)."""
    if value == "off":
        return None
    try:
        minutes = float(value)
    except (TypeError, ValueError):
        raise InputError("--checkpoint-minutes", value, "not a number or 'off'", "pass e.g. --checkpoint-minutes 10") from None
    if minutes < 0:
        raise InputError("--checkpoint-minutes", value, "negative", "pass minutes > 0, or 'off'")
    return minutes or None


def _cmd_validate(args: argparse.Namespace) -> None:
    from .data.check import check_inputs, open_store
    from .data.spec import specs_from_args

    stores, problems = {}, []
    named = []
    kinds = _parse_kinds(args.kind)
    for item in args.path:
        name, sep, path = item.partition("=")
        named.append((check_modality_name(name, item), path) if sep and name and "/" not in name else (None, item))
    specs = specs_from_args({str(i): path for i, (_, path) in enumerate(named)}, args)
    for i, (name, path) in enumerate(named):
        try:
            store = open_store(specs[str(i)], name, kinds.get(name, kinds.get(None)))
        except InputError as exc:
            problems.append(exc)
            continue
        if store.modality in stores:
            problems.append(InputError(path, "modality", f"modality name {store.modality!r} is taken by {stores[store.modality].path}",
                                       "name the stores: cellweave validate rna=A.zarr adt=B.zarr"))
            continue
        stores[store.modality] = store
    report = check_inputs(stores, obs_keys=[args.batch_key, args.label_key], links=args.links, progress=True)
    for r in report.stores.values():
        log.info(r.summary())
        for note in r.notes:
            log.info("  note: %s", note)
    for note in report.notes:  # e.g. link rows naming features no store has: ignored, never silently
        log.warning("%s", note)
    problems += report.problems
    for problem in problems:
        log.error("%s", problem)
    if problems:
        raise InputError("cellweave validate", "inputs", f"{len(problems)} problem(s), listed above", "fix them and validate again")
    log.info("%d store(s) valid", len(stores))


def _cmd_simulate(args: argparse.Namespace) -> None:
    from .data.output import output_guard
    from .simulate import simulate_atlas

    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    with output_guard(args.out, overwrite=args.overwrite):
        paths = simulate_atlas(args.out, args.cells, modalities=modalities, paired=args.paired, n_batches=args.batches,
                               fmt=args.format, seed=args.seed, n_genes=args.genes, n_proteins=args.proteins,
                               n_peaks=args.peaks, overwrite=args.overwrite, workers=args.workers)
    for name, path in paths.items():
        log.info("%s: %s", name, path)


def _cmd_stats(args: argparse.Namespace) -> None:
    from .data.check import open_checked
    from .data.preprocess import compute_stats, highly_variable_features
    from .data.spec import store_options

    store = open_checked(args.path, progress=True, **store_options(args))
    stats = compute_stats(store, target_sum=args.target_sum, progress=True)
    if store.kind == "counts":
        stats = highly_variable_features(store, stats, progress=True)
    path = stats.save(store.stats_dir)
    log.info(f"{store}: {stats.n_cells} cells, median library size {float(_median(stats.library_size)):.0f}; saved {path}")
    if stats.hvg_rank is not None:
        log.info(f"top {args.n_top} highly variable: {', '.join(stats.hvg(args.n_top)[:20])}{' ...' if args.n_top > 20 else ''}")


def _median(x):
    import numpy as np

    return np.median(x)


def _cmd_demo(args: argparse.Namespace) -> None:
    from .data.output import output_guard
    from .demo import run_demo

    with output_guard(args.out, refuse_existing=False) if args.out else nullcontext():  # the demo replaces its own outputs
        run_demo(cells=args.cells, out=args.out, steps=args.steps)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .data.output import output_guard
    from .evaluate import EvalSettings, evaluate_to_dir, load_inputs

    with output_guard(args.out, overwrite=args.overwrite):
        embeddings = load_inputs(args.run, args.embedding, args.obsm_key, pre_obsm_key=args.pre_obsm_key)
        settings = EvalSettings(scheduler=args.scheduler, n_workers=args.workers, chunk_size=args.chunk_size)
        doc = evaluate_to_dir(embeddings, args.out, label_key=args.label_key, batch_key=args.batch_key,
                              modality_key=args.modality_key, pair_key=args.pair_key, settings=settings,
                              plots=not args.no_plots, overwrite=args.overwrite)
    for name, result in doc["embeddings"].items():
        overall = result["aggregate"]["overall"]
        log.info(f"{name}: overall {'NaN' if overall is None else f'{overall:.3f}'}")
    log.info(f"wrote {args.out}/metrics.json and {args.out}/report.md")


def _cmd_links(args: argparse.Namespace) -> None:
    from .data.atomic import atomic_write_bytes
    from .data.output import output_guard
    from .models.factvae import FactVAE

    with output_guard(args.out, overwrite=args.overwrite, directory=False) as out:
        model = FactVAE.from_run(args.run, device=args.device)
        table = model.link_scores(args.candidates, n_background=args.n_background, coordinates=args.coordinates)
        atomic_write_bytes(out, table.sort_values("score", ascending=False).to_csv(sep="\t", index=False).encode())
    log.info(f"scored {len(table)} gene-peak pairs ({int((table['qvalue'] < 0.05).sum())} with q < 0.05); wrote {out}")


def _add_verbosity(parser: argparse.ArgumentParser, default: object = 0) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=default, help="more messages (debug)")
    parser.add_argument("-q", "--quiet", action="count", default=default,
                        help="fewer messages: warnings and errors only (-qq: errors only)")


class _CommonSubparsers:
    """``add_parser`` with the common options (``-v``/``-q``) on every command."""

    def __init__(self, sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
        self.sub, self.common = sub, common

    def add_parser(self, name: str, **kwargs: object) -> argparse.ArgumentParser:
        return self.sub.add_parser(name, parents=[self.common], **kwargs)


KIND_HELP = ("counts or normalized, for every modality or NAME=KIND for one (default: recorded in the store, else "
             "inferred: counts unless 1%% or more of the values are not integers; counts must be non-negative integers)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cellweave`` command."""
    from .data.spec import add_store_arguments

    p = argparse.ArgumentParser(prog="cellweave", description="Atlas-scale single-cell multi-omics integration.")
    _add_verbosity(p)
    common = argparse.ArgumentParser(add_help=False)  # -v/-q also after the command: `cellweave fit ... -q`
    _add_verbosity(common, default=argparse.SUPPRESS)
    sub = _CommonSubparsers(p.add_subparsers(dest="command", required=True), common)

    c = sub.add_parser("convert", help="convert .h5ad/.h5mu/10x/.fcs to Zarr or TileDB-SOMA, chunk by chunk")
    c.add_argument("input")
    c.add_argument("out")
    c.add_argument("--format", choices=["zarr", "soma"], default="zarr")
    c.add_argument("--modality", help="convert only this modality (or name the input's single modality)")
    c.add_argument("--kind", choices=["counts", "normalized"], help="matrix kind (default: recorded, else inferred from "
                   "the values: counts unless 1%% or more of them are not integers)")
    c.add_argument("--labels", help="FCS: CSV with one label per event (no header)")
    c.add_argument("--chunk-rows", type=int, default=4096)
    c.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_store_arguments(c)
    c.set_defaults(func=_cmd_convert)

    f = sub.add_parser("fit", help="train an integration model on modality stores and write RUN")
    from .models import METHODS

    f.add_argument("--method", choices=sorted(METHODS), help="default: scmodal (with --resume: the run's method)")
    f.add_argument("--modality", action="append", metavar="NAME=PATH",
                   help="a modality: .h5ad, .zarr, FILE.h5mu::MODALITY or SOMA_DIR::MEASUREMENT (repeat per modality); "
                        "a bare FILE.h5mu gives all its modalities by name")
    f.add_argument("--links", help="'auto' (default), 'learn' (no table: CCA links learned from cells matched on the "
                   "modalities' cluster geometry) or a TSV: source_modality, source_feature, target_modality, target_feature")
    f.add_argument("--links-augment", choices=["learn"],
                   help="'learn': also learn links (CCA on matched cells) for the pairs of --links and use both")
    f.add_argument("--genes-bed", help="gene coordinates (BED6) for ATAC -> RNA links")
    f.add_argument("--kind", action="append", metavar="[NAME=]KIND", help=KIND_HELP)
    f.add_argument("--batch-key", help="obs column with the batch of each cell (models with batch covariates)")
    f.add_argument("--config", help="run.toml: [model], [model.weights], [train], [inputs], seed")
    f.add_argument("--max-steps", help="training steps, or 'auto' (default): max(2000, 20 epochs, the method's least "
                   "epochs), at most the authors' budget; training also stops once the smoothed loss has converged "
                   "(see --convergence)")
    f.add_argument("--max-epochs", type=int, help="passes over the data instead of --max-steps")
    f.add_argument("--convergence", choices=["auto", "off"],
                   help="'auto' (default): stop once the smoothed training loss no longer improves; 'off': run the budget")
    f.add_argument("--checkpoint-minutes", help="wall time between checkpoints (default 10; 'off': by --checkpoint-every only)")
    f.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    f.add_argument("--precision", help="auto, 32, bf16-mixed, 16-mixed")
    f.add_argument("--num-workers", type=int)
    f.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (besides --checkpoint-minutes)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--resume", action="store_true",
                   help="continue the run in --out where it stopped (its config.toml gives the inputs and settings)")
    f.add_argument("--overwrite", action="store_true", help="replace an existing run in --out (kept if the new one fails "
                   "before its first checkpoint)")
    f.add_argument("--out", required=True, help="run directory")
    add_store_arguments(f)
    f.set_defaults(func=_cmd_fit)

    q = sub.add_parser("map", help="map new cells onto a trained run: embeddings (and transferred labels) of the query, "
                       "the reference unchanged")
    q.add_argument("--run", required=True, help="run directory of `cellweave fit` (its inputs must be readable)")
    q.add_argument("--modality", action="append", required=True, metavar="NAME=PATH",
                   help="query cells of one of the run's modalities: .h5ad, .zarr or SOMA_DIR::MEASUREMENT (repeatable); "
                        "features are aligned to the run's by name")
    q.add_argument("--out", required=True, help="output directory: embeddings/<modality>.zarr, labels/<modality>.tsv")
    q.add_argument("--batch-key", help="obs column of the query's batches (scMRDR: unseen batches get new parameters)")
    q.add_argument("--label-key", help="transfer this obs column of the reference cells to the query (kNN vote)")
    q.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    q.add_argument("--min-overlap", type=float, default=0.5, help="least share of the model's features a query must have")
    q.add_argument("--max-steps", type=int, default=500, help="steps fitting the parameters of new batches")
    q.add_argument("-k", type=int, default=30, help="neighbours of the label vote")
    q.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_store_arguments(q)
    q.set_defaults(func=_cmd_map)

    v = sub.add_parser("validate", help="check stores before fitting: damaged chunks, NaN/Inf, counts, empty cells, ids, "
                       "obs keys, links (one streamed pass each)")
    v.add_argument("path", nargs="+", metavar="[NAME=]PATH", help=".zarr, .h5ad, FILE.h5mu::MODALITY or SOMA_DIR::MEASUREMENT")
    v.add_argument("--batch-key", help="obs column every modality must have")
    v.add_argument("--label-key", help="obs column every modality must have")
    v.add_argument("--links", help="links TSV whose modality pairs must match features of both stores")
    add_store_arguments(v)
    v.add_argument("--kind", action="append", metavar="[NAME=]KIND", help=KIND_HELP)
    v.set_defaults(func=_cmd_validate)

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
    s.add_argument("--workers", type=int, default=None,
                   help="threads drawing cells at once (values do not depend on it; default: one per core, at most 8, "
                        "from 32,768 cells)")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_simulate)

    t = sub.add_parser("stats", help="compute preprocessing statistics (one chunked pass) and store them beside the data")
    t.add_argument("path", help=".zarr, .h5ad, FILE.h5mu::MODALITY or SOMA_DIR::MEASUREMENT")
    t.add_argument("--target-sum", type=float, default=1e4)
    t.add_argument("--n-top", type=int, default=2000, help="how many highly variable features to print")
    add_store_arguments(t)
    t.set_defaults(func=_cmd_stats)

    d = sub.add_parser("demo", help="simulate a small atlas and stream it (no network, no extra data)")
    d.add_argument("--cells", type=int, default=5_000)
    d.add_argument("--steps", type=int, default=200)
    d.add_argument("--out", default=None, help="keep the demo outputs here (default: a temporary directory)")
    d.set_defaults(func=_cmd_demo)
    e = sub.add_parser("evaluate", help="score embeddings (scIB bio/batch/modality, matching): metrics.json, report.md, UMAPs")
    where = e.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", action="append", metavar="RUN",
                       help="run directory (RUN/embeddings/*.zarr); repeat to compare runs")
    where.add_argument("--embedding", nargs="+", metavar="PATH",
                       help=".h5ad, .zarr or SOMA_DIR::MEASUREMENT; several stores (one per modality) form one embedding")
    e.add_argument("--label-key", required=True, help="obs column of cell types")
    e.add_argument("--batch-key", help="obs column of batches")
    e.add_argument("--modality-key", help="obs column of modalities (default for several stores: their modality)")
    e.add_argument("--pair-key", help="obs column pairing cells across modalities ('obs_names': the cell ids)")
    e.add_argument("--obsm-key", action="append", help="embedding key (default X_cellweave); repeat to compare embeddings")
    e.add_argument("--pre-obsm-key", help="unintegrated representation for PCR comparison (e.g. X_pca)")
    e.add_argument("--out", required=True, help="report directory to create")
    e.add_argument("--scheduler", help="auto (default), threads, local (LocalCluster) or a Dask scheduler address")
    e.add_argument("--workers", type=int, default=2, help="Dask workers of the local pool or cluster")
    e.add_argument("--chunk-size", type=int, help="cells per Dask block")
    e.add_argument("--no-plots", action="store_true", help="skip the UMAP plots")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=_cmd_evaluate)

    k = sub.add_parser("links", help="score gene-peak links of a FactVAE run: cosine of feature embeddings, with p/q-values")
    k.add_argument("--run", required=True, help="run directory of `cellweave fit --method factvae`")
    k.add_argument("--out", required=True, help="TSV to write: gene, peak, score, pvalue, qvalue, prior")
    k.add_argument("--candidates", help="TSV of the pairs to score (columns gene, peak); default: the run's candidates")
    k.add_argument("--n-background", type=int, help="shuffled pairs in the background (default: the run's setting)")
    k.add_argument("--coordinates", choices=["shared", "decoder"], default="shared",
                   help="'shared' (default): peak embeddings mapped into RNA latent coordinates over paired cells first; "
                        "'decoder': the raw decoder embeddings, as the FactVAE paper")
    k.add_argument("--device", default="cpu")
    k.add_argument("--overwrite", action="store_true")
    k.set_defaults(func=_cmd_links)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input reports one clear line and exits with status 2.

    Messages go through :mod:`logging` (see :mod:`cellweave.log`): what a command reports on stdout, warnings
    and errors on stderr; ``-v`` adds debug messages, ``-q`` keeps warnings and errors only.
    """
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    from .data.malloc import limit_malloc_arenas

    limit_malloc_arenas()  # the command streams: cap glibc's arenas before any reading thread exists
    with cli_logging(verbosity_level(args.verbose, args.quiet)):
        try:
            args.func(args)
        except InputError as exc:
            log.error("%s", exc)
            return 2
        if args.command != "demo":
            log.debug("done in %.1fs", time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
