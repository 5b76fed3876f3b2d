"""The library logs instead of printing; the command routes its messages by -v / -q."""

from __future__ import annotations

import logging

from cellweave.cli import main
from cellweave.log import verbosity_level

SIM = ["simulate", "--cells", "60", "--modalities", "rna,adt", "--genes", "40", "--proteins", "8", "--overwrite"]


def test_levels_of_v_and_q():
    assert verbosity_level() == logging.INFO
    assert verbosity_level(verbose=1) == logging.DEBUG
    assert verbosity_level(quiet=1) == logging.WARNING
    assert verbosity_level(quiet=2) == logging.ERROR
    assert verbosity_level(verbose=3) == logging.DEBUG


def test_reports_on_stdout_errors_on_stderr_and_quiet(tmp_path, capsys):
    assert main([*SIM, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert f"rna: {tmp_path / 'a' / 'rna.zarr'}" in out and "done in" not in out
    assert main([*SIM, "--out", str(tmp_path / "b"), "-v"]) == 0
    assert "done in" in capsys.readouterr().out
    assert main(["-q", *SIM, "--out", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out == "" and (tmp_path / "c" / "rna.zarr").exists()
    assert main(["stats", str(tmp_path / "missing.zarr"), "-q"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"cellweave: error: {tmp_path / 'missing.zarr'}: path: does not exist")


def test_the_command_leaves_the_logger_as_it_found_it(tmp_path, caplog):
    logger = logging.getLogger("cellweave")
    before = (logger.level, logger.propagate, list(logger.handlers))
    with caplog.at_level(logging.INFO, logger="cellweave"):
        main([*SIM, "--out", str(tmp_path / "a")])
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
