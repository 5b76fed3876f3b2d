"""The one output guard of every writing command: existing outputs refused unless --overwrite (a run continued with
--resume), one writer per output (a lock file naming its holder; a dead holder's lock taken over), and outputs
that cannot be written (an immutable directory, /proc, a path under a file, a file where a directory goes)
refused in one line naming the path and the reason."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from cellweave.cli import main
from cellweave.data.output import lock_path, output_guard
from cellweave.errors import InputError
from cellweave.models import SCMODAL
from cellweave.train.trainer import Trainer

from .conftest import tiny_pair

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def listing(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return tiny_pair(tmp_path_factory.mktemp("outputs"))


def fit_args(inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["fit", "--modality", f"rna={inputs['rna']}", "--modality", f"adt={inputs['adt']}", "--links",
            str(inputs["links"]), "--config", str(inputs["config"]), "--max-steps", "2", "--device", "cpu",
            "--out", str(out), *extra]


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cellweave: error:")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def finished(inputs, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(fit_args(inputs, run)) == 0
    return run


# --------------------------------------------------------------------------------- existing outputs
def test_fit_refuses_a_finished_run_and_resume_still_continues_it(inputs, finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = listing(run)
    assert main(fit_args(inputs, run)) == 2
    line = one_error_line(capsys)
    assert f"{run}: output path: already exists" in line and "--overwrite" in line and "--resume" in line
    assert listing(run) == before
    assert main(["fit", "--resume", "--max-steps", "4", "--out", str(run)]) == 0  # continued in place
    assert "trained 4 steps" in capsys.readouterr().out
    assert main(["fit", "--resume", "--overwrite", "--out", str(run)]) == 2
    assert "--resume/--overwrite" in one_error_line(capsys)


def test_fit_overwrite_replaces_a_run_and_a_failed_replacement_keeps_the_old_one(inputs, finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "marker").write_text("old run")
    bad_links = tmp_path / "links.tsv"
    bad_links.write_text("source_modality\tsource_feature\ttarget_modality\ttarget_feature\nadt\tCD3\trna\tCD3E\n")
    args = fit_args(inputs, run, "--overwrite")
    args[args.index("--links") + 1] = str(bad_links)
    before = listing(run)
    assert main(args) == 2  # refused before any checkpoint: the old run is put back whole
    assert "links adt -> rna" in one_error_line(capsys)
    assert listing(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["links.tsv", "run"]  # no trash, no lock left
    assert main(fit_args(inputs, run, "--overwrite")) == 0
    assert not (run / "marker").exists() and (run / "checkpoint.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["links.tsv", "run"]


def test_an_empty_directory_is_not_an_existing_output(inputs, tmp_path):
    (tmp_path / "sim").mkdir()
    assert main(["simulate", "--cells", "60", "--modalities", "rna", "--genes", "40", "--out", str(tmp_path / "sim")]) == 0
    assert (tmp_path / "sim" / "rna.zarr").is_dir()


# --------------------------------------------------------------------------------- one writer at a time
HOLDER = textwrap.dedent("""
    import sys, time
    from cellweave.data.output import output_guard
    with output_guard(sys.argv[1], overwrite=True):
        print("held", flush=True)
        time.sleep(120)
""")


@contextlib.contextmanager
def held_by_another_process(out: Path):
    """A second process holding the output guard of ``out`` (as a concurrent `cellweave` command would)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_second_writer_of_the_same_output_stops_naming_the_first(inputs, tmp_path, capsys):
    run = tmp_path / "run"
    with held_by_another_process(run) as pid:
        assert main(fit_args(inputs, run)) == 2
        line = one_error_line(capsys)
        assert f"{run}: lock: another cellweave command (pid {pid}) is writing this output" in line
        assert str(lock_path(run)) in line
        assert not run.exists()
        for args in (["simulate", "--cells", "60", "--modalities", "rna", "--out", str(run)],
                     ["convert", str(inputs["rna"]), str(run)]):
            assert main(args) == 2
            assert f"(pid {pid})" in one_error_line(capsys)
        assert not run.exists()
    # the holder was killed: the kernel dropped its lock, and the lock file it left is taken over
    assert lock_path(run).exists()
    assert main(fit_args(inputs, run)) == 0
    assert not lock_path(run).exists()


def in_another_thread(fn) -> BaseException | None:
    """Run ``fn`` in another thread of this process; return what it raised."""
    raised: list[BaseException] = []

    def target():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 -- handed back to the test
            raised.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return raised[0] if raised else None


def test_the_guard_is_reentered_by_its_thread_and_excludes_other_threads(tmp_path):
    out = tmp_path / "out"
    with output_guard(out):
        with output_guard(tmp_path / "." / "out", overwrite=True):  # nested, same path: held already
            out.mkdir()
            (out / "x").write_text("x")
        assert lock_path(out).exists()  # the inner block left the outer guard's lock in place
        exc = in_another_thread(lambda: output_guard(out, overwrite=True).__enter__())
        assert isinstance(exc, InputError) and f"lock: another cellweave command (pid {os.getpid()})" in str(exc)
    with output_guard(out, overwrite=True):  # released
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --------------------------------------------------------------------------------- outputs that cannot be written
@contextlib.contextmanager
def immutable(directory: Path):
    """``chattr +i`` (refuses even root); skip where the file system or user cannot set it."""
    directory.mkdir()
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True) if shutil.which("chattr") else None
    if done is None or done.returncode != 0:
        if os.geteuid() == 0:
            pytest.skip("chattr +i is not available here and root ignores file modes")
        directory.chmod(0o500)
    try:
        yield directory
    finally:
        if done is not None and done.returncode == 0:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


def writing_commands(inputs: dict[str, Path], out: Path) -> dict[str, list[str]]:
    return {"fit": fit_args(inputs, out),
            "convert zarr": ["convert", str(inputs["rna"]), str(out)],
            "convert soma": ["convert", str(inputs["rna"]), str(out), "--format", "soma"],
            "simulate": ["simulate", "--cells", "60", "--modalities", "rna", "--out", str(out)],
            "evaluate": ["evaluate", "--embedding", str(inputs["rna"]), "--label-key", "cell_type", "--out", str(out)]}


@pytest.mark.parametrize("where", ["under a file", "an existing file", "/proc", "immutable directory"])
def test_unwritable_outputs_are_one_line_naming_path_and_reason(where, inputs, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    reason = {"under a file": "a parent is a file, not a directory", "an existing file": "is a file, not a directory",
              "/proc": "cannot be written", "immutable directory": "cannot be written"}[where]
    with immutable(tmp_path / "locked") if where == "immutable directory" else contextlib.nullcontext() as locked:
        out = {"under a file": a_file / "out", "an existing file": a_file, "/proc": Path("/proc/cellweave-test-out"),
               "immutable directory": locked / "out" if locked else None}[where]
        for name, args in writing_commands(inputs, out).items():
            assert main(args) == 2, name
            line = one_error_line(capsys)
            assert f"{out}: output path: " in line and reason in line and "Fix: " in line, (name, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"] + (["locked"] if where == "immutable directory" else [])
    assert a_file.read_text() == "x"


def test_an_immutable_existing_run_is_refused_in_one_line(inputs, finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    done = subprocess.run(["chattr", "+i", str(run)], capture_output=True) if shutil.which("chattr") else None
    if done is None or done.returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        for extra in (["--overwrite"], []):
            args = ["fit", "--resume", "--out", str(run)] if not extra else fit_args(inputs, run, *extra)
            assert main(args) == 2
            line = one_error_line(capsys)
            assert f"{run}: output path: cannot be written: Operation not permitted" in line, line
    finally:
        subprocess.run(["chattr", "-i", str(run)], check=True)


# --------------------------------------------------------------------------------- the Python API: the same guard
def test_api_fit_refuses_an_existing_run_unless_overwrite_or_resume(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "marker").write_text("old run")
    before = listing(run)
    model = SCMODAL.from_run(run)
    with pytest.raises(InputError) as refused:
        model.fit(2, run_dir=run, device="cpu", progress=False)
    msg = str(refused.value)
    assert "\n" not in msg and msg.startswith(f"{run}: output path: already exists")
    assert "overwrite=True" in msg and "resume=True" in msg and "--" not in msg
    with pytest.raises(InputError, match=r"SCMODAL.fit: resume/overwrite: both given"):
        model.fit(2, run_dir=run, device="cpu", progress=False, resume=True, overwrite=True)
    with pytest.raises(InputError, match="max_steps"):  # fails inside the guard, before a checkpoint: old run back
        model.fit("many", run_dir=run, device="cpu", progress=False, overwrite=True)
    assert listing(run) == before
    assert model.fit(4, run_dir=run, device="cpu", progress=False, resume=True).step == 4  # continued from step 2
    assert (run / "marker").exists()
    assert model.fit(3, run_dir=run, device="cpu", progress=False, overwrite=True).step == 3
    assert not (run / "marker").exists() and (run / "checkpoint.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no trash, no lock left


def test_api_fit_holds_the_run_while_training_and_a_second_writer_is_refused(inputs, finished, tmp_path, monkeypatch):
    model = SCMODAL.from_run(finished)
    run = tmp_path / "run"
    with held_by_another_process(run) as pid:
        with pytest.raises(InputError, match=rf"{run}: lock: another cellweave command \(pid {pid}\)"):
            model.fit(2, run_dir=run, device="cpu", progress=False)
        assert not run.exists()
    seen = {}
    real_fit = Trainer.fit

    def fit_watched(trainer, *args, **kwargs):  # the real training, with a second writer knocking meanwhile
        seen["lock"] = lock_path(run).read_text().split()[-1]
        seen["other thread"] = in_another_thread(lambda: SCMODAL.from_run(finished).fit(2, run_dir=run, device="cpu",
                                                                                      progress=False, overwrite=True))
        return real_fit(trainer, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", fit_watched)
    assert model.fit(2, run_dir=run, device="cpu", progress=False).step == 2
    assert seen["lock"] == str(os.getpid())
    assert isinstance(seen["other thread"], InputError) and f"(pid {os.getpid()})" in str(seen["other thread"])
    assert not lock_path(run).exists() and (run / "checkpoint.pt").exists()


def test_api_save_refuses_replaces_and_respects_the_lock(finished, tmp_path):
    model = SCMODAL.from_run(finished)
    saved = model.save(tmp_path / "saved")
    with pytest.raises(InputError) as refused:
        model.save(saved)
    msg = str(refused.value)
    assert "\n" not in msg and msg.startswith(f"{saved}: output path: already exists") and "overwrite=True" in msg
    (saved / "marker").write_text("old")
    model.save(saved, overwrite=True)
    assert not (saved / "marker").exists()
    z = model.get_latent_representation(modality="adt")
    np.testing.assert_array_equal(SCMODAL.load(saved).get_latent_representation(modality="adt"), z)
    with held_by_another_process(saved) as pid:  # e.g. a fit writing there
        with pytest.raises(InputError, match=rf"lock: another cellweave command \(pid {pid}\)"):
            model.save(saved, overwrite=True)
        assert (saved / "model.pt").exists()
    model.save(saved, overwrite=True)  # the killed holder's lock file is taken over, then removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]
