"""A strict schema for `cellweave fit --config`: unknown sections and keys (a typo such as `max_stpes`) are refused
listing the valid keys, and values of the wrong type or range are one line naming the key, not a torch
traceback; a run's own resolved config.toml passes back."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from cellweave.cli import main
from cellweave.models import SCMODAL, SCMODALConfig, SCMRDRConfig
from cellweave.models.run import _drop_none, check_config

from .conftest import tiny_pair

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    return tiny_pair(tmp_path_factory.mktemp("schema"))


BAD = {
    "unknown section": ("[trian]\nmax_steps = 5\n", "trian: unknown setting or section", "use one of: batch_key,"),
    "typo in [train]": ("[train]\nmax_stpes = 5\n", "[train] max_stpes: unknown setting",
                        "use one of: checkpoint_every, checkpoint_minutes, convergence, device, max_epochs, max_steps, "
                        "num_workers, precision"),
    "unknown [model] key": ("[model]\nn_latnet = 8\n", "[model] n_latnet: unknown setting", "use one of: batch_size,"),
    "unknown loss weight": ("[model.weights]\ngann = 1.0\n", "[model.weights] gann: unknown loss weight", "use one of:"),
    "string for an integer": ('[model]\nn_latent = "eight"\n', "[model] n_latent: must be an integer, got 'eight'",
                              "set n_latent = 20 (the default)"),
    "negative size": ("[model]\nn_latent = -4\n", "[model] n_latent: must be at least 1, got -4", "n_latent = 20"),
    "negative weight": ("[model.weights]\ngan = -1.0\n", "[model.weights] gan: must be zero or more, got -1.0", "gan = 1.0"),
    "float for an integer": ("[model]\nbatch_size = 32.5\n", "[model] batch_size: must be an integer, got 32.5", ""),
    "zero steps": ("[train]\nmax_steps = 0\n", "[train] max_steps: must be at least 1, got 0", ""),
    "string steps": ('[train]\nmax_steps = "many"\n', "[train] max_steps: must be an integer or 'auto', got 'many'", ""),
    "word for minutes": ('[train]\ncheckpoint_minutes = "soon"\n', "[train] checkpoint_minutes: must be a number or 'off'", ""),
    "zero minutes": ("[train]\ncheckpoint_minutes = 0\n", "[train] checkpoint_minutes: must be above 0, got 0", ""),
    "unknown convergence": ('[train]\nconvergence = "never"\n', "[train] convergence: must be 'auto' or 'off', got 'never'", ""),
    "table for a string": ("[links]\npath = 'x'\n", "links: must be a string", ""),
    "negative seed": ("seed = -1\n", "seed: must be zero or more, got -1", ""),
    "unknown matrix kind": ('[matrix_kinds]\nrna = "raw"\n', "unknown matrix kind 'raw'", "use one of counts, normalized"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_configs_are_one_line_naming_the_key(case, stores, tmp_path, capsys):
    text, problem, fix = BAD[case]
    config = tmp_path / "run.toml"
    config.write_text(text)
    out = tmp_path / "run"
    assert main(["fit", "--modality", f"rna={stores['rna']}", "--modality", f"adt={stores['adt']}", "--links",
                 str(stores["links"]), "--config", str(config), "--max-steps", "2", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("cellweave: error:")]
    assert len(lines) == 1 and problem in lines[0] and fix in lines[0], lines
    assert not out.exists()


def test_model_config_types_are_checked_from_the_api_too():
    with pytest.raises(Exception, match=r"\[model\] hidden: must be a list of integers, got 'wide'"):
        SCMRDRConfig.from_dict({"hidden": "wide"})
    with pytest.raises(Exception, match=r"\[model\] hidden: must be at least 1, got \[128, 0\]"):
        SCMRDRConfig.from_dict({"hidden": [128, 0]})
    assert SCMRDRConfig.from_dict({"hidden": [64, 32], "patience": 3}).hidden == (64, 32)


def test_a_runs_resolved_config_passes_back(stores):
    model = SCMODAL({"rna": stores["rna"], "adt": stores["adt"]}, links=str(stores["links"]),
                    config={"hidden": 16, "batch_size": 32})
    cfg = tomllib.loads(tomli_w.dumps(_drop_none(model.config_dict() | {
        "matrix_kinds": {"rna": "counts"},
        "train": {"max_steps": 5, "device": "cpu", "precision": "auto", "num_workers": 0, "checkpoint_every": 2},
        "budget": {"max_steps": 5, "rule": "fixed", "steps_per_epoch": 4, "convergence": "off"},
        "result": {"steps": 5, "epoch": 1, "stop_reason": "max_steps"}})))
    check_config(cfg, "config.toml")
    check_config({"train": {"max_steps": "auto", "max_epochs": 3, "checkpoint_minutes": 0.5, "convergence": "off"}}, "c.toml")
    check_config({"train": {"checkpoint_minutes": "off", "convergence": "auto", "checkpoint_every": 10}}, "c.toml")
    assert SCMODALConfig.from_dict(cfg["model"]).hidden == 16
