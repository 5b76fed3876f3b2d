"""One count-kind rule for validate, convert and fit (cellweave.data.kind): a count matrix stays a count matrix when
one value is damaged (the value is refused, naming its row), negative values are never counts, and
``--kind counts|normalized`` overrides the inference everywhere, a run keeping it for --resume."""

from __future__ import annotations

import tomllib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellweave.cli import main
from cellweave.data import open_modality
from cellweave.data.kind import infer_kind

from .conftest import counts_source, tiny_pair

pytestmark = pytest.mark.usefixtures("one_thread")
N_CELLS, N_GENES = 120, 30


def h5ad(path: Path, X: np.ndarray) -> Path:
    """An .h5ad written by anndata itself: no kind recorded, so cellweave infers it."""
    ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame(index=[f"c{i}" for i in range(len(X))]),
               var=pd.DataFrame(index=[f"g{j}" for j in range(X.shape[1])])).write_h5ad(path)
    return path


def counts(value: float | None = None) -> np.ndarray:
    X = counts_source(N_CELLS, N_GENES, seed=0, density=0.3).X.toarray()
    if value is not None:
        X[5, 3] = value
    return X


@pytest.fixture(scope="module")
def adt(tmp_path_factory) -> dict[str, Path]:
    inputs = tiny_pair(tmp_path_factory.mktemp("adt"))
    return {k: inputs[k] for k in ("adt", "links", "config")}


def test_the_rule_on_values():
    rng = np.random.default_rng(0)
    raw = rng.poisson(3, 5000).astype(np.float32)
    assert infer_kind(raw) == "counts"
    assert infer_kind(np.log1p(raw)) == "normalized"
    assert infer_kind(raw / raw.sum() * 1e4) == "normalized"
    assert infer_kind(rng.normal(size=5000)) == "normalized"  # scaled
    one_off = raw.copy()
    one_off[10] = 0.5
    assert infer_kind(one_off) == "counts"  # one stray value does not flip a count matrix
    assert infer_kind(np.zeros(100)) == "counts" and infer_kind(np.array([np.nan, 2.0])) == "counts"


def fit_args(data: Path, adt: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["fit", "--modality", f"rna={data}", "--modality", f"adt={adt['adt']}", "--links", str(adt["links"]),
            "--config", str(adt["config"]), "--max-steps", "2", "--device", "cpu", "--out", str(out), *extra]


@pytest.mark.parametrize("value,text", [(-1.0, "negative value in a counts matrix at cell row 5"),
                                        (0.5, "non-integer value in a counts matrix at cell row 5")])
def test_one_bad_value_in_a_count_matrix_is_refused_alike_by_validate_convert_and_fit(value, text, adt, tmp_path, capsys):
    data = h5ad(tmp_path / "rna.h5ad", counts(value))
    for args in (["validate", f"rna={data}"], ["convert", str(data), str(tmp_path / "rna.zarr")],
                 fit_args(data, adt, tmp_path / "run")):
        assert main(args) == 2, args[0]
        err = capsys.readouterr().err
        assert f"{data}: X: {text}" in err and "--kind normalized" in err, (args[0], err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rna.h5ad"]


def test_kind_normalized_overrides_everywhere_and_a_run_keeps_it(adt, tmp_path, capsys):
    data = h5ad(tmp_path / "rna.h5ad", counts(0.5))
    assert main(["validate", f"rna={data}", "--kind", "rna=normalized"]) == 0
    assert f"ok: rna {data} (normalized," in capsys.readouterr().out
    assert main(["convert", str(data), str(tmp_path / "rna.zarr"), "--kind", "normalized"]) == 0
    assert open_modality(tmp_path / "rna.zarr").kind == "normalized"
    run = tmp_path / "run"
    assert main(fit_args(data, adt, run, "--kind", "rna=normalized")) == 0
    assert tomllib.loads((run / "config.toml").read_text())["matrix_kinds"] == {"rna": "normalized"}
    assert main(["fit", "--resume", "--max-steps", "3", "--out", str(run)]) == 0  # the override is read back
    capsys.readouterr()
    assert main(fit_args(data, adt, tmp_path / "run2", "--kind", "protein=counts")) == 2
    assert "--kind: protein: names no modality" in capsys.readouterr().err
    assert main(["validate", str(data), "--kind", "raw"]) == 2
    assert "unknown matrix kind 'raw'" in capsys.readouterr().err


def test_kind_counts_holds_a_normalized_matrix_to_counts(tmp_path, capsys):
    data = h5ad(tmp_path / "rna.h5ad", np.log1p(counts()))
    assert open_modality(data).kind == "normalized"
    assert main(["validate", f"rna={data}"]) == 0
    capsys.readouterr()
    assert main(["validate", f"rna={data}", "--kind", "counts"]) == 2
    assert "non-integer value in a counts matrix at cell row 0" in capsys.readouterr().err
