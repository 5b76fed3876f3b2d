"""The trainer: optimisation, clipping, exact resume, early stopping, whole validation, outputs, errors."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cellweave import InputError
from cellweave.data import CellStream, UnpairedStream, open_modality, write_zarr
from cellweave.train import StepContext, Trainer, TrainingModule, adam

from .conftest import counts_source

N_VARS = 20


class TinyGAN(TrainingModule):
    """Autoencoder whose latent codes a discriminator tells apart from N(0, 1) samples (two optimizers)."""

    def __init__(self, n_vars: int = N_VARS, lr: float = 1e-2, hidden: int = 16, n_latent: int = 4) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(n_vars, hidden), nn.ReLU(), nn.Linear(hidden, n_latent))
        self.dec = nn.Sequential(nn.Linear(n_latent, hidden), nn.ReLU(), nn.Linear(hidden, n_vars))
        self.disc = nn.Sequential(nn.Linear(n_latent, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.lr = lr
        self.grad_norms: list[tuple[str, torch.Tensor | None, torch.Tensor]] = []

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        gen = [*self.enc.parameters(), *self.dec.parameters()]
        return {"generator": torch.optim.Adam(gen, lr=self.lr), "discriminator": torch.optim.Adam(self.disc.parameters(), lr=self.lr)}

    def inputs(self, batch) -> torch.Tensor:
        b = batch["rna"] if isinstance(batch, dict) else batch
        return torch.log1p(b.dense(self.enc[0].weight.device))

    def _optimize(self, ctx: StepContext, loss: torch.Tensor, name: str) -> None:
        before_clip = ctx.optimize(loss, name)
        grads = [p.grad for g in ctx.optimizers[name].param_groups for p in g["params"] if p.grad is not None]
        self.grad_norms.append((name, before_clip, torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    def training_step(self, batch, ctx: StepContext) -> dict[str, float | torch.Tensor]:
        x = self.inputs(batch)
        ones, zeros = x.new_ones(len(x), 1), x.new_zeros(len(x), 1)
        with ctx.autocast():
            z = self.enc(x)
            prior = torch.randn_like(z)
            d_loss = (F.binary_cross_entropy_with_logits(self.disc(prior).float(), ones)
                      + F.binary_cross_entropy_with_logits(self.disc(z.detach()).float(), zeros))
        self._optimize(ctx, d_loss, "discriminator")
        with ctx.autocast():
            recon = F.mse_loss(self.dec(z).float(), x)
            gen = F.binary_cross_entropy_with_logits(self.disc(z).float(), ones)
        self._optimize(ctx, recon + 0.1 * gen, "generator")
        return {"recon": recon.detach(), "disc": d_loss.detach(), "gen": float(gen.detach())}

    def per_cell_loss(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.dec(self.enc(x)) - x) ** 2).mean(1)

    def validation_step(self, batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        x = self.inputs(batch)
        return {"loss": self.per_cell_loss(x).sum(), "n": torch.tensor(len(x))}


class OtherGAN(TinyGAN):
    """Another module class (for the compatibility check)."""


def make_module(seed: int = 1, **kwargs) -> TinyGAN:
    torch.manual_seed(seed)
    return TinyGAN(**kwargs)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("trainer") / "rna.zarr"
    return open_modality(write_zarr(counts_source(300, N_VARS, seed=4), path))


@pytest.fixture(scope="module")
def val_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("trainer_val") / "val.zarr"
    return open_modality(write_zarr(counts_source(100, N_VARS, seed=5, prefix="v"), path))


def train_stream(store) -> CellStream:
    return CellStream(store, 32, seed=2, chunk_size=16, block_size=128)


def val_stream(val_store) -> CellStream:
    return CellStream(val_store, 37, shuffle=False)  # 37 + 37 + 26 cells: unequal batches


def rows_without_seconds(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def manual_val_loss(module: TinyGAN, stream: CellStream) -> float:
    stream.set_epoch(0)
    stream.set_skip(0)
    with torch.no_grad():
        per_cell = torch.cat([module.per_cell_loss(module.inputs(b)) for b in stream])
    return float(per_cell.double().mean())


def test_loss_decreases_and_both_optimizers_step(store):
    module = make_module()
    enc0 = [p.detach().clone() for p in module.enc.parameters()]
    disc0 = [p.detach().clone() for p in module.disc.parameters()]
    res = Trainer(max_steps=60, log_every=10, progress=False).fit(module, train_stream(store))
    assert res.step == 60 and res.epoch == 5  # 10 batches per epoch: passes 0..5
    recon = [r["recon"] for r in res.history]
    assert recon[-1] < 0.8 * recon[0]
    assert all(not torch.equal(a, b) for a, b in zip(enc0, module.enc.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(disc0, module.disc.parameters()))
    names = [n for n, _, _ in module.grad_norms]
    assert names.count("generator") == names.count("discriminator") == 60


def test_fused_adam_follows_torch_adam(store):
    """The models' optimizer (fused kernel on CPU) trains TinyGAN as torch's default Adam does, to float rounding."""

    class FusedGAN(TinyGAN):
        def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
            opts = {"generator": adam([*self.enc.parameters(), *self.dec.parameters()], lr=self.lr),
                    "discriminator": adam(self.disc.parameters(), lr=self.lr)}
            assert all(o.param_groups[0]["fused"] for o in opts.values())
            return opts

    def weights(module: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in module.parameters()])

    runs = []
    for cls in (TinyGAN, FusedGAN):
        torch.manual_seed(0)
        module = cls()
        start = weights(module)
        Trainer(max_steps=30, progress=False, seed=1).fit(module, train_stream(store))
        runs.append(weights(module))
        assert (runs[-1] - start).abs().max() > 0.05  # trained: 30 steps of lr 1e-2 move the weights
    # weights of order 0.1-1: the two kernels round differently (~1e-7 per step), far below one step's move
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=1e-4)


def test_denormal_floats_are_flushed_in_training_only(store):
    """Weights decayed below the normal float range become 0 in training (x86 computes denormals ~7x slower);
    outside the trainer the default float mode is back."""

    class Decaying(TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.full((1000,), 1e-30))

        def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
            return {"w": adam([self.w], lr=1e-3)}

        def training_step(self, batch, ctx: StepContext) -> dict[str, float | torch.Tensor]:
            with torch.no_grad():
                self.w.mul_(1e-3)  # 1e-33, 1e-36, then 1e-39: below float32's least normal 1.2e-38
            return {"w": self.w.detach().abs().max()}

    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode")
    module = Decaying()
    Trainer(max_steps=3, device="cpu", progress=False).fit(module, train_stream(store))
    assert torch.count_nonzero(module.w) == 0
    assert float((torch.full((3,), 1e-36) * 1e-3)[0]) > 0.0  # outside: a denormal again


def test_grad_clip_bounds_the_norm(store):
    module = make_module()
    Trainer(max_steps=8, grad_clip=0.05, progress=False).fit(module, train_stream(store))
    assert any(before > 0.05 for _, before, _ in module.grad_norms)  # clipping engaged
    for _, before, after in module.grad_norms:
        assert float(after) == pytest.approx(min(float(before), 0.05), rel=1e-4)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_exact(store, val_store, tmp_path, num_workers):
    kw = dict(num_workers=num_workers, log_every=5, val_every=10, progress=False, seed=3)
    full = make_module()
    Trainer(max_steps=40, run_dir=tmp_path / "full", **kw).fit(full, train_stream(store), val_stream(val_store))

    first = make_module()
    Trainer(max_steps=17, run_dir=tmp_path / "split", **kw).fit(first, train_stream(store), val_stream(val_store))
    resumed = make_module(seed=99)  # other initial weights: everything must come from the checkpoint
    res = Trainer(max_steps=40, run_dir=tmp_path / "split", **kw).fit(resumed, train_stream(store), val_stream(val_store),
                                                                        resume=True)
    assert res.step == 40
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    full_rows = rows_without_seconds(tmp_path / "full" / "losses.csv")
    assert full_rows == rows_without_seconds(tmp_path / "split" / "losses.csv")
    assert [int(r["step"]) for r in full_rows] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert all(r["val_loss"] for r in full_rows if int(r["step"]) % 10 == 0)


def test_resume_is_exact_unpaired(tmp_path):
    rna = open_modality(write_zarr(counts_source(200, N_VARS, seed=6), tmp_path / "rna.zarr"))
    adt = open_modality(write_zarr(counts_source(90, 8, seed=7, modality="adt", prefix="a"), tmp_path / "adt.zarr"))

    def stream() -> UnpairedStream:
        return UnpairedStream({"rna": CellStream(rna, 32, seed=1), "adt": CellStream(adt, 32, seed=1)})

    kw = dict(log_every=3, progress=False)
    full = make_module()
    Trainer(max_steps=20, run_dir=tmp_path / "full", **kw).fit(full, stream())
    Trainer(max_steps=9, run_dir=tmp_path / "split", **kw).fit(make_module(), stream())
    resumed = make_module(seed=5)
    Trainer(max_steps=20, run_dir=tmp_path / "split", **kw).fit(resumed, stream(), resume=True)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
    assert rows_without_seconds(tmp_path / "full" / "losses.csv") == rows_without_seconds(tmp_path / "split" / "losses.csv")


def test_early_stopping_restores_best_weights(store, val_store, tmp_path):
    module = make_module(lr=0.5)  # far too high: the validation loss gets worse after the first steps
    val = val_stream(val_store)
    res = Trainer(max_steps=200, val_every=2, early_stopping_patience=3, run_dir=tmp_path, progress=False).fit(
        module, train_stream(store), val)
    assert res.stopped_early and res.step < 200
    vals = [(r["step"], r["val_loss"]) for r in res.history if "val_loss" in r]
    best_step, best = min(vals, key=lambda sv: sv[1])
    assert (res.best_step, res.best_val_loss) == (best_step, best)
    assert res.step == vals[-1][0] and len([s for s, _ in vals if s > best_step]) == 3
    assert manual_val_loss(module, val) == pytest.approx(best, rel=1e-5)
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert saved["step"] == best_step
    assert all(torch.equal(saved["model"][k], v) for k, v in module.state_dict().items())


def test_default_validation_interval_is_a_pass_and_100_steps_when_stopping_early(store, val_store):
    def validated_at(**kw) -> list[int]:
        res = Trainer(max_steps=200, progress=False, **kw).fit(make_module(), train_stream(store), val_stream(val_store))
        return [r["step"] for r in res.history if "val_loss" in r]

    assert validated_at() == list(range(10, 201, 10))  # one pass: 300 cells in batches of 32
    # patience 2 spans 2 x 100 steps, not 2 passes of 10 (a small stream's validation noise would stop the run)
    assert validated_at(early_stopping_patience=2) == [100, 200]
    assert validated_at(early_stopping_patience=2, val_every=10)[:3] == [10, 20, 30]  # given: kept


def test_validation_is_cell_weighted_over_all_batches(store, val_store):
    module = make_module()
    val = val_stream(val_store)
    res = Trainer(max_steps=6, val_every=3, progress=False).fit(module, train_stream(store), val)
    assert [len(b) for b in val] == [37, 37, 26]
    last = res.history[-1]
    assert last["step"] == 6
    assert last["val_loss"] == pytest.approx(manual_val_loss(module, val), rel=1e-6)


def test_outputs_are_written_and_load_with_weights_only(store, val_store, tmp_path):
    res = Trainer(max_steps=12, log_every=4, val_every=6, checkpoint_every=5, run_dir=tmp_path, progress=True).fit(
        make_module(), train_stream(store), val_stream(val_store))
    assert res.history_path == tmp_path / "losses.csv" and res.best_path == tmp_path / "best.pt"
    with open(res.history_path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == ["step", "epoch", "recon", "disc", "gen", "val_loss", "lr_generator", "lr_discriminator", "seconds"]
    assert [r["step"] for r in rows] == ["4", "6", "8", "12"]
    assert (tmp_path / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["loop"]["step"] == 12 and set(ckpt["optimizers"]) == {"generator", "discriminator"}
    assert {"torch", "numpy", "python", "cuda"} <= set(ckpt["rng"])
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary file


def test_partial_last_interval_is_logged_and_replaced_on_resume(store, tmp_path):
    Trainer(max_steps=7, log_every=5, run_dir=tmp_path, progress=False).fit(make_module(), train_stream(store))
    assert [r["step"] for r in rows_without_seconds(tmp_path / "losses.csv")] == ["5", "7"]
    Trainer(max_steps=10, log_every=5, run_dir=tmp_path, progress=False).fit(make_module(), train_stream(store), resume=True)
    assert [r["step"] for r in rows_without_seconds(tmp_path / "losses.csv")] == ["5", "10"]


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_runs_on_cpu(store, precision):
    res = Trainer(max_steps=3, log_every=1, precision=precision, progress=False).fit(make_module(), train_stream(store))
    assert res.step == 3 and all(torch.isfinite(torch.tensor(r["recon"])) for r in res.history)


def test_errors(store, tmp_path):
    with pytest.raises(InputError, match="max_steps"):
        Trainer(max_steps=0)
    with pytest.raises(InputError, match="precision"):
        Trainer(max_steps=1, precision="8")
    with pytest.raises(InputError, match="no batch"):
        Trainer(max_steps=1, progress=False).fit(make_module(), CellStream(store, 1000, drop_last=True))
    with pytest.raises(InputError, match="checkpoint.pt.*resume=False"):
        Trainer(max_steps=1, run_dir=tmp_path / "none", progress=False).fit(make_module(), train_stream(store), resume=True)
    with pytest.raises(InputError, match="run_dir"):
        Trainer(max_steps=1, progress=False).fit(make_module(), train_stream(store), resume=True)

    Trainer(max_steps=4, run_dir=tmp_path, progress=False).fit(make_module(), train_stream(store))
    with pytest.raises(InputError, match="module_class"):
        Trainer(max_steps=8, run_dir=tmp_path, progress=False).fit(OtherGAN(), train_stream(store), resume=True)
    with pytest.raises(InputError, match="shapes"):
        Trainer(max_steps=8, run_dir=tmp_path, progress=False).fit(make_module(hidden=8), train_stream(store), resume=True)
    with pytest.raises(InputError, match="beyond max_steps"):
        Trainer(max_steps=2, run_dir=tmp_path, progress=False).fit(make_module(), train_stream(store), resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read"):
        Trainer(max_steps=8, run_dir=tmp_path, progress=False).fit(make_module(), train_stream(store), resume=True)
