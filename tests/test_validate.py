"""Bad input end to end: `cellweave validate` and the same checks before every fit name the file, the field and
the fix, and leave no output behind; damaged chunks are named; the check streams; checkpoints load weights only."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cellweave.cli import main
from cellweave.data import InMemorySource, open_modality, write_zarr
from cellweave.data.check import check_inputs, scan_store
from cellweave.errors import InputError
from cellweave.models import SCMODAL
from cellweave.train import checkpoint

from .conftest import counts_source

N_CELLS, N_GENES, N_PROTEINS = 120, 30, 8


pytestmark = pytest.mark.usefixtures("one_thread")


def listing(path: Path) -> dict[str, int]:
    """Every file under ``path`` with its size (to show that nothing was added or changed)."""
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


def rna_counts(seed: int = 0) -> sp.csr_matrix:
    return counts_source(N_CELLS, N_GENES, seed=seed, density=0.3).X.tocsr()


def anndata_store(path: Path, X, kind: str = "counts", obs_names=None, var_names=None, obs: pd.DataFrame | None = None,
                  modality: str = "rna") -> Path:
    """A store written by anndata itself (no cellweave checks at conversion), the kind recorded in uns."""
    n, d = X.shape
    obs = obs if obs is not None else pd.DataFrame(index=obs_names if obs_names is not None else [f"c{i}" for i in range(n)])
    var = pd.DataFrame(index=var_names if var_names is not None else [f"g{j}" for j in range(d)])
    a = ad.AnnData(X=X, obs=obs, var=var)
    a.uns["cellweave"] = {"modality": modality, "kind": kind}
    a.write_zarr(path)
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """A valid protein store and a links table from its features to the RNA genes (same names)."""
    root = tmp_path_factory.mktemp("good")
    adt = write_zarr(counts_source(N_CELLS, N_PROTEINS, seed=1, prefix="p", modality="adt", density=0.9), root / "adt.zarr")
    links = root / "links.tsv"
    links.write_text("source_modality\tsource_feature\ttarget_modality\ttarget_feature\n"
                     + "".join(f"adt\tg{j}\trna\tg{j}\n" for j in range(N_PROTEINS)))
    rna = write_zarr(counts_source(N_CELLS, N_GENES, seed=0, density=0.3), root / "rna.zarr")
    return {"adt": adt, "links": links, "rna": rna}


def with_value(value: float, kind: str = "counts"):
    def make(path: Path) -> Path:
        X = rna_counts().toarray()
        X[5, 3] = value
        return anndata_store(path, sp.csr_matrix(X), kind=kind)
    return make


def empty_cells(path: Path) -> Path:
    X = rna_counts().toarray()
    X[[5, 40]] = 0
    return anndata_store(path, sp.csr_matrix(X))


def duplicate_cells(path: Path) -> Path:
    names = [f"c{i}" for i in range(N_CELLS)]
    names[9] = names[2]
    return anndata_store(path, rna_counts(), obs_names=names)


def duplicate_features(path: Path) -> Path:
    names = [f"g{j}" for j in range(N_GENES)]
    names[7] = names[4]
    return anndata_store(path, rna_counts(), var_names=names)


BAD_VALUES = {
    "nan": (with_value(np.nan), "X", "NaN or Inf value in cell row 5"),
    "inf": (with_value(np.inf, "normalized"), "X", "NaN or Inf value in cell row 5"),
    "negative count": (with_value(-2.0), "X", "negative value in a counts matrix at cell row 5"),
    "fractional count": (with_value(2.5), "X", "non-integer value in a counts matrix at cell row 5"),
    "empty cells": (empty_cells, "X", "2 of 120 cells have no nonzero value, e.g. row 5 (cell 'c5')"),
    "duplicate cell ids": (duplicate_cells, "obs_names (cell ids)", "1 duplicated ids, e.g. ['c2']"),
    "duplicate feature names": (duplicate_features, "var_names (feature names)", "1 duplicated ids, e.g. ['g4']"),
}


def fit_args(rna: Path, good: dict[str, Path], out: Path) -> list[str]:
    return ["fit", "--modality", f"rna={rna}", "--modality", f"adt={good['adt']}", "--links", str(good["links"]),
            "--max-steps", "2", "--device", "cpu", "--out", str(out)]


def assert_refused(capsys, args: list[str], source: Path | str, field: str, text: str) -> str:
    """The command exits with 2 and one error line names the source, the field, the problem and a fix."""
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if str(source) in line and text in line]
    assert lines, err
    assert f": {field}: " in lines[0] and "Fix: " in lines[0], lines[0]
    return err


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_are_refused_by_validate_and_fit_leaving_nothing(case, good, tmp_path, capsys):
    make, field, text = BAD_VALUES[case]
    bad = make(tmp_path / "rna.zarr")
    before = listing(bad)
    assert_refused(capsys, ["validate", f"rna={bad}", f"adt={good['adt']}"], bad, field, text)
    out = tmp_path / "run"
    assert_refused(capsys, fit_args(bad, good, out), bad, field, text)
    assert not out.exists()
    assert listing(bad) == before  # not even a cache or statistics sidecar


def test_negative_values_are_fine_in_a_normalized_modality(good, tmp_path):
    X = rna_counts().toarray()
    X[5, 3] = -2.5
    store = open_modality(anndata_store(tmp_path / "scaled.zarr", sp.csr_matrix(X), kind="normalized"))
    assert scan_store(store).ok


def damage(kind: str):
    """Overwrite the middle third with random bytes, cut the file in half, or delete it."""
    def apply(chunk: Path) -> None:
        blob = bytearray(chunk.read_bytes())
        n = len(blob)
        if kind == "garbled":
            blob[n // 3: 2 * n // 3] = np.random.default_rng(0).integers(0, 256, 2 * n // 3 - n // 3, dtype=np.uint8).tobytes()
            chunk.write_bytes(bytes(blob))
        elif kind == "truncated":
            chunk.write_bytes(bytes(blob[: n // 2]))
        else:
            chunk.unlink()
    return apply


@pytest.mark.parametrize("kind", ["garbled", "truncated", "missing"])
@pytest.mark.parametrize("array", ["X/data", "X/indices", "X/indptr"])
def test_a_damaged_chunk_is_named(kind, array, good, tmp_path, capsys):
    bad = write_zarr(counts_source(N_CELLS, N_GENES, seed=0, density=0.3), tmp_path / "rna.zarr")
    chunk = bad / array / "c" / "0"
    damage(kind)(chunk)
    # a garbled chunk fails to decode, or decodes to row offsets that decrease (indptr compresses to little)
    text = {"missing": "chunk c/0 is missing (zarr would read it as zeros)", "truncated": "chunk c/0 cannot be decoded",
            "garbled": "chunk c/0: row offsets decrease" if array == "X/indptr" else "chunk c/0 cannot be decoded"}[kind]
    assert_refused(capsys, ["validate", f"rna={bad}"], chunk, array, text)
    out = tmp_path / "run"
    assert_refused(capsys, fit_args(bad, good, out), chunk, array, text)
    assert not out.exists()


def test_a_cut_sparse_matrix_is_named(good, tmp_path, capsys):
    """indptr written for more values than data holds (a copy stopped half way)."""
    import zarr

    bad = anndata_store(tmp_path / "rna.zarr", rna_counts())
    data = zarr.open_array(str(bad / "X" / "data"), mode="r+")
    data.resize((data.shape[0] - 10,))
    assert_refused(capsys, ["validate", str(bad)], f"{bad}/X/indptr", "X/indptr", "but X/data holds")


def test_missing_obs_key_across_modalities(good, tmp_path, capsys):
    src = counts_source(N_CELLS, N_GENES, seed=0, density=0.3)
    src = InMemorySource(src.name, "rna", src.obs[["batch"]], src.var, src.X, kind="counts")
    rna = write_zarr(src, tmp_path / "rna.zarr")
    assert_refused(capsys, ["validate", f"rna={rna}", f"adt={good['adt']}", "--label-key", "cell_type"], rna,
                   "obs['cell_type']", "modality 'rna' has no such column; modalities ['adt'] have it")
    model = SCMODAL({"rna": rna, "adt": good["adt"]}, links=str(good["links"]), label_key="cell_type",
                    config={"hidden": 8, "batch_size": 32})
    with pytest.raises(InputError, match=r"obs\['cell_type'\].*modality 'rna' has no such column") as info:
        model.fit(2, run_dir=tmp_path / "run", progress=False)
    assert info.value.source == str(rna)
    assert not (tmp_path / "run").exists()


def test_links_that_match_nothing(good, tmp_path, capsys):
    links = tmp_path / "links.tsv"
    links.write_text("source_modality\tsource_feature\ttarget_modality\ttarget_feature\n"
                     "adt\tCD3\trna\tCD3E\nadt\tCD19\trna\tCD19\n")
    assert_refused(capsys, ["validate", f"rna={good['rna']}", f"adt={good['adt']}", "--links", str(links)], links,
                   "links adt -> rna", "0 adt features are linked to rna features")
    out = tmp_path / "run"
    args = fit_args(good["rna"], good, out)
    args[args.index("--links") + 1] = str(links)
    assert main(args) == 2
    assert "links adt -> rna" in capsys.readouterr().err
    assert not out.exists()


def test_clean_stores_pass_with_a_note_on_empty_features(good, tmp_path, capsys):
    X = rna_counts().toarray()
    X[:, [2, 11, 12]] = 0
    store = anndata_store(tmp_path / "rna.zarr", sp.csr_matrix(X))
    assert main(["validate", f"rna={store}", f"adt={good['adt']}", "--links", str(good["links"]),
                 "--batch-key", "batch"]) == 2  # the anndata store has no batch column
    capsys.readouterr()
    assert main(["validate", f"rna={store}", f"adt={good['adt']}", "--links", str(good["links"])]) == 0
    out = capsys.readouterr().out
    assert f"ok: rna {store} (counts, {N_CELLS} cells x {N_GENES} features)" in out
    assert f"{int((X.sum(0) == 0).sum())} of {N_GENES} features are zero in every cell" in out
    assert "2 store(s) valid" in out


def test_the_check_streams_in_chunks_and_is_cached(good, tmp_path):
    path = write_zarr(counts_source(1_000, N_GENES, seed=3, density=0.3), tmp_path / "rna.zarr")
    store = open_modality(path)
    reads: list[int] = []
    read_X = store.read_X
    store.read_X = lambda ranges: reads.append(sum(b - a for a, b in ranges)) or read_X(ranges)
    report = scan_store(store, chunk_rows=128)
    assert report.ok and sum(reads) == 1_000 and max(reads) <= 128
    reads.clear()
    assert check_inputs({"rna": store}).stores["rna"].ok and reads == []  # cached: nothing read again
    damage("garbled")(path / "X" / "data" / "c" / "0")  # the data changed: the cache no longer applies
    again = scan_store(store)
    assert not again.ok and again.problems[0].source == str(path / "X" / "data" / "c" / "0")


class Payload:
    """An object whose unpickling would run code: touch a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_load_weights_only(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": checkpoint.CHECKPOINT_FORMAT, "model": {"w": torch.zeros(2)}, "extra": Payload(marker)}, path)
    with pytest.raises(InputError, match="cannot be read") as info:
        checkpoint.load(path)
    assert info.value.source == str(path) and not marker.exists()
    torch.save({"format": checkpoint.CHECKPOINT_FORMAT, "model": {"w": torch.zeros(2)}}, path)
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.zeros(2))


def test_resume_of_a_run_that_never_started_is_refused(tmp_path, capsys):
    assert main(["fit", "--resume", "--out", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere" / "config.toml") in err and "no such file" in err
    assert not os.path.exists(tmp_path / "nowhere")


def test_link_rows_naming_unknown_features_are_reported(good, tmp_path, capsys):
    links = tmp_path / "links.tsv"
    links.write_text(good["links"].read_text() + "adt\tCD999\trna\tg1\nadt\tg2\trna\tNOTAGENE\nadt\tCD998\trna\tg3\n")
    assert main(["validate", f"rna={good['rna']}", f"adt={good['adt']}", "--links", str(links)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "links adt -> rna" in line]
    assert len(warnings) == 1, captured.err
    assert warnings[0].startswith("cellweave: warning: ")
    assert (f"{links}: links adt -> rna: 3 of {N_PROTEINS + 3} rows name features the stores do not have and are "
            "ignored (2 adt feature(s) absent from its store, e.g. ['CD999', 'CD998']; 1 rna feature(s) absent from its "
            "store, e.g. ['NOTAGENE'])") in warnings[0]
    assert "2 store(s) valid" in captured.out
    assert main(["validate", f"rna={good['rna']}", f"adt={good['adt']}", "--links", str(good["links"])]) == 0
    assert "links adt -> rna" not in capsys.readouterr().err  # a clean table: no note
