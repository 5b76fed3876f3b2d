"""scMODAL's networks and its training step (the math; :mod:`cellweave.models.scmodal` is the user API).

Per modality an encoder ``E_m`` (d -> 512 -> q) and a decoder ``G_m`` (q -> 512 -> d); one discriminator per
consecutive pair of modalities in ``order`` (chained alignment for more than two modalities). A training
step takes one minibatch of every modality and

1. trains the discriminators ``d_steps`` times on the (detached) latent codes of this step;
2. trains encoders and decoders on
   ``w_gan * GAN + w_ae * AE + w_cross * cross-consistency + w_anchor * MNN anchors + w_geo * geometry``,
   where AE is the within-domain reconstruction MSE, cross-consistency is ``||E_s(x) - E_t(G_t(E_s(x)))||^2 / q``
   for each linked pair in both directions, MNN anchors are mutual nearest neighbours *inside the two
   minibatches* on linked features (cosine, k=30), and geometry compares Gaussian-kernel rows of inputs and
   latents (threshold 0.975).

A pair's linked features are a table view ``(x_s[:, cols], x_t @ W.T)``, a learned projection
``(x_s @ P_s + b_s, x_t @ P_t + b_t)`` (:class:`~cellweave.links.LinkProjection`), or both: then each view's rows
are scaled to unit length and concatenated, so the cosine of two cells is the mean of their two views' cosines.
With ``link_spaces`` (count modalities) the linked columns of a table pair's modalities are replaced by a
*linked block*, built the way the authors' tutorial builds its shared block: the linked features on their count
scale (the input's scaling and log undone), each cell normalised to one common total over these features alone,
log1p, standardised. Encoders read it, decoders reconstruct it, and the MNN anchors are found on it
(:meth:`SCMODALModule.augment`).

Defaults follow the authors' code (see docs/methods/scmodal.md): weights AE 10, cross 10, MNN 1, geometry 10,
GAN 1; 5 discriminator steps per generator step; Adam lr 1e-3, weight decay 1e-3.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from ..links import LinkProjection
from ..losses import anchor_loss, discriminator_loss, geometry_loss
from ..neighbors import mnn_pairs
from ..neighbors.inputs import normalize_rows
from ..nn import MLP, Discriminator
from ..train import TrainingModule, adam


def _as_tensor(W) -> torch.Tensor:
    """A link matrix as a float32 tensor: dense, or sparse COO when scipy gives it sparse (gene x peak links)."""
    if sp.issparse(W):
        coo = W.tocoo()
        idx = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.long)
        return torch.sparse_coo_tensor(idx, torch.as_tensor(coo.data, dtype=torch.float32), coo.shape).coalesce()
    return torch.as_tensor(W, dtype=torch.float32)


@dataclass
class SCMODALWeights:
    """Loss weights (ablations set a weight to 0)."""

    gan: float = 1.0
    ae: float = 10.0
    cross: float = 10.0
    anchor: float = 1.0
    geo: float = 10.0


BLOCK_MOMENTUM = 0.1  # running statistics of the linked blocks (as torch's BatchNorm)
BLOCK_MAX = 10.0  # clip of a standardised block value (as the inputs' max_value)


def pair_key(a: str, b: str) -> str:
    """ModuleDict/buffer key of a modality pair."""
    return f"{a}__{b}"


class SCMODALModule(TrainingModule):
    """Encoders, decoders and chained discriminators of scMODAL.

    Parameters
    ----------
    n_features
        Input width per modality, in integration order.
    links
        For each linked pair ``(s, t)``: ``(columns of s, weights W (n_links x d_t))`` such that the linked
        features of a cell are ``x_s[:, columns]`` in ``s`` and ``x_t @ W.T`` in ``t``.
    projections
        For each pair ``(s, t)`` with learned links: the :class:`~cellweave.links.LinkProjection` whose columns
        are the linked features (alone, or beside the pair's table links).
    n_latent, hidden
        Latent width ``q`` and hidden width of encoders/decoders.
    weights
        Loss weights.
    d_steps
        Discriminator updates per step.
    k
        Neighbours for MNN anchors.
    lr, weight_decay
        Adam settings for every network.
    geo_threshold
        Cap of the kernel cosine in the geometry loss.
    init_std
        Weights and biases drawn from ``N(0, init_std^2)`` as in the authors' code (0: PyTorch's default).
        This sets the starting latent scale and with it the weight the MNN term carries: with PyTorch's
        default initialisation the latents start small and the anchors barely act.
    link_spaces
        Per modality ``(center, scale)`` of its inputs (``x = (log1p(normalised counts) - center) / scale``);
        with ``link_targets`` the linked columns of a table pair whose two modalities are both here are
        replaced by its linked block (:meth:`augment`).
    link_targets
        Per pair ``(s, t)``: the common total of its linked block.
    """

    def __init__(self, n_features: Mapping[str, int], links: Mapping[tuple[str, str], tuple[torch.Tensor, torch.Tensor]],
                 n_latent: int = 20, hidden: int = 512, weights: SCMODALWeights | None = None, d_steps: int = 5, k: int = 30,
                 lr: float = 1e-3, weight_decay: float = 1e-3, geo_threshold: float = 0.975,
                 init_std: float = 0.1, projections: Mapping[tuple[str, str], LinkProjection] | None = None,
                 link_spaces: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 link_targets: Mapping[tuple[str, str], float] | None = None) -> None:
        super().__init__()
        self.order: list[str] = list(n_features)
        self.n_latent = n_latent
        self.weights = weights or SCMODALWeights()
        self.d_steps, self.k, self.lr, self.weight_decay, self.geo_threshold = d_steps, k, lr, weight_decay, geo_threshold
        self.init_std = init_std
        self.link_pairs: list[tuple[str, str]] = []
        for (s, t), (cols, W) in links.items():
            self.register_buffer(f"link_cols__{pair_key(s, t)}", torch.as_tensor(cols, dtype=torch.long))
            self.register_buffer(f"link_w__{pair_key(s, t)}", _as_tensor(W))
            self.link_pairs.append((s, t))
        self.link_targets: dict[tuple[str, str], float] = {}
        for m, (center, scale) in (link_spaces or {}).items():
            # derived from the preprocessing statistics: not saved with the weights
            self.register_buffer(f"input_center__{m}", torch.as_tensor(center, dtype=torch.float32), persistent=False)
            self.register_buffer(f"input_scale__{m}", torch.as_tensor(scale, dtype=torch.float32), persistent=False)
        for (s, t), target in (link_targets or {}).items():
            if (s, t) in links and s in (link_spaces or {}) and t in (link_spaces or {}):
                self.link_targets[(s, t)] = float(target)
        # each modality's linked block: its columns linked in a pair with a common total, and that total
        self.block_target: dict[str, float] = {}
        block_cols: dict[str, set[int]] = {}
        for (s, t), target in self.link_targets.items():
            cols, W = links[(s, t)]
            W = _as_tensor(W)
            used = W.coalesce().indices()[1] if W.is_sparse else (W != 0).any(0).nonzero().flatten()
            for m, c in ((s, torch.as_tensor(cols)), (t, used)):
                block_cols.setdefault(m, set()).update(int(i) for i in c)
                self.block_target[m] = min(self.block_target.get(m, target), target)
        for m, c in block_cols.items():
            self.register_buffer(f"block_cols__{m}", torch.as_tensor(sorted(c), dtype=torch.long), persistent=False)
            # running statistics of the block's standardisation, used at inference (saved with the weights)
            self.register_buffer(f"block_mean__{m}", torch.zeros(len(c)))
            self.register_buffer(f"block_var__{m}", torch.ones(len(c)))
        self.encoders = nn.ModuleDict({m: MLP(d, n_latent, (hidden,)) for m, d in n_features.items()})
        self.decoders = nn.ModuleDict({m: MLP(n_latent, d, (hidden,)) for m, d in n_features.items()})
        self.chain: list[tuple[str, str]] = list(zip(self.order[:-1], self.order[1:]))
        self.discriminators = nn.ModuleDict({pair_key(a, b): Discriminator(n_latent) for a, b in self.chain})
        if init_std > 0:
            for net in (*self.encoders.values(), *self.decoders.values(), *self.discriminators.values()):
                net.normal_init_(init_std)
        self.projected: set[tuple[str, str]] = set()
        for (s, t), p in (projections or {}).items():
            key = pair_key(s, t)
            for name, value in (("ps", p.source), ("bs", p.source_offset), ("pt", p.target), ("bt", p.target_offset)):
                self.register_buffer(f"link_{name}__{key}", torch.as_tensor(value, dtype=torch.float32))
            self.projected.add((s, t))
            if (s, t) not in self.link_pairs:
                self.link_pairs.append((s, t))

    def hparams(self) -> dict:
        """Constructor settings (for the run's resolved config)."""
        return {"n_latent": self.n_latent, "d_steps": self.d_steps, "k": self.k, "lr": self.lr,
                "weight_decay": self.weight_decay, "geo_threshold": self.geo_threshold, "init_std": self.init_std, "weights": asdict(self.weights),
                "link_targets": {f"{s}->{t}": v for (s, t), v in self.link_targets.items()}}

    def convergence_terms(self) -> dict[str, float]:
        """The generator's loss without its adversarial term (which oscillates by design), as weighted in training."""
        w = self.weights
        return {"ae": w.ae, "cross": w.cross, "anchor": w.anchor, "geo": w.geo}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        gen = list(self.encoders.parameters()) + list(self.decoders.parameters())
        opts = {"generator": adam(gen, lr=self.lr, weight_decay=self.weight_decay)}
        if self.chain:
            opts["discriminator"] = adam(self.discriminators.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return opts

    def linked(self, s: str, t: str, x_s: torch.Tensor, x_t: torch.Tensor, raw_s: torch.Tensor | None = None,
               raw_t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The linked-feature views of two minibatches (table, learned projection, or both concatenated): the
        table over the :meth:`augment`-ed inputs ``x_*``, a learned projection over the inputs as streamed
        ``raw_*`` (what it was learned from; default ``x_*``)."""
        key = pair_key(s, t)
        raw_s, raw_t = (x_s if raw_s is None else raw_s), (x_t if raw_t is None else raw_t)
        views = []
        if hasattr(self, f"link_cols__{key}"):
            cols, W = getattr(self, f"link_cols__{key}"), getattr(self, f"link_w__{key}")
            views.append((x_s[:, cols], torch.sparse.mm(W, x_t.T).T if W.is_sparse else x_t @ W.T))
        if (s, t) in self.projected:
            views.append((raw_s @ getattr(self, f"link_ps__{key}") + getattr(self, f"link_bs__{key}"),
                          raw_t @ getattr(self, f"link_pt__{key}") + getattr(self, f"link_bt__{key}")))
        if len(views) == 1:
            return views[0]
        return (torch.cat([normalize_rows(a) for a, _ in views], dim=1),
                torch.cat([normalize_rows(b) for _, b in views], dim=1))

    def _count_scale(self, m: str, x: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        """Inputs of ``m`` (or its columns ``cols``) back on the scale of normalised counts (``expm1`` of the
        unscaled log values)."""
        scale, center = getattr(self, f"input_scale__{m}"), getattr(self, f"input_center__{m}")
        if cols is not None:
            scale, center = scale[cols], center[cols]
        return torch.expm1(x.float() * scale + center).clamp_min(0.0)

    def augment(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """The encoder input of ``m``: its inputs ``x`` with its linked columns replaced by the linked block (the
        linked features on their count scale, each cell normalised to the common total over them alone, log1p,
        standardised). In training the block is standardised with the minibatch's statistics, whose running
        averages it keeps, and with those running averages in evaluation."""
        if not hasattr(self, f"block_cols__{m}"):
            return x
        cols = getattr(self, f"block_cols__{m}")
        v = self._count_scale(m, x[:, cols], cols)
        total = v.sum(1, keepdim=True)
        block = torch.log1p(v * (self.block_target[m] / torch.where(total > 0, total, torch.ones_like(total))))
        block = F.batch_norm(block, getattr(self, f"block_mean__{m}"), getattr(self, f"block_var__{m}"),
                             training=self.training and x.shape[0] > 1, momentum=BLOCK_MOMENTUM, eps=1e-6)
        return x.index_copy(1, cols, block.clamp(-BLOCK_MAX, BLOCK_MAX).to(x.dtype))

    def encode(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """Latent codes of modality ``m``."""
        return self.encoders[m](self.augment(m, x))

    def translate(self, source: str, target: str, x: torch.Tensor) -> torch.Tensor:
        """Cross-modal imputation ``G_target(E_source(x))`` (in the target's encoder input space)."""
        return self.decoders[target](self.encode(source, x))

    def _discriminator_loss(self, z: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(discriminator_loss(self.discriminators[pair_key(a, b)](z[a]), self.discriminators[pair_key(a, b)](z[b]))
                   for a, b in self.chain)

    def training_step(self, batch: Mapping, ctx) -> dict[str, torch.Tensor | float]:
        raw = {m: batch[m].dense(ctx.device) for m in self.order}
        with torch.no_grad():  # each modality's encoder input, its linked block in place
            x = {m: self.augment(m, raw[m]) for m in self.order}
        w = self.weights
        terms: dict[str, float] = {}
        if self.chain and w.gan > 0:
            self.discriminators.requires_grad_(True)
            with torch.no_grad(), ctx.autocast():
                z_fixed = {m: self.encoders[m](x[m]) for m in self.order}
            for _ in range(self.d_steps):
                with ctx.autocast():
                    d_loss = self._discriminator_loss({m: v.float() for m, v in z_fixed.items()})
                ctx.optimize(d_loss, "discriminator")
            terms["disc"] = d_loss.detach()
            self.discriminators.requires_grad_(False)
        with ctx.autocast():
            z = {m: self.encoders[m](x[m]) for m in self.order}
            recon = sum(F.mse_loss(self.decoders[m](z[m]), x[m]) for m in self.order)
            zero = z[self.order[0]].sum() * 0.0
            gan = zero
            if self.chain and w.gan > 0:
                # the minimax form of the authors' code: encoders maximise the discriminators' loss
                gan = -self._discriminator_loss(z)
            cross = zero
            for a, b in self.chain:
                for s, t in ((a, b), (b, a)):
                    z_back = self.encoders[t](self.decoders[t](z[s]))
                    cross = cross + (z[s] - z_back).pow(2).sum(1).mean() / self.n_latent
            anchors = zero
            n_pairs = 0
            for s, t in self.link_pairs:
                ls, lt = self.linked(s, t, x[s], x[t], raw[s], raw[t])
                pairs = mnn_pairs(ls.float(), lt.float(), k=self.k, metric="cosine")
                n_pairs += int(pairs.shape[0])
                anchors = anchors + anchor_loss(z[s], z[t], pairs)
            geo = sum(geometry_loss(x[m], z[m], self.geo_threshold) for m in self.order)
            total = w.gan * gan + w.ae * recon + w.cross * cross + w.anchor * anchors + w.geo * geo
        ctx.optimize(total, "generator")
        self.discriminators.requires_grad_(True)
        # tensors, summed on the device by the Trainer: no host sync per term and step
        terms.update({"loss": total.detach(), "gan": gan.detach(), "ae": recon.detach(), "cross": cross.detach(),
                      "anchor": anchors.detach(), "geo": geo.detach(), "mnn_pairs": float(n_pairs)})
        return terms
