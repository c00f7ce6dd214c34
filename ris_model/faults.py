"""Test-only fault plants: each reproduces one of the seed's real bugs, so that tests can check that the
diagnostic job catches it (issue 5). Nothing here runs unless a test switches it on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import Tensor

from api_schemas import PARAM_GROUPS
from ris_model.scenes import SceneBatch


@dataclass(frozen=True)
class Faults:
    one_step_per_epoch: bool = False  # step the optimizer once per epoch (gradients accumulate)
    symbols_constant: bool = False  # the same symbols in every snapshot: K unidentifiable from R_yy
    val_from_train: bool = False  # val scenes drawn from the train stream
    eigvec_loss: bool = False  # a loss through eigenvectors of the rank-deficient N×N R̂ (the real NaN source)
    frozen_still_moves: str | None = None  # a frozen group that still gets updated
    unused_head: bool = False  # a head whose output no loss uses (dead parameters)

    def __post_init__(self) -> None:
        if self.frozen_still_moves is not None and self.frozen_still_moves not in PARAM_GROUPS:
            raise ValueError(f"frozen_still_moves must be one of {PARAM_GROUPS}, got {self.frozen_still_moves!r}")


def eigenvector_alignment_loss(F: Tensor, batch: SceneBatch) -> Tensor:
    """The seed's `_subspace_align`: a projector from the eigenvectors of R̂ = F·Fᴴ (N×N, rank ≤ K_MAX).
    Its backward divides by eigenvalue differences of the ~N−K_MAX equal zero eigenvalues → NaN."""
    K, N = F.shape[-1], F.shape[-2]
    # K zero rows make the null space exactly degenerate, as in the seed's loaded R̂ (measured: without
    # them float noise separates the zero eigenvalues and the backward can stay finite)
    Fp = nnf.pad(F, (0, 0, 0, K))
    R = Fp @ Fp.mH  # [B, N+K, N+K], rank-deficient on purpose
    _, vecs = torch.linalg.eigh(R)
    top = vecs[..., -K:][..., :N, :]  # [B, N, K]
    P = top @ top.mH
    T = batch.covariance_factor()
    return (T.mH @ (torch.eye(P.shape[-1], dtype=P.dtype, device=P.device) - P) @ T).diagonal(
        dim1=-2, dim2=-1).real.sum(-1).mean()
