"""``cellweave demo`` end to end on a tiny atlas: every stage runs and leaves its outputs behind."""

from __future__ import annotations

import json
import math

import torch


def test_demo_writes_run_and_report(tmp_path):
    from cellweave.demo import run_demo

    threads = torch.get_num_threads()
    try:
        figures = run_demo(cells=900, out=str(tmp_path), steps=20)
    finally:
        torch.set_num_threads(threads)
    for key in ("stream_cells_per_s", "steps_per_s", "foscttm_adt|rna", "label_transfer_atac", "aggregate_overall"):
        assert key in figures and math.isfinite(figures[key]), key
    assert 0 <= figures["foscttm_adt|rna"] <= 1
    doc = json.loads((tmp_path / "report" / "metrics.json").read_text())
    (result,) = doc["embeddings"].values()
    assert result["n_cells"] == 3 * 900
    assert (tmp_path / "report" / "report.md").exists() and list((tmp_path / "report").glob("umap_*.png"))
    assert (tmp_path / "run" / "embeddings" / "atac.zarr").exists()
