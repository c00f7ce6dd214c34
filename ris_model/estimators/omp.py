"""Simultaneous OMP on the compressed measurements through the known sensing operator (SCIENCE.md, "The network",
"Estimators and evaluation").

Owns `somp` and SompResult: the classical compressive baseline on the same y, H, codes the network sees.
For scene b and snapshot l the effective atom of a grid point g is b_l(g) = H_b·diag(c_l)·a(g) ∈ C^M; each
snapshot has its own operator and its own symbols, so atoms are selected jointly over the L snapshots and the
amplitudes are re-fitted by least squares per snapshot. Each new atom is refined off the grid (a shrinking
27-point stencil in (φ, θ, 1/r)), and all atoms are then re-refined cyclically, in the spirit of Newtonized
OMP; without it, the off-grid leakage of a strong source looks like another source at high SNR.
Batched torch over scenes, in chunks to bound memory. Imports torch and the estimators' atoms (the effective
atoms, their LS fit and the stencil search, shared with the polish) and grid.

References:
    J. A. Tropp, A. C. Gilbert, M. J. Strauss, "Algorithms for simultaneous sparse approximation. Part I:
    Greedy pursuit", Signal Processing 86(3), 2006.
    B. Mamandipoor, D. Ramasamy, U. Madhow, "Newtonized orthogonal matching pursuit: frequency estimation
    over the continuum", IEEE TSP 64(19), 2016 (the cyclic refinement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ris_model.estimators.atoms import fov_box, noise_var_from_snr, refine_atom, responses, solve_ls
from ris_model.estimators.grid import SearchGrid
from ris_model.estimators.result import SourceEstimate

DEFAULT_GAIN_THRESHOLD = 3.0  # ×L·σ̂²; train-stream calibration (bench/baselines.py --calibrate): 2.5–3 best


@dataclass(frozen=True)
class SompResult:
    """SOMP output for B scenes.

    estimate: SourceEstimate with max_sources slots (refined positions of the greedy picks in order; the first
    k[b] are valid). residual_energy: float64 [B, max_sources + 1], e_j = Σ_l ‖r_l‖² after j atoms (units of
    |y|²). noise_var: float64 [B], the σ̂² the stopping rule used. atom_index: int64 [B, max_sources], the grid
    point each pick started from.
    """

    estimate: SourceEstimate
    residual_energy: Tensor
    noise_var: Tensor
    atom_index: Tensor


def somp(y: Tensor, H: Tensor, codes: Tensor, grid: SearchGrid, *, snr_db: Tensor | None = None,
         max_sources: int = 5, min_sources: int = 1, gain_threshold: float = DEFAULT_GAIN_THRESHOLD,
         refine_iters: int = 8, n_cyclic: int = 2, chunk_size: int = 32) -> SompResult:
    """Grid-based simultaneous OMP with off-grid refinement and a noise-referenced stopping rule.

    Stopping rule (K̂ is decided after max_sources greedy steps; the picks are nested, so this equals stopping
    early). Let e_j be the residual energy after j atoms and g_j = e_{j−1} − e_j the energy the j-th atom
    captured. A pure-noise residual gives an atom about L·σ² (one complex amplitude per snapshot), more for
    the best of many atoms. Forward: K̂ is the smallest j ≥ min_sources such that g_{j+1} <
    gain_threshold·L·σ̂² (or max_sources). Backward (pruning): while one of the K̂ kept atoms adds less than
    the same threshold to the residual energy when it alone is removed (the rest re-fitted per snapshot), it
    is dropped; this removes a greedy first pick that landed between sources. σ̂² is the noise power per
    antenna:
    - with snr_db (the data contract's definition): σ̂² = ‖Y‖²_F / (L·M·(1 + 10^(snr_db/10)));
    - without: σ̂² = e_{max_sources} / (L·(M − max_sources)), the residual after max_sources atoms, which is
      biased low (the greedy atoms also fit noise), so K̂ tends to be larger.

    Args:
        y: complex [B, L, M] measurements; axis 1 is the snapshot axis (one RIS code per snapshot).
        H: complex [B, M, N] BS→RIS channel.
        codes: complex [B, L, N] RIS codes, one row per snapshot.
        grid: the (φ, θ, r) dictionary; 24×12×6 (`SearchGrid.uniform` defaults) is a reasonable size.
        snr_db: real [B] dB, or None to estimate the noise from the residual.
        max_sources: greedy steps (≤ M − 1).
        min_sources: the smallest K̂ returned (1: our scenes always hold a source).
        gain_threshold: the stopping threshold in units of L·σ̂² (see above).
        refine_iters: stencil halvings per atom refinement (0: stay on the grid); the first search starts at
            half a grid step and reaches one step, so the resolution is 2^-refine_iters of a grid step.
        n_cyclic: passes of cyclic re-refinement over all atoms after each new atom (each with the reach of
            the first refinement). Close sources bias each other's first refinement; more passes remove more
            of that bias (and of the leakage the stopping rule would read as a source) at a linear cost.
        chunk_size: scenes per chunk; memory is about chunk·L·M·G·8 bytes for the dictionary.

    Returns:
        SompResult; positions in radians and meters.

    Raises:
        ValueError: shapes that do not match, or max_sources outside 1..M−1.
    """
    B, L, M = _check_inputs(y, H, codes, grid)
    if not 1 <= max_sources < M:
        raise ValueError(f"max_sources must be in 1..{M - 1} (M = {M}), got {max_sources}")
    if not 0 <= min_sources <= max_sources:
        raise ValueError(f"min_sources must be in 0..max_sources, got {min_sources}")
    parts = []
    for start in range(0, B, chunk_size):
        sl = slice(start, min(start + chunk_size, B))
        parts.append(_somp_chunk(y[sl], H[sl], codes[sl], grid, max_sources, refine_iters, n_cyclic))
    params = torch.cat([p[0] for p in parts])  # [B, S, 3]: φ, θ, 1/r
    energy = torch.cat([p[1] for p in parts])  # [B, S + 1]
    atom_index = torch.cat([p[2] for p in parts])
    atoms = torch.cat([p[3] for p in parts])  # [B, L, M, S]
    noise_var = _noise_var(y, snr_db, energy, max_sources)
    k_forward = _stopping_rule(energy, noise_var, L, min_sources, gain_threshold)
    active = torch.arange(max_sources, device=y.device) < k_forward[:, None]
    active = _prune(y, atoms, active, gain_threshold * L * noise_var, min_sources)
    # the kept atoms first, in their greedy order
    order = torch.sort((~active).to(torch.uint8), dim=1, stable=True).indices  # [B, S]
    params = params.gather(1, order[..., None].expand(-1, -1, 3))
    k = active.sum(1)
    valid = torch.arange(max_sources, device=y.device) < k[:, None]
    estimate = SourceEstimate(k=k, azimuth=params[..., 0], elevation=params[..., 1], range_m=1 / params[..., 2],
                              valid=valid)
    return SompResult(estimate=estimate, residual_energy=energy, noise_var=noise_var, atom_index=atom_index)


def _somp_chunk(y: Tensor, H: Tensor, codes: Tensor, grid: SearchGrid, n_atoms: int, refine_iters: int,
                n_cyclic: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Greedy picks of one chunk: params float64 [b, S, 3], residual energies [b, S + 1], grid index [b, S] and
    the refined effective atoms complex64 [b, L, M, S]."""
    b, L, M = y.shape
    ops = H[:, None] * codes[:, :, None, :]  # [b, L, M, N]: H·diag(c_l)
    ops = ops.to(torch.complex64)
    dictionary = ops @ grid.steering.to(ops.device, torch.complex64).T  # [b, L, M, G]
    atom_norm2 = dictionary.abs().square().sum(2).clamp_min(1e-30)  # [b, L, G]
    y64 = y.to(torch.complex128)
    residual = y64
    energies = [residual.abs().square().sum((1, 2))]
    taken = torch.zeros(b, grid.size, dtype=torch.bool, device=y.device)
    params, atoms, picks = [], [], []
    steps = torch.tensor(grid.steps(), dtype=torch.float64, device=y.device)
    box = fov_box(grid, y.device)
    for _ in range(n_atoms):
        # joint selection: the energy a grid atom captures by per-snapshot LS, summed over snapshots
        # (rᴴ·D)* = Dᴴ·r: conjugating the small residual instead of the large dictionary
        corr = (residual.conj().to(torch.complex64).unsqueeze(2) @ dictionary).squeeze(2)  # [b, L, G]
        score = (corr.abs().square() / atom_norm2).sum(1).masked_fill(taken, -torch.inf)  # [b, G]
        g = score.argmax(1)
        taken[torch.arange(b, device=y.device), g] = True
        picks.append(g)
        az, el, rng = grid.points(g)
        p = torch.stack([az, el, 1 / rng], -1)  # [b, 3]
        p = refine_atom(ops, residual, p, steps, box, grid, refine_iters)
        params.append(p)
        atoms.append(responses(ops, grid, p[:, None]).squeeze(-1))  # [b, L, M]
        coef, residual = _refit(y64, atoms)
        for _ in range(n_cyclic if refine_iters > 0 and len(atoms) > 1 else 0):
            for j in range(len(atoms)):
                # the residual with atom j's own fitted part added back, then refine atom j against it
                own = atoms[j].to(torch.complex128) * coef[..., j:j + 1]  # [b, L, M]
                params[j] = refine_atom(ops, residual + own, params[j], steps, box, grid, refine_iters)
                atoms[j] = responses(ops, grid, params[j][:, None]).squeeze(-1)
                coef, residual = _refit(y64, atoms)
        energies.append(residual.abs().square().sum((1, 2)))
    return torch.stack(params, 1), torch.stack(energies, 1), torch.stack(picks, 1), torch.stack(atoms, -1)


def _prune(y: Tensor, atoms: Tensor, active: Tensor, threshold: Tensor, min_sources: int) -> Tensor:
    """Backward elimination: while some active atom adds less than `threshold` (float64 [B]) to the residual
    energy when removed (the others re-fitted), drop the weakest. A greedy first pick can land on a ghost
    between sources that the later, true atoms make redundant. Returns the new active mask bool [B, S]."""
    S = atoms.shape[-1]
    drop_one = ~torch.eye(S, dtype=torch.bool, device=y.device)  # [S, S]: variant j lacks atom j
    y64 = y.to(torch.complex128)
    for _ in range(S):
        base = _refit_masked(y64, atoms, active)  # [B]
        without = _refit_masked(y64[:, None], atoms[:, None], active[:, None] & drop_one)  # [B, S]
        increase = torch.where(active, without - base[:, None], torch.full_like(without, torch.inf))
        smallest, j = increase.min(1)
        drop = (smallest < threshold) & (active.sum(1) > min_sources)
        if not bool(drop.any()):
            break
        active = active & ~(drop[:, None] & (torch.arange(S, device=y.device) == j[:, None]))
    return active


def _refit_masked(y: Tensor, atoms: Tensor, mask: Tensor) -> Tensor:
    """Residual energy [...] of per-snapshot LS of y [..., L, M] on the masked atoms [..., L, M, S] (mask [..., S])."""
    Phi = atoms.to(torch.complex128) * mask[..., None, None, :]  # zero columns get zero coefficients
    return solve_ls(y, Phi)[1].abs().square().sum((-2, -1))


def _refit(y: Tensor, atoms: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-snapshot least squares of y [b, L, M] on the atoms (each [b, L, M]): (coef [b, L, k], residual)."""
    return solve_ls(y, torch.stack(atoms, -1).to(torch.complex128))


def _noise_var(y: Tensor, snr_db: Tensor | None, energy: Tensor, max_sources: int) -> Tensor:
    """σ̂² per antenna, float64 [B] (see `somp`)."""
    B, L, M = y.shape
    if snr_db is None:
        return energy[:, -1] / (L * (M - max_sources))
    return noise_var_from_snr(y, snr_db)


def _stopping_rule(energy: Tensor, noise_var: Tensor, L: int, min_sources: int, gain_threshold: float) -> Tensor:
    """K̂ = the smallest j ≥ min_sources with gain g_{j+1} < threshold·L·σ̂² (else the last), int64 [B]."""
    gain = energy[:, :-1] - energy[:, 1:]  # [B, S]: g_1..g_S
    S = gain.shape[1]
    small = gain < gain_threshold * L * noise_var[:, None]  # small[:, j] ⇔ g_{j+1} small ⇔ stop at K̂ = j
    j = torch.arange(S, device=gain.device)
    stop = small & (j >= min_sources)
    return torch.where(stop.any(1), torch.where(stop, j, S).amin(1), torch.full_like(j[:1], S).expand(len(gain)))


def _check_inputs(y: Tensor, H: Tensor, codes: Tensor, grid: SearchGrid) -> tuple[int, int, int]:
    if y.dim() != 3 or H.dim() != 3 or codes.dim() != 3:
        raise ValueError(f"expected y [B, L, M], H [B, M, N], codes [B, L, N]; got {tuple(y.shape)}, "
                         f"{tuple(H.shape)}, {tuple(codes.shape)}")
    B, L, M = y.shape
    N = grid.steering.shape[1]
    if H.shape != (B, M, N) or codes.shape != (B, L, N):
        raise ValueError(f"expected H {(B, M, N)} and codes {(B, L, N)} for y {(B, L, M)} and N = {N}; "
                         f"got {tuple(H.shape)} and {tuple(codes.shape)}")
    if not math.isfinite(float(y.abs().sum())):
        raise ValueError("y holds non-finite values")
    return B, L, M
