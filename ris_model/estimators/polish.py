"""Maximum-likelihood polish of estimated source positions: local Levenberg–Marquardt plus global moves
(SCIENCE.md, "Estimators and evaluation").

Owns `polish` (the K̂ sources of an estimate, K̂ left as it is) and `refine_fits` (the same procedure on many
configurations per scene at once, which the count selection uses for every count). The noise is white per
antenna (the data contract), so the ML positions minimize E = Σ_l ‖y_l − Φ_l·ŝ_l‖² over positions and per-snapshot
amplitudes ŝ_l, with Φ_l = H·diag(c_l)·[a(p_1) … a(p_K̂)]. The procedure:

1. Levenberg–Marquardt on all sources jointly (`ris_model.estimators.varpro`: the amplitudes projected out,
   analytic Jacobians of the steering model), from the estimate's positions clamped into the field of view.
2. A relocation move (the global move of RELAX-style searches): each source is removed, the others re-fitted,
   and the grid point that best explains the residual is compared with the source's own position; the
   sources that would gain most are re-placed there (one trial each), all sources are re-fitted, and a trial
   is kept where E falls. It leaves the local optimum of two estimates sharing one source while another
   source is missed.
3. A split move: two close sources fitted by one estimate, the spare estimate on noise elsewhere, is the local
   optimum behind most of the remaining gross errors (`bench/order_features.py` polishes from the truth too:
   the fits that miss are mostly worse than that one). The weakest source (whose removal raises E least) is
   placed one grid step from each other source along ±φ, ±θ or ±1/r; the placements that explain most energy
   at once (amplitudes re-fitted, positions not) are re-fitted as trials and kept where E falls.
4. A last run of Levenberg–Marquardt.

Every trial of every configuration of every scene of a chunk is one batched problem with a fixed number of
iterations: no step raises E, and nothing waits on the host, on the CPU or on CUDA. At high SNR the ML
estimate reaches the CRB, which a regression head trained on a Huber loss with a degree-scale knee does not.
Imports torch and the estimators' grid and varpro.

References:
    J. Li, P. Stoica, "Efficient mixed-spectrum estimation with applications to target feature extraction"
    (RELAX), IEEE TSP 44(2), 1996; I. Ziskind, M. Wax, "Maximum likelihood localization of multiple sources
    by alternating projection", IEEE TASSP 36(10), 1988.
    P. Stoica, A. Nehorai, "MUSIC, maximum likelihood, and Cramér–Rao bound", IEEE TASSP 37(5), 1989.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ris_model.estimators.grid import SearchGrid, SourceEstimate
from ris_model.estimators.varpro import Fits, Scenes, energy_of, least_squares, slot_index

DEFAULT_REBIRTHS = 1
DEFAULT_SPLITS = 1


@dataclass(frozen=True)
class Schedule:
    """Iterations and trials of `refine_fits`: LM iterations from the start, per trial, and at the end; the
    relocation and split trials per configuration (the most promising ones by their screening)."""

    start_iters: int = 8
    trial_iters: int = 6
    final_iters: int = 4
    relocations: int = 2
    splits: int = 2


DEFAULT_SCHEDULE = Schedule()


def polish(y: Tensor, H: Tensor, codes: Tensor, estimate: SourceEstimate, grid: SearchGrid, *,
           n_rebirths: int = DEFAULT_REBIRTHS, n_splits: int = DEFAULT_SPLITS, schedule: Schedule = DEFAULT_SCHEDULE,
           chunk_size: int = 64) -> SourceEstimate:
    """ML refinement of the valid sources of `estimate` (the module docstring's procedure).

    Args:
        y: complex [B, L, M] measurements; axis 1 is the snapshot axis (one RIS code per snapshot).
        H: complex [B, M, N] BS→RIS channel.
        codes: complex [B, L, N] RIS codes, one row per snapshot.
        estimate: the starting positions (radians, meters) of B scenes; only `valid` slots are moved.
        grid: the global moves' candidates, and the scale of a step (one grid step per axis at most).
        n_rebirths: passes of the relocation move (0: none).
        n_splits: passes of the split move (0: none).
        schedule: iterations and trials.
        chunk_size: scenes per chunk.

    Returns:
        A SourceEstimate with the same k, valid, slot order and count posterior, on the device of `estimate`,
        float64; invalid slots keep their values.

    Raises:
        ValueError: shapes that do not match.
    """
    B = y.shape[0]
    if H.shape[0] != B or codes.shape[:2] != y.shape[:2] or estimate.azimuth.shape[0] != B:
        raise ValueError(f"polish: y {tuple(y.shape)}, H {tuple(H.shape)}, codes {tuple(codes.shape)} and "
                         f"{estimate.azimuth.shape[0]} estimates do not describe the same scenes")
    out_device = estimate.azimuth.device
    params = positions_of(estimate).to(y.device)  # [B, S, 3]
    valid = estimate.valid.to(y.device)
    parts = []
    for sl in (slice(s, s + chunk_size) for s in range(0, B, chunk_size)):
        scenes = Scenes(y[sl], H[sl], codes[sl], grid)
        fits = refine_fits(scenes, params[sl, None], valid[sl, None], n_rebirths=n_rebirths, n_splits=n_splits,
                           schedule=schedule)
        parts.append(torch.where(valid[sl, :, None], fits.p[:, 0], params[sl]))
    params = torch.cat(parts).to(out_device) if parts else params.to(out_device)
    return SourceEstimate(k=estimate.k, azimuth=params[..., 0], elevation=params[..., 1],
                          range_m=1 / params[..., 2], valid=estimate.valid, k_log_prob=estimate.k_log_prob)


def positions_of(estimate: SourceEstimate) -> Tensor:
    """(φ, θ, 1/r) float64 [B, S, 3] of an estimate's slots."""
    return torch.stack([estimate.azimuth, estimate.elevation, 1 / estimate.range_m], -1).to(torch.float64)


def refine_fits(scenes: Scenes, p: Tensor, valid: Tensor, *, n_slots: tuple[int, ...] | None = None,
                n_rebirths: int = DEFAULT_REBIRTHS, n_splits: int = DEFAULT_SPLITS,
                schedule: Schedule = DEFAULT_SCHEDULE) -> Fits:
    """The polish of T configurations per scene at once: positions p float64 [b, T, S, 3] (clamped into the
    field of view) with valid slots [b, T, S]; `n_slots` (static, T counts): configuration t has no valid slot
    past its first n_slots[t] (the count selection's structure; their atoms are then never computed). Returns
    the refined Fits (energy included)."""
    fits = Fits(scenes.clamp(p), valid, n_slots=n_slots).lm(scenes, schedule.start_iters)
    for _ in range(n_rebirths):
        fits = _keep_best(fits, _relocation_trials(scenes, fits, schedule.relocations), scenes, schedule)
    for _ in range(n_splits):
        fits = _keep_best(fits, _split_trials(scenes, fits, schedule.splits), scenes, schedule)
    return fits.lm(scenes, schedule.final_iters)


def _keep_best(fits: Fits, trials: Tensor, scenes: Scenes, schedule: Schedule) -> Fits:
    """Each configuration's trials [b, T, R, S, 3] re-fitted by LM; the configuration becomes its best trial
    where that has a lower energy."""
    b, T, R, S, _ = trials.shape
    valid = fits.valid[:, :, None].expand(b, T, R, S)
    n_slots = None if fits.n_slots is None else tuple(n for n in fits.n_slots for _ in range(R))
    tried = Fits(trials.reshape(b, T * R, S, 3), valid.reshape(b, T * R, S), n_slots=n_slots).lm(
        scenes, schedule.trial_iters)
    assert tried.energy is not None and fits.energy is not None
    assert tried.normal is not None and fits.normal is not None and tried.gradient is not None
    assert fits.gradient is not None and tried.damping is not None and fits.damping is not None
    energy = tried.energy.reshape(b, T, R)
    best_energy, r = energy.min(-1)  # [b, T]
    better = best_energy < fits.energy

    def pick(new: Tensor, old: Tensor) -> Tensor:
        new = new.reshape(b, T, R, *new.shape[2:])
        idx = r.reshape(b, T, 1, *([1] * (new.dim() - 3))).expand(b, T, 1, *new.shape[3:])
        chosen = new.gather(2, idx).squeeze(2)
        return torch.where(better.reshape(b, T, *([1] * (old.dim() - 2))), chosen, old)

    return Fits(p=pick(tried.p, fits.p), valid=fits.valid, energy=pick(tried.energy, fits.energy),
                normal=pick(tried.normal, fits.normal), gradient=pick(tried.gradient, fits.gradient),
                damping=pick(tried.damping, fits.damping), n_slots=fits.n_slots)


@dataclass(frozen=True)
class _Leave1Out:
    """Each slot j of each configuration removed: the residual of the others' fit [b, T, S, L, M], its energy
    [b, T, S] (inf at invalid slots) and the atoms of the configuration [b, T, L, M, S]."""

    residual: Tensor
    energy: Tensor
    atoms: Tensor


def _leave_one_out(scenes: Scenes, fits: Fits) -> _Leave1Out:
    b, T, S, _ = fits.p.shape
    phi, _ = scenes.atoms(fits.p, jacobian=False, n_slots=fits.n_slots)  # [b, T, L, M, S]
    L, M = phi.shape[2:4]
    others = fits.valid[:, :, None, :] & ~torch.eye(S, dtype=torch.bool, device=phi.device)  # [b, T, S(j), S]
    phi_j = phi[:, :, None].expand(b, T, S, L, M, S).reshape(b, T * S, L, M, S)
    _, residual, _ = least_squares(scenes.y[:, None], phi_j, others.reshape(b, T * S, S))
    residual = residual.reshape(b, T, S, L, M)
    energy = energy_of(residual).masked_fill(~fits.valid, torch.inf)
    return _Leave1Out(residual=residual, energy=energy, atoms=phi)


def _relocation_trials(scenes: Scenes, fits: Fits, n_trials: int) -> Tensor:
    """[b, T, R, S, 3]: for the R slots per configuration whose residual (the others fitted) is explained best
    by a grid point rather than by the slot itself, that slot moved to the grid point."""
    b, T, S, _ = fits.p.shape
    loo = _leave_one_out(scenes, fits)
    targets = loo.residual.reshape(b, T * S, scenes.L, scenes.M)
    if fits.n_slots is None:
        best_p, best_score = scenes.grid_best(targets)
    else:  # only the slots in use
        index = slot_index(fits.n_slots, S, targets.device)
        used_p, used_score = scenes.grid_best(targets.index_select(1, index))
        best_p = fits.p.new_zeros(b, T * S, 3).index_copy_(1, index, used_p)
        best_score = used_score.new_zeros(b, T * S).index_copy_(1, index, used_score)
    # the energy slot j explains of its own target: Σ_l |b_lᴴt_l|²/‖b_l‖², b_l its atom, t_l the residual
    atom = loo.atoms.permute(0, 1, 4, 2, 3)  # [b, T, S, L, M]
    corr = (atom.conj() * loo.residual).sum(-1)
    own = (torch.view_as_real(corr).square().sum(-1)
           / torch.view_as_real(atom).square().sum((-1, -2)).clamp_min(1e-30)).sum(-1)  # [b, T, S]
    gain = (best_score.reshape(b, T, S) - own.double()).masked_fill(~fits.valid, -torch.inf)
    R = min(n_trials, S)
    slot = gain.topk(R, -1).indices  # [b, T, R]
    moved = best_p.reshape(b, T, S, 3).gather(2, slot[..., None].expand(b, T, R, 3))  # [b, T, R, 3]
    trials = fits.p[:, :, None].expand(b, T, R, S, 3).clone()
    onehot = torch.nn.functional.one_hot(slot, S).bool()[..., None]  # [b, T, R, S, 1]
    return torch.where(onehot, moved[:, :, :, None], trials)


def _split_trials(scenes: Scenes, fits: Fits, n_trials: int) -> Tensor:
    """[b, T, R, S, 3]: the weakest slot w placed one grid step beside another slot j (±φ, ±θ, ±1/r), for the R
    placements per configuration whose fit with re-fitted amplitudes has the lowest energy (placements beside
    w itself, or in a configuration of one source, are never chosen unless nothing else is left)."""
    b, T, S, _ = fits.p.shape
    loo = _leave_one_out(scenes, fits)
    weakest = loo.energy.argmin(-1)  # [b, T]: the slot whose removal raises E least
    offsets = torch.cat([torch.diag(scenes.steps), -torch.diag(scenes.steps)])  # [6, 3]
    O = offsets.shape[0]
    beside = scenes.clamp(fits.p[:, :, :, None] + offsets)  # [b, T, S(j), O, 3]
    n_slots = None if fits.n_slots is None else tuple(n * O for n in fits.n_slots)
    phi_new, _ = scenes.atoms(beside.reshape(b, T, S * O, 3), jacobian=False, n_slots=n_slots)  # [b, T, L, M, S·O]
    L, M = phi_new.shape[2:4]
    # the configuration's atoms with column w replaced by each placement: [b, T, S·O, L, M, S]
    base = loo.atoms[:, :, None].expand(b, T, S * O, L, M, S)
    is_w = torch.nn.functional.one_hot(weakest, S).bool()[:, :, None, None, None, :]
    phi = torch.where(is_w, phi_new.permute(0, 1, 4, 2, 3)[..., None], base)
    _, residual, _ = least_squares(scenes.y[:, None], phi.reshape(b, T * S * O, L, M, S),
                                   fits.valid[:, :, None].expand(b, T, S * O, S).reshape(b, T * S * O, S))
    energy = energy_of(residual).reshape(b, T, S, O)
    useless = ~fits.valid | (torch.arange(S, device=weakest.device) == weakest[..., None])  # [b, T, S]
    energy = energy.masked_fill(useless[..., None], torch.inf).reshape(b, T, S * O)
    R = min(n_trials, S * O)
    choice = energy.topk(R, -1, largest=False).indices  # [b, T, R]: j·O + o
    place = beside.reshape(b, T, S * O, 3).gather(2, choice[..., None].expand(b, T, R, 3))
    trials = fits.p[:, :, None].expand(b, T, R, S, 3)
    onehot = torch.nn.functional.one_hot(weakest, S).bool()[:, :, None, :, None]  # [b, T, 1, S, 1]
    return torch.where(onehot, place[:, :, :, None], trials)
