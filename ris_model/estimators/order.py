"""Model-order selection after the ML polish: a penalized likelihood over every count, with the network's
posterior over the count as a prior term (SCIENCE.md, "Estimators and evaluation").

Owns `select_order` and its parts `count_fits` (the polished fit of each count) and `order_scores` (the rule),
and `residual_energy`. With the noise power σ² known (from the scene's SNR: the information SOMP's stopping
rule is given), the log-likelihood of a K-source ML fit of the deterministic model is −E(K)/σ² up to a
constant, with E(K) = Σ_l ‖y_l − Φ_l·ŝ_l‖². K̂ maximizes

    −E(K)/σ² − (2L + 3)·K + w(SNR)·L·log p(K | y),    w(SNR) = w₀·exp(−SNR / d),

- the first two terms are Akaike's criterion: a source brings 2L real amplitudes (one complex amplitude per
  snapshot) and 3 position parameters;
- the last is the K-head's log-probability, weighted more at low SNR, where the likelihood tells counts apart
  less well than the network. w₀ = 0.5 and d = 10 dB were fitted on fresh scenes (not the test stream) of a
  default training job's checkpoint and checked on another seed (`bench/order_fusion.py`). Without a
  posterior (an estimator that has none) the rule is AIC alone.

Every count 1..S is fitted: the fit of K starts from the first K slots of the estimate (the network's, by
existence logit) and is polished, relocation and split moves included. All counts of a chunk's scenes are one
batched problem (`ris_model.estimators.polish.refine_fits` with the counts' slot structure): the operators and
the grid dictionary are made once per scene, and the atoms of slots a count does not use are never computed.
Two moves of one source each (add the residual's best atom, or drop the weakest) gained less: 0.375 / 0.678 /
0.960 by SNR bin against 0.364 / 0.736 / 0.976 with every count fitted, on the same held-out scenes. Imports
torch and the estimators' atoms, grid, polish and varpro.

References:
    H. Akaike, "A new look at the statistical model identification", IEEE TAC 19(6), 1974.
    M. Wax, T. Kailath, "Detection of signals by information theoretic criteria", IEEE TASSP 33(2), 1985.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ris_model.estimators.atoms import noise_var_from_snr, responses, solve_ls
from ris_model.estimators.grid import SearchGrid, SourceEstimate
from ris_model.estimators.polish import DEFAULT_SCHEDULE, DEFAULT_SPLITS, Schedule, positions_of, refine_fits
from ris_model.estimators.varpro import Scenes

DEFAULT_PRIOR_WEIGHT = 0.5
DEFAULT_PRIOR_DECAY_DB = 10.0


@dataclass(frozen=True)
class CountFits:
    """The polished fits of b scenes for each count: energy float64 [b, S], the residual energy of the K-source
    fit in column K − 1 (units of |y|²); fits[K − 1], the K-source SourceEstimate (S slots, the first K valid)."""

    energy: Tensor
    fits: tuple[SourceEstimate, ...]


def select_order(y: Tensor, H: Tensor, codes: Tensor, estimate: SourceEstimate, grid: SearchGrid, snr_db: Tensor,
                 *, prior_weight: float = DEFAULT_PRIOR_WEIGHT, prior_decay_db: float = DEFAULT_PRIOR_DECAY_DB,
                 n_splits: int = DEFAULT_SPLITS, chunk_size: int = 64) -> SourceEstimate:
    """The count and positions of B scenes by the penalized likelihood of the module docstring.

    Args:
        y: complex [B, L, M] measurements; axis 1 is the snapshot axis (one RIS code per snapshot).
        H: complex [B, M, N] BS→RIS channel.
        codes: complex [B, L, N] RIS codes, one row per snapshot.
        estimate: starting positions (radians, meters) in S slots, best first; every slot must hold a finite
            position (its k and valid are not used). Its `k_log_prob` [B, ≥ S], when present, is the prior term.
        grid: the polish's search grid.
        snr_db: real [B] (or a scalar) dB, the scenes' SNR (the data contract's definition), for σ².
        prior_weight: w₀, the prior's weight at 0 dB in units of L (0: AIC alone).
        prior_decay_db: d, the SNR over which the weight falls by e.
        n_splits: split passes of each count's polish (`ris_model.estimators.polish`); they gain K_acc and
            fewer gross position errors.
        chunk_size: scenes per batched problem (memory grows ~12 MB a scene).

    Returns:
        A SourceEstimate with K̂ ∈ 1..S valid slots first, polished at that count, on the device of
        `estimate`, float64, with the estimate's count posterior.

    Raises:
        ValueError: a slot without a finite position, or a posterior with fewer than S counts.
    """
    B, L = y.shape[:2]
    S = estimate.valid.shape[1]
    if not all(bool(torch.isfinite(t).all()) for t in (estimate.azimuth, estimate.elevation, estimate.range_m)):
        raise ValueError("select_order: every slot of the estimate must hold a finite position")
    if estimate.k_log_prob is not None and estimate.k_log_prob.shape[1] < S:
        raise ValueError(f"select_order: k_log_prob has {estimate.k_log_prob.shape[1]} counts, the estimate "
                         f"{S} slots")
    snr_db = torch.as_tensor(snr_db, dtype=torch.float64).to(y.device).expand(B)
    est = estimate.map(lambda t: t.to(y.device))
    fits = count_fits(y, H, codes, est, grid, n_splits=n_splits, chunk_size=chunk_size)
    prior = None if est.k_log_prob is None else est.k_log_prob[:, :S]
    scores = order_scores(fits.energy, noise_var_from_snr(y, snr_db), snr_db, L, prior,
                          prior_weight=prior_weight, prior_decay_db=prior_decay_db)
    choice = scores.argmax(1)  # [B]: K̂ − 1
    rows = torch.arange(B, device=choice.device)
    pick = lambda f: torch.stack([getattr(fit, f) for fit in fits.fits], 1)[rows, choice]  # noqa: E731
    k = choice + 1
    out = SourceEstimate(k=k, azimuth=pick("azimuth"), elevation=pick("elevation"), range_m=pick("range_m"),
                         valid=torch.arange(S, device=y.device) < k[:, None], k_log_prob=est.k_log_prob)
    return out.map(lambda t: t.to(estimate.azimuth.device))


def order_scores(energy: Tensor, noise_var: Tensor, snr_db: Tensor, n_snapshots: int, k_log_prob: Tensor | None,
                 *, prior_weight: float = DEFAULT_PRIOR_WEIGHT, prior_decay_db: float = DEFAULT_PRIOR_DECAY_DB
                 ) -> Tensor:
    """Scores float64 [b, S] of the counts K = 1..S (the module docstring's criterion; higher is better).

    Args:
        energy: float64 [b, S], E(K) of the K-source fits; noise_var: σ² per antenna [b]; snr_db: [b] dB.
        n_snapshots: L.
        k_log_prob: [b, S] log p(K | y), or None (no prior term).
    """
    L, S = n_snapshots, energy.shape[1]
    k = torch.arange(1, S + 1, dtype=torch.float64, device=energy.device)
    score = -energy / noise_var[:, None] - (2 * L + 3) * k
    if k_log_prob is not None:
        weight = prior_weight * L * torch.exp(-snr_db.to(torch.float64) / prior_decay_db)  # [b]
        score = score + weight[:, None] * k_log_prob.to(torch.float64)
    return score


def count_fits(y: Tensor, H: Tensor, codes: Tensor, estimate: SourceEstimate, grid: SearchGrid, *,
               n_splits: int = DEFAULT_SPLITS, schedule: Schedule = DEFAULT_SCHEDULE, chunk_size: int = 64
               ) -> CountFits:
    """The polished fit of each count K = 1..S from the first K slots of `estimate` (tensors on y's device),
    with `n_splits` split passes: all counts of a chunk's scenes are one batched problem
    (`ris_model.estimators.polish.refine_fits`), sharing the scenes' operators and grid dictionary."""
    B, S = estimate.valid.shape
    params = positions_of(estimate).to(y.device)  # [B, S, 3]
    first = torch.arange(S, device=y.device)[None] < torch.arange(1, S + 1, device=y.device)[:, None]  # [K, S]
    parts = []
    for sl in (slice(s, s + chunk_size) for s in range(0, B, chunk_size)):
        scenes = Scenes(y[sl], H[sl], codes[sl], grid)
        b = scenes.y.shape[0]
        fits = refine_fits(scenes, params[sl, None].expand(b, S, S, 3), first.expand(b, S, S),
                           n_slots=tuple(range(1, S + 1)), n_splits=n_splits, schedule=schedule)
        parts.append(fits.p)
    p = torch.cat(parts) if parts else params[:, None].expand(B, S, S, 3)  # [B, K, S, 3]
    fits_k = tuple(SourceEstimate(k=torch.full_like(estimate.k, n), azimuth=p[:, n - 1, :, 0],
                                  elevation=p[:, n - 1, :, 1], range_m=1 / p[:, n - 1, :, 2],
                                  valid=first[n - 1].expand(B, S).clone(), k_log_prob=estimate.k_log_prob)
                   for n in range(1, S + 1))
    energy = torch.stack([residual_energy(y, H, codes, f, grid) for f in fits_k], 1)
    return CountFits(energy=energy, fits=fits_k)


def residual_energy(y: Tensor, H: Tensor, codes: Tensor, est: SourceEstimate, grid: SearchGrid) -> Tensor:
    """Σ_l ‖y_l − Φ_l·ŝ_l‖², float64 [b]: the residual energy of the per-snapshot LS fit of y [b, L, M] on the
    valid sources of `est` (on the device of y), with Φ_l = H·diag(c_l)·[a(p_1) … a(p_K̂)]."""
    ops = (H[:, None] * codes[:, :, None, :]).to(torch.complex64)  # [b, L, M, N]: H·diag(c_l)
    p = torch.stack([est.azimuth, est.elevation, 1 / est.range_m], -1).to(torch.float64)
    phi = (responses(ops, grid, p) * est.valid[:, None, None, :]).to(torch.complex128)
    return solve_ls(y.to(torch.complex128), phi)[1].abs().square().sum((1, 2))

