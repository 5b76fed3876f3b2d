"""DDP on CPU: two gloo processes started by torchrun. Every cell is covered once per epoch, training equals a
single process fed the union of the ranks' batches, uneven cell counts do not hang, only rank 0 writes the run,
and `cellweave fit` under torchrun embeds with every rank into one store (scMODAL; CVQVAE, whose reduced
inputs rank 0 caches once for both ranks).

One torchrun start runs everything (tests/ddp_worker.py): a rank's imports take seconds on a loaded machine."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset

from cellweave.data import open_modality, write_zarr
from cellweave.models import CVQVAE, SCMODAL, read_embedding

from .conftest import counts_source
from .ddp_worker import make_module, make_stream, make_trainer

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 240  # seconds: a hang fails the test instead of blocking CI
N_VARS = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: int = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``torchrun --nproc-per-node 2 ARGS`` on 127.0.0.1; kill the whole process group on timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout}s (a rank hangs?)\n{out[-3000:]}\n{err[-3000:]}")
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode})\n{out[-3000:]}\n{err[-5000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


CASES = {
    # 200 cells: 100 a rank; DataLoader workers on each rank
    "even": {"cells": 200, "batch_size": 16, "drop_last": False, "num_workers": 2, "steps": 14},
    # 203 cells: the order wraps around by one cell so both ranks get 102 (7 batches, the last of 6)
    "uneven": {"cells": 203, "batch_size": 16, "drop_last": False, "num_workers": 0, "steps": 14},
    # 203 cells, drop_last: one cell and the partial batches are left out (6 batches a rank)
    "drop_last": {"cells": 203, "batch_size": 16, "drop_last": True, "num_workers": 0, "steps": 12},
}
SCMODAL_CONFIG = {"hidden": 16, "n_latent": 4, "batch_size": 64, "d_steps": 1, "k": 5}
FIT_CELLS = {"rna": 301, "adt": 157}


def fit_inputs(root: Path) -> dict[str, Path]:
    """An uneven unpaired pair of stores (301 RNA, 157 protein cells), a links table and a run config."""
    paths = {"rna": write_zarr(counts_source(FIT_CELLS["rna"], 40, seed=0, density=0.3), root / "rna.zarr"),
             "adt": write_zarr(counts_source(FIT_CELLS["adt"], 8, seed=1, prefix="p", modality="adt", density=0.9),
                               root / "adt.zarr"),
             "links": root / "links.tsv", "config": root / "run.toml", "out": root / "fit"}
    paths["links"].write_text("source_modality\tsource_feature\ttarget_modality\ttarget_feature\n"
                              + "".join(f"adt\tg{j}\trna\tg{j}\n" for j in range(8)))
    paths["config"].write_text("[model]\n" + "".join(f"{k} = {v}\n" for k, v in SCMODAL_CONFIG.items())
                               + "[train]\nmax_steps = 6\n")
    return paths


CVQVAE_CONFIG = {"n_components": 5, "n_latent": 4, "hidden": [16], "n_codes": 16, "batch_size": 32}
PAIRED_CELLS = {"rna": 30, "atac": 60}  # features of the paired stores (the same 149 cells)


def paired_inputs(root: Path) -> dict[str, Path]:
    """Paired RNA and ATAC stores of the same 149 cells and a small CVQVAE config."""
    paths: dict[str, Path] = {m: write_zarr(counts_source(149, n, seed=2 + i, modality=m, density=0.3), root / f"paired_{m}.zarr")
                              for i, (m, n) in enumerate(PAIRED_CELLS.items())}
    paths["config"] = root / "cvqvae.toml"
    paths["config"].write_text("[model]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in CVQVAE_CONFIG.items())
                               + "[train]\nmax_steps = 6\n")
    paths["out"] = root / "cvqvae"
    return paths


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> dict:
    """Each case trained by two ranks, per rank the rows of every step and the weights; then `cellweave fit`."""
    root = tmp_path_factory.mktemp("ddp")
    cases = []
    for name, case in CASES.items():
        store = write_zarr(counts_source(case["cells"], N_VARS, seed=len(name), prefix=f"{name}_", density=0.4),
                           root / f"{name}.zarr")
        (root / name).mkdir()
        cases.append({**case, "name": name, "store": str(store)})
    fit = fit_inputs(root)
    fit_args = ["fit", "--modality", f"rna={fit['rna']}", "--modality", f"adt={fit['adt']}", "--links", str(fit["links"]),
                "--config", str(fit["config"]), "--device", "cpu", "--checkpoint-every", "3", "--out", str(fit["out"])]
    paired = paired_inputs(root)
    paired_args = ["fit", "--method", "cvqvae", *(a for m in PAIRED_CELLS for a in ("--modality", f"{m}={paired[m]}")),
                   "--batch-key", "batch", "--config", str(paired["config"]), "--device", "cpu", "--out", str(paired["out"])]
    done = torchrun(str(ROOT / "tests" / "ddp_worker.py"), str(root), json.dumps(cases),
                    json.dumps([fit_args, paired_args]))
    runs = {c["name"]: {**c, "root": root / c["name"],
                        "ranks": [torch.load(root / c["name"] / f"rank{r}.pt", weights_only=True) for r in range(2)]}
            for c in cases}
    return {**runs, "fit": {**fit, "stdout": done.stdout}, "paired": paired}


def epochs(run: dict) -> list[list[int]]:
    """Rows of both ranks per epoch (steps of an epoch: len of a rank's stream)."""
    per_epoch = run["steps"] // 2
    steps = [a + b for a, b in zip(run["ranks"][0]["steps"], run["ranks"][1]["steps"])]
    return [list(itertools.chain.from_iterable(steps[e * per_epoch:(e + 1) * per_epoch])) for e in range(2)]


def test_every_cell_once_per_epoch(ddp_runs):
    run = ddp_runs["even"]
    first, second = epochs(run)
    for rows in (first, second):
        assert sorted(rows) == list(range(run["cells"]))
    assert first != second  # a new shuffle each epoch
    r0, r1 = (set(itertools.chain.from_iterable(r["steps"][:7])) for r in run["ranks"])
    assert not r0 & r1 and len(r0) == len(r1) == 100


def test_uneven_cells_equal_batches_and_no_hang(ddp_runs):
    run = ddp_runs["uneven"]
    sizes = [[len(s) for s in r["steps"]] for r in run["ranks"]]
    assert sizes[0] == sizes[1] == [16] * 6 + [6] + [16] * 6 + [6]
    for rows in epochs(run):
        counts = Counter(rows)
        assert set(counts) == set(range(run["cells"])) and sorted(counts.values()) == [1] * 202 + [2]
    dropped = ddp_runs["drop_last"]
    assert [len(s) for s in dropped["ranks"][0]["steps"]] == [16] * 12
    for rows in epochs(dropped):
        assert len(rows) == len(set(rows)) == 192


def test_ranks_stay_identical(ddp_runs):
    for run in (ddp_runs[name] for name in CASES):
        s0, s1 = (r["state"] for r in run["ranks"])
        assert all(torch.equal(s0[k], s1[k]) for k in s0), run["name"]  # buffers too: rank 0's at the end


class RankUnion(IterableDataset):
    """The union of both ranks' batches at every step, in one process: the single-process reference."""

    def __init__(self, streams) -> None:
        super().__init__()
        self.streams = streams

    def set_epoch(self, epoch: int) -> None:
        for s in self.streams:
            s.set_epoch(epoch)

    def set_skip(self, n: int) -> None:
        for s in self.streams:
            s.set_skip(n)

    def __len__(self) -> int:
        return len(self.streams[0])

    def __iter__(self):
        for parts in zip(*self.streams):
            yield {f"rank{r}": b for r, b in enumerate(parts)}


def test_training_equals_one_process_with_the_same_global_batch(ddp_runs):
    run = ddp_runs["uneven"]
    torch.set_num_threads(1)
    store = open_modality(run["store"])
    module = make_module(store.n_vars)
    result = make_trainer(run, None).fit(module, RankUnion([make_stream(store, run, rank=r, world_size=2) for r in range(2)]))
    ddp = run["ranks"][0]
    assert module.steps == [a + b for a, b in zip(ddp["steps"], run["ranks"][1]["steps"])]
    reference, start = module.state_dict(), make_module(store.n_vars).state_dict()
    for key in reference:
        if key == "seen_mean":  # a statistic of each rank's own batches (rank 0's is kept)
            continue
        assert not torch.equal(reference[key], start[key]), key  # it trained
        torch.testing.assert_close(ddp["state"][key], reference[key], rtol=1e-5, atol=1e-6)
    # the logged terms are means over both ranks' cells
    assert [r["step"] for r in ddp["history"]] == [r["step"] for r in result.history]
    np.testing.assert_allclose([r["loss"] for r in ddp["history"]], [r["loss"] for r in result.history], rtol=1e-5)


def test_only_rank_zero_writes_the_run(ddp_runs):
    for run in (ddp_runs[name] for name in CASES):
        files = sorted(p.name for p in (run["root"] / "run").iterdir())
        assert files == ["checkpoint.pt", "loss_curves.png", "losses.csv"], files
        ckpt = torch.load(run["root"] / "run" / "checkpoint.pt", weights_only=True)
        assert ckpt["loop"]["step"] == run["steps"]
        assert all(torch.equal(ckpt["model"][k], v) for k, v in run["ranks"][0]["state"].items())


# ------------------------------------------------------------------ the command line
def test_fit_embeds_with_every_rank_into_one_store(ddp_runs, tmp_path):
    fit = ddp_runs["fit"]
    out = fit["out"]
    assert fit["stdout"].count("trained 6 steps in") == 2, fit["stdout"]  # rank 0 reports (scMODAL, then CVQVAE)
    assert fit["stdout"].count(f"embeddings: {out}/embeddings") == 1, fit["stdout"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.toml", "embeddings", "features",
                                                     "links.tsv", "loss_curves.png", "losses.csv"]  # links: save_extras
    assert sorted(p.name for p in (out / "embeddings").iterdir()) == ["adt.zarr", "rna.zarr"]  # no temporaries
    ddp = {m: read_embedding(out / "embeddings" / f"{m}.zarr") for m in FIT_CELLS}
    # one process with rank 0's weights embeds the same: rank 1 wrote its rows with identical weights
    torch.set_num_threads(1)
    model = SCMODAL({m: fit[m] for m in FIT_CELLS}, links=str(fit["links"]), config=SCMODAL_CONFIG)
    model.load_weights(out)
    single = {m: read_embedding(p) for m, p in model.embed(tmp_path / "single", progress=False).items()}
    for m, n in FIT_CELLS.items():
        assert ddp[m].shape == (n, 4) and np.isfinite(ddp[m]).all()
        assert (np.abs(ddp[m]).sum(1) > 0).all()  # every row written (unwritten rows read as zeros)
        np.testing.assert_allclose(ddp[m], single[m], rtol=1e-5, atol=1e-6)


def test_cvqvae_under_torchrun_caches_reduced_cells_once_and_embeds_every_cell(ddp_runs, tmp_path):
    paired = ddp_runs["paired"]
    out = paired["out"]
    assert (out / "checkpoint.pt").exists() and sorted(p.name for p in (out / "embeddings").iterdir()) == ["atac.zarr", "rna.zarr"]
    for m in PAIRED_CELLS:  # rank 0 wrote one cache per modality; the other rank read it (no temporaries left)
        assert [p.name.split("-")[0] for p in (paired[m] / ".cellweave" / "reduced").glob("*.zarr")] == ["lsi" if m == "atac" else "pca"]
    ddp = {m: read_embedding(out / "embeddings" / f"{m}.zarr") for m in PAIRED_CELLS}
    torch.set_num_threads(1)
    single = CVQVAE.from_run(out)  # rank 0's weights in one process embed the same
    for m, path in single.embed(tmp_path / "single", progress=False).items():
        assert ddp[m].shape == (149, 4)
        np.testing.assert_allclose(ddp[m], read_embedding(path), rtol=1e-5, atol=1e-6)
