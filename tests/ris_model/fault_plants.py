"""Planted training faults: each reproduces a real training bug, so that tests can check that the trainer's
counters and the diagnostic checks catch it. `FaultPlants` plugs them into a run as StepHooks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from api_schemas import PARAM_GROUPS, LossWeights
from ris_model.losses import LossResult
from ris_model.model.network import ModelOutput, RisNet
from ris_model.scenes import SceneBatch, SceneSource
from ris_model.train.hooks import NoHooks


@dataclass(frozen=True)
class FaultPlants(NoHooks):
    one_step_per_epoch: bool = False  # step the optimizer once per epoch (gradients accumulate)
    symbols_constant: bool = False  # the same symbols in every snapshot: K unidentifiable from R_yy
    val_from_train: bool = False  # val scenes drawn from the train stream
    eigvec_loss: bool = False  # a loss through eigenvectors of the rank-deficient N×N R̂ (a real NaN source)
    frozen_still_moves: str | None = None  # a frozen group that still gets updated
    unused_head: bool = False  # a head whose output no loss uses (dead parameters)

    def __post_init__(self) -> None:
        if self.frozen_still_moves is not None and self.frozen_still_moves not in PARAM_GROUPS:
            raise ValueError(f"frozen_still_moves must be one of {PARAM_GROUPS}, got {self.frozen_still_moves!r}")

    def attach(self, model: RisNet, scenes: SceneSource) -> SceneSource:
        if self.unused_head:
            device = next(model.parameters()).device
            model.k_head["unused"] = nn.Linear(model.cfg.d_model, 1).to(device)
        if self.symbols_constant or self.val_from_train:
            return SceneSource(scenes.system, scenes.data, scenes.device, symbols_constant=self.symbols_constant,
                               val_from_train=self.val_from_train)
        return scenes

    def runs_eagerly(self, step: int) -> bool:
        return self.eigvec_loss or self.unused_head

    def loss(self, res: LossResult, out: ModelOutput, batch: SceneBatch, weights: LossWeights,
             step: int) -> LossResult:
        if not self.eigvec_loss:
            return res
        term = eigenvector_alignment_loss(out.cov_factor, batch)
        return LossResult(total=res.total + 0.1 * term, terms={**res.terms, "eigvec_align": term},
                          assignment=res.assignment)

    def takes_optimizer_step(self, batch: int, n_batches: int) -> bool:
        return not self.one_step_per_epoch or batch == n_batches - 1

    def after_optimizer_step(self, model: RisNet) -> None:
        if self.frozen_still_moves is not None:
            with torch.no_grad():
                for p in model.param_groups()[self.frozen_still_moves]:
                    p.add_(1e-3)


def eigenvector_alignment_loss(F: Tensor, batch: SceneBatch) -> Tensor:
    """A subspace-alignment loss through a projector from the eigenvectors of R̂ = F·Fᴴ (N×N, rank ≤ K_MAX).
    Its backward divides by eigenvalue differences of the ~N−K_MAX equal zero eigenvalues → NaN."""
    K, N = F.shape[-1], F.shape[-2]
    # K zero rows make the null space exactly degenerate (without them float noise separates the zero
    # eigenvalues and the backward can stay finite)
    Fp = nnf.pad(F, (0, 0, 0, K))
    R = Fp @ Fp.mH  # [B, N+K, N+K], rank-deficient on purpose
    _, vecs = torch.linalg.eigh(R)
    top = vecs[..., -K:][..., :N, :]  # [B, N, K]
    P = top @ top.mH
    T = batch.covariance_factor()
    return (T.mH @ (torch.eye(P.shape[-1], dtype=P.dtype, device=P.device) - P) @ T).diagonal(
        dim1=-2, dim2=-1).real.sum(-1).mean()
