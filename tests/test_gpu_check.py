"""tools/gpu_check.py, run on the CPU with tiny sizes: every stage runs (or says why not) and the JSON and the
table are written. It has not been run on a GPU here; on a CUDA machine tools/gpu_check.sh runs it at 1M cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import load_script

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def gpu_check():
    return load_script(ROOT / "tools" / "gpu_check.py")


def test_knn_stage_and_outputs(tmp_path):
    doc = gpu_check().main(["--out", str(tmp_path), "--stages", "knn", "--cells", "1500", "--device", "cpu"])
    knn = doc["stages"]["knn"]
    assert knn["cells"] == 1500 and knn["exact"]["backend"] == "torch on cpu"
    assert 0.9 <= knn["hnsw_recall_at_k"] <= 1.0  # HNSW against the exact search, as a real recall
    assert json.loads((tmp_path / "gpu_check.json").read_text())["stages"]["knn"]["k"] == 15
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| knn | 1,500 x 30, k=15: torch on cpu |" in table and "recall@15" in table


def test_budget_skips_the_rest(tmp_path):
    doc = gpu_check().main(["--out", str(tmp_path), "--stages", "knn", "evaluate", "--cells", "500", "--device", "cpu",
                            "--budget-s", "0"])
    assert doc["stages"]["knn"]["skipped"].startswith("time budget spent") and "skipped" in doc["stages"]["evaluate"]


@pytest.mark.slow
def test_every_stage_on_cpu(tmp_path):
    doc = gpu_check().main(["--out", str(tmp_path), "--cells", "2000", "--train-cells", "500", "--steps", "3",
                            "--warmup", "1", "--workers", "0", "--device", "cpu"])
    st = doc["stages"]
    assert "skipped" in st["tests"] and not any("error" in v for v in st.values()), st
    for method in ("scmodal", "scmrdr"):
        assert st["train"][method]["32"]["steps"] == 3 and st["train"][method]["32"]["steps_per_s"] > 0
    assert st["evaluate"]["cells"] == 2000 and 0 <= st["evaluate"]["aggregate"]["overall"] <= 1
