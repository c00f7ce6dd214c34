"""Whitening by the BS→RIS channel: the one Cholesky factor that both backbones whiten their inputs with.

Since |c_n| = 1, (H·diag(c_l))·(H·diag(c_l))ᴴ = H·Hᴴ for every snapshot l, so one M×M factor per scene
whitens all snapshots. The Gram matrix is diagonally loaded by ε times its mean diagonal, which keeps it
positive definite however H is conditioned.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: diagonal loading of H·Hᴴ, relative to its mean diagonal
CHANNEL_LOADING = 1e-2


def channel_cholesky(H: Tensor, loading: float = CHANNEL_LOADING) -> Tensor:
    """The lower Cholesky factor C of H·Hᴴ + ε·tr(H·Hᴴ)/M·I, complex [B, M, M], for H complex [B, M, N].

    C⁻¹·H is the whitened operator and C⁻¹·y the whitened measurement; (C·Cᴴ)⁻¹ the full whitening."""
    hh = H @ H.mH  # [B, M, M]
    m = hh.shape[-1]
    load = loading * hh.diagonal(dim1=-2, dim2=-1).real.mean(-1)
    return cholesky_unchecked(hh + load[:, None, None] * torch.eye(m, dtype=hh.dtype, device=hh.device))


def cholesky_unchecked(a: Tensor) -> Tensor:
    """Cholesky factor without the host synchronization of `torch.linalg.cholesky`'s error check (so it can
    run inside a CUDA graph); for diagonally loaded, hence positive definite, matrices only."""
    factor: Tensor = torch.linalg.cholesky_ex(a, check_errors=False).L
    return factor
