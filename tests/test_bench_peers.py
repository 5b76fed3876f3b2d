"""bench/links.py --peers: a peer whose environment is missing is skipped with its reason, a failing one is reported."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import load_script

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def links():
    sys.path.insert(0, str(BENCH))  # bench scripts import their sibling `measure`
    try:
        yield load_script(BENCH / "links.py", "bench_links")
    finally:
        sys.path.remove(str(BENCH))


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**({"peer_python": None, "scot_src": None, "uniport_iterations": None,
                                  "methods": ["pamona", "scot"]} | kw))


def test_peer_unavailable_names_the_missing_piece(links, tmp_path):
    assert "no peer Python" in links.peer_unavailable("pamona", None, None)
    assert f"{tmp_path / 'nope'} is absent" in links.peer_unavailable("pamona", tmp_path / "nope", None)
    python = Path(sys.executable)
    assert links.peer_unavailable("pamona", python, None) is None
    assert "scotv1.py not found" in links.peer_unavailable("scot", python, tmp_path)


def test_peer_rows_skip_every_peer_without_an_environment(links, tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(20, 5))
    inputs = {"streams": None, "x": (x, x), "log": (abs(x), abs(x))}
    rows = links.peer_rows(inputs, {"order": np.arange(20)}, 0, _args(), tmp_path / "run")
    assert set(rows) == {"pamona", "scot"}
    assert all("no peer Python" in r["skipped"] for r in rows.values())
    assert "pamona skipped: no peer Python" in capsys.readouterr().out
    assert (tmp_path / "run" / "rna.npy").exists() and (tmp_path / "run" / "adt_log.npy").exists()


def test_a_failing_peer_is_reported_not_raised(links, tmp_path):
    """The runner really runs (here under this Python): SCOT's source is missing, so it reports that error."""
    x = np.random.default_rng(0).normal(size=(20, 5))
    for name in ("rna", "adt"):
        np.save(tmp_path / f"{name}.npy", x)
    row = links.run_peer("scot", tmp_path, 0, _args(peer_python=Path(sys.executable), scot_src=tmp_path / "absent"))
    assert "scotv1.py not found" in row["error"] and "z" not in row
    assert row["seconds"] > 0


def test_peer_summary_averages_each_method_over_seeds(links):
    out = {"sim rho=0.5 seed=0": {"scot": {"foscttm": 0.1, "label_transfer": 0.9, "seconds": 2.0},
                                  "pamona": {"skipped": "no peer Python"}},
           "sim rho=0.5 seed=1": {"scot": {"foscttm": 0.3, "label_transfer": 0.5, "seconds": 4.0}},
           "cite-seq seed=0": {"scot": {"foscttm": 0.4, "label_transfer": None, "seconds": 1.0}}}
    s = links.peer_summary(out)
    assert set(s) == {"sim rho=0.5 | scot", "cite-seq | scot"}
    assert s["sim rho=0.5 | scot"]["runs"] == 2
    assert s["sim rho=0.5 | scot"]["foscttm"] == pytest.approx((0.2, 0.1))
    assert s["sim rho=0.5 | scot"]["label_transfer"] == pytest.approx((0.7, 0.2))
    assert s["cite-seq | scot"]["label_transfer"] is None
