"""Loss terms and their weighted sum (SCIENCE.md, "Losses and phases").

Owns: covariance NMSE (computed through K×K Gram products, never an N×N matrix), K cross-entropy, the
permutation-invariant geometry set loss (with slot existence), and the eigengap hinge / subspace margin on
Gram eigenvalues. The weights come only from the phase's LossWeights, passed in by the trainer.
Term names are the LossWeights field names without `lam_`: cov, k, aux, gap, margin.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from api_schemas import LossWeights, SystemConfig
from ris_model.model.network import ModelOutput
from ris_model.scenes import SceneBatch

TERMS = ("cov", "k", "aux", "gap", "margin")
_MAX_PERMUTATION_SLOTS = 6  # up to 6! = 720 permutations on the device; Hungarian (scipy) above


@dataclass
class LossResult:
    total: Tensor  # scalar, the weighted sum
    terms: dict[str, Tensor]  # unweighted scalar terms, by name
    assignment: Tensor  # int64 [B, K_MAX]: predicted slot matched to true slot j (valid where mask)


def compute_loss(out: ModelOutput, batch: SceneBatch, weights: LossWeights, system: SystemConfig) -> LossResult:
    """All terms, weighted by `weights`."""
    assignment, geom = geometry_set_loss(out, batch, system)
    terms = {
        "cov": covariance_nmse(out.cov_factor, batch.covariance_factor()),
        "k": nnf.cross_entropy(out.k_logits.float(), batch.k - 1),  # class i ↔ K = i + 1
        "aux": geom,
        "gap": eigengap_hinge(out.gram_eigs, batch.k),
        "margin": subspace_margin(out.gram_eigs, batch.k),
    }
    return LossResult(total=weighted_total(terms, weights, geom.device), terms=terms, assignment=assignment)


def weighted_total(terms: dict[str, Tensor], weights: LossWeights, device: torch.device) -> Tensor:
    """Σ λ_name·term over the terms of TERMS whose weight is positive: a zero weight drops the term from the
    graph, so a non-finite value in an unused term cannot poison the step."""
    lam = {"cov": weights.lam_cov, "k": weights.lam_k, "aux": weights.lam_aux, "gap": weights.lam_gap,
           "margin": weights.lam_margin}
    return sum((lam[name] * terms[name] for name in TERMS if lam[name] > 0), torch.zeros((), device=device))


def covariance_nmse(F_hat: Tensor, F: Tensor) -> Tensor:
    """mean_B ‖F̂F̂ᴴ − FFᴴ‖²_F / ‖FFᴴ‖²_F, through K×K products (no N×N matrix).

    ‖R̂ − R‖² = ‖F̂ᴴF̂‖² + ‖FᴴF‖² − 2‖F̂ᴴF‖². Both sides trace-normalized alike."""
    F_hat = F_hat.to(torch.complex64)
    a = (F_hat.mH @ F_hat).abs().square().sum((1, 2))
    b = (F.mH @ F).abs().square().sum((1, 2))
    c = (F_hat.mH @ F).abs().square().sum((1, 2))
    return ((a + b - 2 * c) / b.clamp_min(1e-12)).mean()


def eigengap_hinge(eigs: Tensor, k: Tensor, margin: float = 0.5) -> Tensor:
    """Hinge on the relative gap between eigenvalue K and K+1 of R̂ (Gram eigenvalues, descending)."""
    p = (eigs / eigs.sum(-1, keepdim=True).clamp_min(1e-30)).float()
    padded = torch.cat([p, torch.zeros_like(p[:, :1])], -1)
    lam_k = padded.gather(1, (k - 1)[:, None]).squeeze(1)
    lam_k1 = padded.gather(1, k[:, None]).squeeze(1)
    return torch.relu(margin - (lam_k - lam_k1) / (lam_k + 1e-6)).mean()


def subspace_margin(eigs: Tensor, k: Tensor) -> Tensor:
    """Fraction of R̂'s energy outside its top-K eigenvalues (K = the true count)."""
    p = (eigs / eigs.sum(-1, keepdim=True).clamp_min(1e-30)).float()
    outside = torch.arange(p.shape[1], device=p.device)[None, :] >= k[:, None]
    return (p * outside).sum(-1).mean()


#: Scales of the geometry loss: errors are measured in units of about one resolution cell (the default
#: detection tolerances of the evaluation), so a few degrees of error still give a useful gradient.
GEOMETRY_SCALE = (math.radians(5.0), math.radians(5.0), 1.0)  # azimuth rad, elevation rad, range m


def geometry_errors(out: ModelOutput, batch: SceneBatch) -> Tensor:
    """Scaled errors of every predicted slot against every true source, float [B, K_pred, K_true, 3]."""
    d_az = (out.azimuth[:, :, None] - batch.azimuth[:, None, :]) / GEOMETRY_SCALE[0]
    d_el = (out.elevation[:, :, None] - batch.elevation[:, None, :]) / GEOMETRY_SCALE[1]
    d_r = (out.range_m[:, :, None] - batch.range_m[:, None, :]) / GEOMETRY_SCALE[2]
    return torch.stack([d_az, d_el, d_r], -1).float()


def geometry_set_loss(out: ModelOutput, batch: SceneBatch, system: SystemConfig) -> tuple[Tensor, Tensor]:
    """Permutation-invariant set loss: the best matching of predicted slots to the true sources (by squared
    scaled error), a Huber loss on the matched errors, plus existence BCE (matched slots exist, the others
    don't). Returns (assignment [B, K], scalar loss)."""
    err = geometry_errors(out, batch)  # [B, Kp, Kt, 3]
    assignment = match_slots(err.detach().square().sum(-1), batch.mask)
    matched = err.gather(1, assignment[:, None, :, None].expand(-1, 1, -1, 3)).squeeze(1)  # [B, Kt, 3]
    huber = nnf.huber_loss(matched, torch.zeros_like(matched), reduction="none", delta=1.0).sum(-1)
    mask = batch.mask.float()
    loc = (huber * mask).sum() / mask.sum().clamp_min(1.0)
    exists = torch.zeros_like(out.exist_logits).scatter(1, assignment, mask)
    bce = nnf.binary_cross_entropy_with_logits(out.exist_logits.float(), exists)
    return assignment, loc + bce


@functools.lru_cache(maxsize=16)
def _permutations(k: int, device: torch.device) -> Tensor:
    """All permutations of range(k), int64 [k!, k], made once per device (no host→device copy per step)."""
    return torch.tensor(list(itertools.permutations(range(k))), device=device)


def match_slots(cost: Tensor, mask: Tensor) -> Tensor:
    """For each true slot j, the predicted slot matched to it (int64 [B, K]); min total cost over valid j."""
    B, K, _ = cost.shape
    if K <= _MAX_PERMUTATION_SLOTS:
        perms = _permutations(K, cost.device)  # [P, K]
        # total[b, p] = Σ_j mask[b, j]·cost[b, perms[p, j], j]
        gathered = cost[:, perms, torch.arange(K, device=cost.device)]  # [B, P, K]
        total = (gathered * mask[:, None, :]).sum(-1)
        return perms[total.argmin(1)]
    out = torch.empty((B, K), dtype=torch.long)
    c = cost.cpu().numpy()
    m = mask.cpu().numpy()
    for b in range(B):
        rows, cols = linear_sum_assignment(c[b] * m[b][None, :])
        out[b, cols] = torch.from_numpy(rows)
    return out.to(cost.device)
