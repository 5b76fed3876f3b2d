"""One modality-name rule (letters, digits, '_', '.', '-'; not starting with '.') wherever names enter: a name such as
`../../x` never reaches a file path."""

from __future__ import annotations

import pytest

from cellweave.cli import main
from cellweave.data import write_zarr
from cellweave.data.names import check_modality_name
from cellweave.errors import InputError
from cellweave.models import SCMODAL

from .conftest import counts_source


@pytest.mark.parametrize("name", ["rna", "adt_2", "atac.v1", "RNA-seq", "x"])
def test_valid_names(name):
    assert check_modality_name(name) == name


@pytest.mark.parametrize("name", ["../../x", ".x", "..", "a/b", "", "a b", "x\n", "rna:1", 3])
def test_invalid_names(name):
    with pytest.raises(InputError, match="not a valid modality name"):
        check_modality_name(name)


@pytest.fixture(scope="module")
def rna(tmp_path_factory):
    return write_zarr(counts_source(60, 30, seed=0, density=0.5), tmp_path_factory.mktemp("names") / "rna.zarr")


@pytest.mark.parametrize("name", ["../../x", ".x", "a b"])
def test_bad_names_stop_every_entry_point_before_anything_is_written(name, rna, tmp_path, capsys):
    for args in (["fit", "--modality", f"rna={rna}", "--modality", f"{name}={rna}", "--max-steps", "1", "--out",
                  str(tmp_path / "run")],
                 *([["validate", f"{name}={rna}"]] if "/" not in name else []),  # with a '/' validate reads a path
                 ["convert", str(rna), str(tmp_path / "out"), "--modality", name]):
        assert main(args) == 2, args
        raw = capsys.readouterr()
        err = [line for line in raw.err.splitlines() if "modality name" in line]
        assert err and f"{name!r} is not a valid modality name" in err[0], (args, raw)
    with pytest.raises(InputError, match="not a valid modality name"):
        SCMODAL({"rna": rna, name: rna})
    assert list(tmp_path.iterdir()) == []
