"""Local maximum-likelihood polish of estimated source positions, one source at a time (DESIGN §2.7).

Owns `polish`: given K̂ sources from any estimator (the network's geometry heads, SOMP), it maximizes the
deterministic (conditional) likelihood of the compressed measurements over the K̂ positions. The noise is
white per antenna (DESIGN §2.1a), so the ML positions minimize Σ_l ‖y_l − Φ_l·s_l‖² over positions and
per-snapshot amplitudes s_l, with Φ_l = H·diag(c_l)·[a(p_1) … a(p_K̂)]. Coordinate ascent in the manner of
RELAX: source j is searched against the measurements minus the other sources' fitted parts, then all
amplitudes are re-fitted. Each search starts where the source explains more energy, at its current position
or at the best point of the whole grid (a global move: a source estimated at a wrong place while another is
missed may jump to the missed one), and runs the shrinking 27-point stencil of SOMP's refinement, which
keeps its centre; so no step raises the residual energy. At high SNR the ML estimate reaches the CRB, which
a regression head trained on a Huber loss with a degree-scale knee does not. Measured on the default system
at 10–20 dB: the polish halves the median angle error of the network's positions but leaves most gross
association errors (an estimate > 5° from its matched source, ~2 % of pairs), which would need joint moves
of two sources. The count K̂ is left as it is. Batched torch over scenes, in chunks. Imports torch and the
estimators' grid and SOMP parts.

References:
    J. Li, P. Stoica, "Efficient mixed-spectrum estimation with applications to target feature extraction"
    (RELAX), IEEE TSP 44(2), 1996; I. Ziskind, M. Wax, "Maximum likelihood localization of multiple sources
    by alternating projection", IEEE TASSP 36(10), 1988.
    P. Stoica, A. Nehorai, "MUSIC, maximum likelihood, and Cramér–Rao bound", IEEE TASSP 37(5), 1989.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ris_model.estimators.grid import SearchGrid, SourceEstimate
from ris_model.estimators.omp import _box, _refine_atom, _responses, _solve_ls

DEFAULT_CYCLES = 3
DEFAULT_REFINE_ITERS = 8


def polish(y: Tensor, H: Tensor, codes: Tensor, estimate: SourceEstimate, grid: SearchGrid, *,
           n_cycles: int = DEFAULT_CYCLES, refine_iters: int = DEFAULT_REFINE_ITERS, chunk_size: int = 64
           ) -> SourceEstimate:
    """Coordinate-wise ML refinement of the valid sources of `estimate`.

    Args:
        y: complex [B, L, M] measurements; axis 1 is the snapshot axis (one RIS code per snapshot).
        H: complex [B, M, N] BS→RIS channel.
        codes: complex [B, L, N] RIS codes, one row per snapshot.
        estimate: the starting positions (radians, meters) of B scenes; only `valid` slots are moved.
        grid: sets the search scale: each stencil search starts at half a grid step and reaches one step
            around the current position (and stays inside the grid's field of view).
        n_cycles: passes over all sources; each pass refines every source against the measurements with
            the other sources' fitted parts removed.
        refine_iters: stencil halvings per source and pass (resolution 2^-refine_iters of a grid step).
        chunk_size: scenes per chunk.

    Returns:
        A SourceEstimate with the same k, valid and slot order, on the device of `estimate`, float64.

    Raises:
        ValueError: shapes that do not match.
    """
    B, L, M = y.shape
    if H.shape[0] != B or codes.shape[:2] != (B, L) or estimate.azimuth.shape[0] != B:
        raise ValueError(f"polish: y {tuple(y.shape)}, H {tuple(H.shape)}, codes {tuple(codes.shape)} and "
                         f"{estimate.azimuth.shape[0]} estimates do not describe the same scenes")
    out_device = estimate.azimuth.device
    params = torch.stack([estimate.azimuth, estimate.elevation, 1 / estimate.range_m], -1).to(
        y.device, torch.float64)  # [B, S, 3]: φ, θ, 1/r
    valid = estimate.valid.to(y.device)
    parts = [_polish_chunk(y[sl], H[sl], codes[sl], params[sl], valid[sl], grid, n_cycles, refine_iters)
             for sl in (slice(s, s + chunk_size) for s in range(0, B, chunk_size))]
    params = torch.cat(parts).to(out_device) if parts else params.to(out_device)
    return SourceEstimate(k=estimate.k, azimuth=params[..., 0], elevation=params[..., 1],
                          range_m=1 / params[..., 2], valid=estimate.valid)


def _polish_chunk(y: Tensor, H: Tensor, codes: Tensor, params: Tensor, valid: Tensor, grid: SearchGrid,
                  n_cycles: int, refine_iters: int) -> Tensor:
    """Polished params float64 [b, S, 3] of one chunk; invalid slots keep their values."""
    ops = (H[:, None] * codes[:, :, None, :]).to(torch.complex64)  # [b, L, M, N]: H·diag(c_l)
    y64 = y.to(torch.complex128)
    steps = torch.tensor(grid.steps(), dtype=torch.float64, device=y.device)
    box = _box(grid, y.device)
    lo, hi = box
    params = torch.minimum(torch.maximum(params, lo), hi)  # a start outside the FOV is clamped into it
    S = params.shape[1]
    # zero columns for invalid slots: the loaded per-snapshot LS gives them zero amplitude
    cols = [_responses(ops, grid, params[:, j:j + 1]).squeeze(-1) * valid[:, j, None, None] for j in range(S)]
    coef, residual = _solve_ls(y64, torch.stack(cols, -1).to(torch.complex128))
    active = [j for j in range(S) if bool(valid[:, j].any())]
    if n_cycles and refine_iters > 0 and active:
        dictionary = ops @ grid.steering.to(ops.device, torch.complex64).T  # [b, L, M, G]
        atom_norm2 = dictionary.abs().square().sum(2).clamp_min(1e-30)  # [b, L, G]
        g_az, g_el, g_r = grid.points(torch.arange(grid.size, device=grid.azimuth.device))
        grid_params = torch.stack([g_az, g_el, 1 / g_r], -1).to(y.device)  # [G, 3]: φ, θ, 1/r
    for _ in range(n_cycles if refine_iters > 0 else 0):
        for j in active:
            own = cols[j].to(torch.complex128) * coef[..., j:j + 1]  # [b, L, M]: source j's fitted part
            target = (residual + own).to(torch.complex64)
            # global move first: with the others removed, a source estimated at a wrong place (one found twice,
            # another missed) leaves the missed one as the strongest atom of the grid
            score = ((target.conj().unsqueeze(2) @ dictionary).squeeze(2).abs().square() / atom_norm2).sum(1)
            best_score, g = score.max(1)  # [b]
            jump = best_score > _single_score(ops, grid, params[:, j], target)
            start = torch.where(jump[:, None], grid_params[g], params[:, j])
            moved = _refine_atom(ops, target, start, steps, box, grid, refine_iters)
            params[:, j] = torch.where(valid[:, j, None], moved, params[:, j])
            cols[j] = _responses(ops, grid, params[:, j:j + 1]).squeeze(-1) * valid[:, j, None, None]
            coef, residual = _solve_ls(y64, torch.stack(cols, -1).to(torch.complex128))
    return params


def _single_score(ops: Tensor, grid: SearchGrid, p: Tensor, target: Tensor) -> Tensor:
    """Σ_l |b_lᴴ·t_l|² / ‖b_l‖² of one source at p [b, 3] for targets t [b, L, M]: the energy it explains. [b]"""
    resp = _responses(ops, grid, p[:, None]).squeeze(-1)  # [b, L, M]
    corr = (target.conj() * resp).sum(-1)  # [b, L]
    return (corr.abs().square() / resp.abs().square().sum(-1).clamp_min(1e-30)).sum(1)
