"""Model-order moves after the ML polish: one source added or dropped where the residual says so (DESIGN §2.7).

Owns `refine_order` and its parts `order_moves` and `decide` (for benches that try several thresholds). With
the noise power known (from the scene's SNR: the information SOMP's stopping rule is given), one move per scene
is tested against τ·L·σ² — the energy a pure-noise atom captures is about L·σ² (one complex amplitude per
snapshot), more for the best of many, as in `omp` (the same τ):
- add: a source at the residual's best grid point (stencil-refined), then all K̂ + 1 polished; kept where the
  residual energy falls by more than the threshold (a missed source, e.g. one of a close pair);
- else drop: the source whose removal (the others re-fitted) raises the residual energy least; dropped where
  it rises by less (a spurious source), at SNR ≥ `drop_min_snr_db` only: below it a weak true source captures
  little more than the threshold, and the drop cost more counts than it won (`bench/order_test.py`).
Imports torch and the estimators' atoms, grid and polish.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ris_model.estimators.atoms import fov_box, noise_var_from_snr, refine_atom, responses, solve_ls
from ris_model.estimators.grid import SearchGrid, SourceEstimate
from ris_model.estimators.omp import DEFAULT_GAIN_THRESHOLD
from ris_model.estimators.polish import polish

DEFAULT_DROP_MIN_SNR_DB = 0.0
_FIELDS = SourceEstimate.FIELDS


@dataclass(frozen=True)
class OrderMoves:
    """The two candidate moves of b scenes. energy: float64 [b], the residual energy of the estimate as given;
    added: the estimate with one more source, all polished (unchanged where there is no free slot), and
    add_energy [b] its residual energy (inf without a free slot); dropped: the estimate without its weakest
    source, and drop_rise [b] how much that raises the residual energy (inf where K̂ = 1)."""

    energy: Tensor
    added: SourceEstimate
    add_energy: Tensor
    dropped: SourceEstimate
    drop_rise: Tensor


def refine_order(y: Tensor, H: Tensor, codes: Tensor, estimate: SourceEstimate, grid: SearchGrid, snr_db: Tensor,
                 *, threshold: float = DEFAULT_GAIN_THRESHOLD, drop_min_snr_db: float = DEFAULT_DROP_MIN_SNR_DB,
                 chunk_size: int = 64) -> SourceEstimate:
    """One add-or-drop move per scene on a polished estimate (see the module docstring).

    Args:
        y: complex [B, L, M] measurements; axis 1 is the snapshot axis (one RIS code per snapshot).
        H: complex [B, M, N] BS→RIS channel.
        codes: complex [B, L, N] RIS codes, one row per snapshot.
        estimate: polished positions (radians, meters) of B scenes, valid slots first (S slots ≥ K̂).
        grid: the search grid of the add move (and of its polish).
        snr_db: real [B] (or a scalar) dB, the scenes' SNR (DESIGN §2.1a definition), for σ².
        threshold: τ, in units of L·σ².
        drop_min_snr_db: no drop below this SNR.
        chunk_size: scenes per chunk (the add move holds the [b, L, M, G] grid responses).

    Returns:
        A SourceEstimate with K̂, K̂ + 1 or K̂ − 1 valid slots per scene, valid slots first, on the device of
        `estimate`, float64. Kept slots keep their positions, except after an add (all re-polished).
    """
    B, L = y.shape[:2]
    snr_db = torch.as_tensor(snr_db, dtype=torch.float64).to(y.device).expand(B)
    est = estimate.map(lambda t: t.to(y.device))
    free = ~est.valid  # unused slots may hold anything (NaN, r = 0): the fits and the polish see (0, 0, 1 m)
    est = SourceEstimate(k=est.k, azimuth=est.azimuth.masked_fill(free, 0.0),
                         elevation=est.elevation.masked_fill(free, 0.0), range_m=est.range_m.masked_fill(free, 1.0),
                         valid=est.valid)
    parts = []
    for s in range(0, B, chunk_size):
        sl = slice(s, s + chunk_size)
        part = est.map(lambda t, sl=sl: t[sl])
        moves = order_moves(y[sl], H[sl], codes[sl], part, grid)
        floor = threshold * L * noise_var_from_snr(y[sl], snr_db[sl])
        parts.append(decide(part, moves, floor, drop=snr_db[sl] >= drop_min_snr_db))
    if not parts:
        return estimate
    return SourceEstimate.cat(parts).map(lambda t: t.to(estimate.azimuth.device))


def decide(est: SourceEstimate, moves: OrderMoves, floor: Tensor, drop: Tensor | bool = True) -> SourceEstimate:
    """Add where the added source lowers the residual energy by more than `floor` [b] (= τ·L·σ²); else drop
    the weakest source where removing it raises the energy by less (and `drop` [b] allows it)."""
    add = moves.energy - moves.add_energy > floor
    remove = ~add & (moves.drop_rise < floor) & torch.as_tensor(drop, device=floor.device)
    return SourceEstimate(**{f: _select(add, getattr(moves.added, f),
                                        _select(remove, getattr(moves.dropped, f), getattr(est, f)))
                             for f in _FIELDS})


def order_moves(y: Tensor, H: Tensor, codes: Tensor, est: SourceEstimate, grid: SearchGrid) -> OrderMoves:
    """Both candidate moves of b scenes (tensors on the device of y; est float64 on it too)."""
    b, S = est.valid.shape
    ops = (H[:, None] * codes[:, :, None, :]).to(torch.complex64)  # [b, L, M, N]: H·diag(c_l)
    y64 = y.to(torch.complex128)
    energy, resid = _fit(ops, y64, grid, est)
    # add: the residual's best grid atom, refined by the stencil, then every source polished
    dictionary = ops @ grid.steering.to(ops.device, torch.complex64).T  # [b, L, M, G]
    target = resid.to(torch.complex64)
    score = ((target.conj().unsqueeze(2) @ dictionary).squeeze(2).abs().square()
             / dictionary.abs().square().sum(2).clamp_min(1e-30)).sum(1)  # [b, G]
    az, el, rng = grid.points(score.argmax(1))
    steps = torch.tensor(grid.steps(), dtype=torch.float64, device=y.device)
    new = refine_atom(ops, target, torch.stack([az, el, 1 / rng], -1), steps, fov_box(grid, y.device), grid, 8)
    room = est.k < S
    added = polish(y, H, codes, _with_source(est, est.k.clamp(max=S - 1), new), grid).map(lambda t: t.to(y.device))
    added = SourceEstimate(**{f: _select(room, getattr(added, f), getattr(est, f)) for f in _FIELDS})
    add_energy = torch.where(room, _fit(ops, y64, grid, added)[0], torch.inf)
    # drop: the source whose removal raises the residual least (the others re-fitted, not moved)
    rise = torch.full((b, S), torch.inf, dtype=torch.float64, device=y.device)
    for j in range(S):
        rise[:, j] = torch.where(est.valid[:, j] & (est.k > 1), _fit(ops, y64, grid, _without(est, j))[0] - energy,
                                 rise[:, j])
    smallest, weakest = rise.min(1)
    return OrderMoves(energy=energy, added=added, add_energy=add_energy, dropped=_without_each(est, weakest),
                      drop_rise=smallest)


def _fit(ops: Tensor, y64: Tensor, grid: SearchGrid, est: SourceEstimate) -> tuple[Tensor, Tensor]:
    """Residual energy float64 [b] and residual [b, L, M] of the per-snapshot LS fit on the valid sources."""
    p = torch.stack([est.azimuth, est.elevation, 1 / est.range_m], -1).to(torch.float64)
    phi = (responses(ops, grid, p) * est.valid[:, None, None, :]).to(torch.complex128)
    resid = solve_ls(y64, phi)[1]
    return resid.abs().square().sum((1, 2)), resid


def _with_source(est: SourceEstimate, slot: Tensor, p: Tensor) -> SourceEstimate:
    """est with a source at params p [b, 3] (φ, θ, 1/r) in slot [b] (the first free one)."""
    rows = torch.arange(len(slot), device=slot.device)
    az, el, rng, valid = est.azimuth.clone(), est.elevation.clone(), est.range_m.clone(), est.valid.clone()
    az[rows, slot], el[rows, slot], rng[rows, slot], valid[rows, slot] = p[:, 0], p[:, 1], 1 / p[:, 2], True
    return SourceEstimate(k=valid.sum(1), azimuth=az, elevation=el, range_m=rng, valid=valid)


def _without(est: SourceEstimate, j: int) -> SourceEstimate:
    """est with slot j invalid (not re-packed: only for fitting)."""
    valid = est.valid.clone()
    valid[:, j] = False
    return SourceEstimate(k=valid.sum(1), azimuth=est.azimuth, elevation=est.elevation, range_m=est.range_m,
                          valid=valid)


def _without_each(est: SourceEstimate, slot: Tensor) -> SourceEstimate:
    """est without the source in slot [b], the valid slots re-packed first in their order."""
    valid = est.valid.clone()
    valid[torch.arange(len(slot), device=slot.device), slot] = False
    order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices
    az, el, rng, valid = (t.gather(1, order) for t in (est.azimuth, est.elevation, est.range_m, valid))
    return SourceEstimate(k=valid.sum(1), azimuth=az, elevation=el, range_m=rng, valid=valid)


def _select(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(mask.reshape(-1, *([1] * (a.dim() - 1))), a, b)
