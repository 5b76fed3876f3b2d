"""Kill and resume: a `cellweave fit` killed by SIGKILL while training (inside a checkpoint write) or while writing
embeddings, then resumed with `cellweave fit --resume --out RUN`, ends with the same embedding and loss log as an
uninterrupted run; a store being written is never readable under its final name. Then the pieces: torn log rows,
temporaries of dead writers, embedding stores that appear whole or not at all."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cellweave.cli import main
from cellweave.data import open_modality
from cellweave.data.atomic import remove_stale_temporaries
from cellweave.data.embeddings import EmbeddingWriter
from cellweave.errors import InputError
from cellweave.models import read_embedding
from cellweave.models.scmodal_module import SCMODALModule
from cellweave.train import checkpoint
from cellweave.train.history import LossLog

from .conftest import tiny_pair

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 30, 10
MODALITIES = ("rna", "adt")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return tiny_pair(tmp_path_factory.mktemp("faults"), 240, 160)


def fit_args(inputs: dict[str, Path], out: Path) -> list[str]:
    return ["fit", "--modality", f"rna={inputs['rna']}", "--modality", f"adt={inputs['adt']}", "--links",
            str(inputs["links"]), "--config", str(inputs["config"]), "--max-steps", str(STEPS), "--checkpoint-every",
            str(EVERY), "--device", "cpu", "--out", str(out)]


def losses(run: Path) -> list[dict[str, str]]:
    with open(run / "losses.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def embeddings(run: Path) -> dict[str, np.ndarray]:
    return {m: read_embedding(run / "embeddings" / f"{m}.zarr") for m in MODALITIES}


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    torch.set_num_threads(1)
    assert main(fit_args(inputs, run)) == 0
    return run


def killed(point: str, n: int, args: list[str]) -> None:
    """Run the command in a subprocess that SIGKILLs itself at ``point`` (tests/fault_runner.py)."""
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "fault_runner.py"), point, str(n), json.dumps(args)],
                          check=False, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-3000:])


def hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def assert_same_as(uninterrupted: Path, run: Path) -> None:
    full, resumed = embeddings(uninterrupted), embeddings(run)
    for m in MODALITIES:
        np.testing.assert_array_equal(resumed[m], full[m])
    assert losses(run) == losses(uninterrupted)
    assert hidden(run) == [] and hidden(run / "embeddings") == []  # the killed writer's temporaries are gone


def test_killed_while_writing_a_checkpoint(inputs, uninterrupted, tmp_path):
    run = tmp_path / "run"
    killed("checkpoint", 2, fit_args(inputs, run))  # dies half way through the checkpoint of step 20
    assert checkpoint.load(run / "checkpoint.pt")["loop"]["step"] == EVERY  # the previous one, whole
    assert [p for p in hidden(run) if p.startswith(".checkpoint.pt.tmp-")]  # the torn temporary
    assert not (run / "embeddings").exists()
    assert main(["fit", "--resume", "--out", str(run)]) == 0  # inputs and settings from RUN/config.toml
    assert_same_as(uninterrupted, run)


def test_killed_while_writing_embeddings(inputs, uninterrupted, tmp_path):
    run = tmp_path / "run"
    killed("embed", 2, fit_args(inputs, run))  # rna written; dies after the first block of adt rows
    out = run / "embeddings"
    np.testing.assert_array_equal(read_embedding(out / "rna.zarr"), embeddings(uninterrupted)["rna"])
    assert not (out / "adt.zarr").exists() and [p for p in hidden(out) if p.startswith(".adt.zarr.tmp-")]
    with pytest.raises(InputError, match="no such embedding"):
        read_embedding(out / "adt.zarr")
    assert main(["fit", "--resume", "--out", str(run)]) == 0
    assert_same_as(uninterrupted, run)


def test_stopped_before_the_first_checkpoint_starts_again(inputs, uninterrupted, tmp_path, monkeypatch):
    run = tmp_path / "run"
    step = SCMODALModule.training_step

    def crash_at_step_5(self, batch, ctx):
        if ctx.step == 5:
            raise KeyboardInterrupt
        return step(self, batch, ctx)

    monkeypatch.setattr(SCMODALModule, "training_step", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        main(fit_args(inputs, run))
    monkeypatch.undo()
    assert (run / "config.toml").exists() and not (run / "checkpoint.pt").exists()
    with pytest.warns(UserWarning, match="no checkpoint yet"):
        assert main(["fit", "--resume", "--out", str(run)]) == 0
    assert_same_as(uninterrupted, run)


# ------------------------------------------------------------------ the pieces: log, temporaries, embedding stores
def test_a_torn_log_row_is_dropped_on_resume(tmp_path):
    path = tmp_path / "losses.csv"
    path.write_text("step,epoch,loss,seconds\n10,0,0.5,1.0\n20,0,0.25,2.0\n30,0,0.1")  # killed inside the last append
    log = LossLog(path)
    log.restore(lambda row: row["step"] <= 20)
    assert log.rows == [{"step": 10, "epoch": 0, "loss": 0.5, "seconds": 1.0}, {"step": 20, "epoch": 0, "loss": 0.25, "seconds": 2.0}]
    assert path.read_text() == "step,epoch,loss,seconds\n10,0,0.5,1.0\n20,0,0.25,2.0\n"


def test_only_temporaries_of_dead_writers_on_this_host_are_removed(tmp_path):
    target = tmp_path / "out.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    names = {"dead": f".out.zarr.tmp-{host}-{dead.pid}", "old": f".out.zarr.old-{host}-{dead.pid}",
             "alive": f".out.zarr.tmp-{host}-{os.getppid()}", "other host": f".out.zarr.tmp-elsewhere-{dead.pid}",
             "other target": f".out.zarrx.tmp-{host}-{dead.pid}"}
    for name in names.values():
        (tmp_path / name).mkdir()
    removed = remove_stale_temporaries(target)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["old"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[k] for k in ("alive", "other host", "other target"))


def test_an_embedding_store_appears_whole_or_not_at_all(inputs, tmp_path):
    store = open_modality(inputs["adt"])
    out = tmp_path / "adt.zarr"
    with pytest.raises(RuntimeError, match="100 of the 160 rows"), EmbeddingWriter(out, store, {"X_cellweave": 2}) as w:
        w.write(np.arange(100), {"X_cellweave": np.ones((100, 2))})
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with EmbeddingWriter(out, store, {"X_cellweave": 2}) as w:
        w.write(np.arange(160), {"X_cellweave": np.full((160, 2), 3.0)})
    with pytest.raises(ValueError, match="boom"), EmbeddingWriter(out, store, {"X_cellweave": 2}, overwrite=True) as w:
        w.write(np.arange(50), {"X_cellweave": np.zeros((50, 2))})
        raise ValueError("boom")
    np.testing.assert_array_equal(read_embedding(out), np.full((160, 2), 3.0))  # the old store, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adt.zarr"]
