"""``make docs`` fails on what a reader would trip over: a broken cross-reference or a failing notebook cell.

The documentation's own configuration (docs/conf.py: nitpicky references, notebooks executed, errors raised) builds
a small project with ``-W``, as ``make docs`` does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import cellweave_refs  # noqa: E402


def test_reference_check_knows_cellweave_objects():
    assert cellweave_refs._exists("cellweave.models.SCMODAL", None, None, "")
    assert cellweave_refs._exists("SCMODALConfig", "cellweave.models", None, "")
    assert cellweave_refs._exists("fit", "cellweave.models", "SCMODAL", "")
    # an attribute the class sets in __init__ (not a class attribute) counts
    assert cellweave_refs._exists("link_matrices", "cellweave.models", "SCMODAL", "")
    # relative to the defining module of the documented object's page
    assert cellweave_refs._exists("StoreLike", "cellweave.models", None, "generated/cellweave.models.SCMODAL")
    assert not cellweave_refs._exists("cellweave.models.NoSuchModel", None, None, "")
    assert not cellweave_refs._exists("no_such_function", "cellweave.data", None, "generated/cellweave.data.open_modality")


def test_property_prose_with_a_colon_is_not_a_type():
    """napoleon reads "The loss log: one row per step" as TYPE: description; the extension puts the prose back."""
    lines = ["one row per step", "", ":type: The loss log"]
    cellweave_refs.property_prose(None, "property", "x", None, {}, lines)
    assert lines == ["The loss log: one row per step"]
    typed = ["The model's settings.", "", ":type: SCMODALConfig"]  # a real type stays
    cellweave_refs.property_prose(None, "attribute", "x", None, {}, typed)
    assert typed == ["The model's settings.", "", ":type: SCMODALConfig"]


def _notebook(code: str) -> str:
    return json.dumps({"cells": [{"cell_type": "markdown", "id": "m0", "metadata": {}, "source": "# Notebook"},
                                 {"cell_type": "code", "execution_count": None, "id": "c0", "metadata": {},
                                  "outputs": [], "source": code}],
                       "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
                       "nbformat": 4, "nbformat_minor": 5})


def _build(tmp_path: Path, page: str, code: str | None = None) -> subprocess.CompletedProcess:
    """Build a project of one page and, when ``code`` is given, one notebook running it."""
    src = tmp_path / "src"
    src.mkdir(parents=True)
    (src / "conf.py").write_text(
        "import runpy\n"
        f"_ns = runpy.run_path({str(DOCS / 'conf.py')!r})\n"
        "globals().update({k: v for k, v in _ns.items() if not k.startswith('_')})\n"
        "html_theme = 'basic'\n")
    (src / "index.md").write_text("# Test\n\n```{toctree}\npage\n" + ("nb\n" if code else "") + "```\n")
    (src / "page.md").write_text(f"# Page\n\n{page}\n")
    if code:
        (src / "nb.ipynb").write_text(_notebook(code))
    return subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-E", "-W", "--keep-going", "-n", str(src),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)


def test_docs_build_fails_on_a_broken_reference(tmp_path):
    broken = _build(tmp_path, "{class}`cellweave.models.SCMODAL` and {func}`cellweave.models.no_such_function`")
    assert broken.returncode != 0
    assert "no_such_function" in broken.stderr and "reference target not found" in broken.stderr
    assert "SCMODAL" not in broken.stderr  # an existing object without a page of its own is fine


def test_docs_build_fails_on_a_failing_notebook_cell(tmp_path):
    res = _build(tmp_path, "{func}`~cellweave.data.open_modality`", "import cellweave\nraise ValueError('tutorial cell broke')")
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "reference target not found" not in out  # the page itself is fine: the cell fails the build
    assert "Executing notebook failed" in out and "ValueError" in out and "tutorial cell broke" in out
