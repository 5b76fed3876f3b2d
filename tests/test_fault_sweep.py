"""Fault injection across every command that reads a store: a deleted data chunk, a garbage chunk, a deleted
indptr chunk and a truncated chunk give exit status 2 and one error line naming the chunk, from `validate`,
`stats`, `convert` (to Zarr and to SOMA) and `fit` alike, and leave nothing new on disk (no output, no
statistics or check report beside the damaged data). `evaluate` gets the same on the embedding it reads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellweave.cli import main
from cellweave.data import open_modality
from cellweave.data.embeddings import EmbeddingWriter

from .conftest import tiny_pair

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def missing(chunk: Path) -> None:
    chunk.unlink()


def garbage(chunk: Path) -> None:
    chunk.write_bytes(np.random.default_rng(0).integers(0, 256, chunk.stat().st_size, dtype=np.uint8).tobytes())


def truncated(chunk: Path) -> None:
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])


#: damage -> (array, how, what the error line says)
DAMAGES = {
    "deleted data chunk": ("X/data", missing, "chunk c/0 is missing"),
    "garbage data chunk": ("X/data", garbage, "chunk c/0 cannot be decoded"),
    "deleted indptr chunk": ("X/indptr", missing, "chunk c/0 is missing"),
    "truncated data chunk": ("X/data", truncated, "chunk c/0 cannot be decoded"),
}


def listing(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pristine")
    inputs = tiny_pair(root)
    rna, adt, links = inputs["rna"], inputs["adt"], inputs["links"]
    embedding = root / "embedding.zarr"
    with EmbeddingWriter(embedding, open_modality(rna), {"X_cellweave": 4}) as w:
        w.write(np.arange(120), {"X_cellweave": np.random.default_rng(0).normal(size=(120, 4))})
    return {"rna": rna, "adt": adt, "links": links, "embedding": embedding}


def commands(store: Path, pristine: dict[str, Path], out: Path) -> dict[str, list[str]]:
    return {"validate": ["validate", f"rna={store}", f"adt={pristine['adt']}"],
            "stats": ["stats", str(store)],
            "convert zarr": ["convert", str(store), str(out / "copy.zarr")],
            "convert soma": ["convert", str(store), str(out / "copy.soma"), "--format", "soma"],
            "fit": ["fit", "--modality", f"rna={store}", "--modality", f"adt={pristine['adt']}", "--links",
                    str(pristine["links"]), "--max-steps", "2", "--device", "cpu", "--out", str(out / "run")]}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_every_reader_refuses_a_damaged_store_leaving_nothing(damage, pristine, tmp_path, capsys):
    array, apply, text = DAMAGES[damage]
    store = shutil.copytree(pristine["rna"], tmp_path / "rna.zarr")
    chunk = store / array / "c" / "0"
    apply(chunk)
    before = listing(tmp_path)
    for name, args in commands(store, pristine, tmp_path).items():
        assert main(args) == 2, name
        err = capsys.readouterr().err
        named = [line for line in err.splitlines() if f"{chunk}: {array}: {text}" in line]
        assert len(named) == 1 and "Traceback" not in err, (name, err)  # validate adds its count of problems
        assert listing(tmp_path) == before, name


@pytest.mark.parametrize("damage", ["deleted", "garbage", "truncated"])
def test_evaluate_refuses_a_damaged_embedding_leaving_nothing(damage, pristine, tmp_path, capsys):
    store = shutil.copytree(pristine["embedding"], tmp_path / "embedding.zarr")
    chunks = sorted(p for p in (store / "obsm" / "X_cellweave").rglob("*") if p.is_file() and p.name != "zarr.json")
    {"deleted": missing, "garbage": garbage, "truncated": truncated}[damage](chunks[0])
    before = listing(tmp_path)
    assert main(["evaluate", "--embedding", str(store), "--label-key", "cell_type", "--out", str(tmp_path / "report")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cellweave: error:")]
    assert len(errors) == 1 and "obsm/X_cellweave: chunk" in errors[0] and str(store) in errors[0], errors
    assert listing(tmp_path) == before


def test_stats_on_a_deleted_indptr_chunk_exits_2_in_a_fresh_process(pristine, tmp_path):
    """The case that crashed the interpreter (a segmentation fault reading zero row offsets), run as a user does."""
    store = shutil.copytree(pristine["rna"], tmp_path / "rna.zarr")
    missing(store / "X" / "indptr" / "c" / "0")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "cellweave", "stats", str(store)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert [line for line in done.stderr.splitlines() if line.startswith("cellweave: error:")] == [
        f"cellweave: error: {store}/X/indptr/c/0: X/indptr: chunk c/0 is missing (zarr would read it as zeros). Fix: the "
        "store is corrupt or was cut short while being written or copied: write it again from its source "
        "(`cellweave convert INPUT OUT`)"]


def test_a_reader_that_skips_the_check_still_refuses_zeroed_row_offsets(pristine, tmp_path):
    """The store itself refuses row offsets a missing indptr chunk turned to zeros, rather than crash in scipy."""
    from cellweave.errors import InputError

    store = shutil.copytree(pristine["rna"], tmp_path / "rna.zarr")
    missing(store / "X" / "indptr" / "c" / "0")
    with pytest.raises(InputError, match="row offsets are damaged"):
        open_modality(store).read_X([(0, 10)])
