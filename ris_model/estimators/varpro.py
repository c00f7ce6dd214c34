"""Levenberg–Marquardt on the variable-projection likelihood of point sources (SCIENCE.md, "Estimators and evaluation").

Owns the numerical core of the ML polish and of the count selection: `atom_jacobians` (the steering vector and
its analytic derivatives in (φ, θ, 1/r)), `small_solve` (batched Cholesky solves of many tiny systems),
`Scenes` (a chunk's measurements and operators, made once and shared by every fit, count and iteration) and
`Fits` (many candidate configurations per scene, fitted at once). The noise is white per antenna (the data
contract), so the ML positions minimize E(p) = Σ_l ‖y_l − Φ_l(p)·ŝ_l‖² with the per-snapshot LS amplitudes ŝ_l =
Φ_l⁺·y_l and Φ_l = H·diag(c_l)·[a(p_1) … a(p_K)]. Eliminating the amplitudes (variable projection) leaves 3K
real unknowns; `Fits.lm` runs Levenberg–Marquardt on them with Kaufman's Jacobian J_l = −P⊥_l·∂Φ_l·ŝ_l, whose
normal equations need only the atoms, their derivatives and K×K per-snapshot Gram matrices:
Re Σ_l J_lᴴJ_l = Re Σ_l (D_lᴴD_l − X_lᴴG_l⁻¹X_l) with D_l = ∂Φ_l·ŝ_l, X_l = Φ_lᴴD_l, and the gradient
−2·Re Σ_l D_lᴴ·r_l. A step is kept where it lowers E (else the damping rises): no fit ever gets worse, and
there is no host synchronization in the loop (fixed iteration counts, per-fit `torch.where`), so the CPU and
CUDA paths are the same code.

Shapes: b scenes, T configurations per scene (counts, trials), S source slots per configuration; positions
float64 [b, T, S, 3] as (φ rad, θ rad, 1/r in 1/m); `valid` bool [b, T, S]. Atoms are complex64 (the steering
in float32: phase error ~1e-6 rad), energies float64.

References:
    G. Golub, V. Pereyra, "The differentiation of pseudo-inverses and nonlinear least squares problems whose
    variables separate", SIAM J. Numer. Anal. 10(2), 1973; L. Kaufman, "A variable projection method for
    solving separable nonlinear least squares problems", BIT 15, 1975; D. Marquardt, "An algorithm for
    least-squares estimation of nonlinear parameters", SIAM J. Appl. Math. 11(2), 1963.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ris_model.estimators.atoms import fov_box
from ris_model.estimators.grid import SearchGrid
from ris_model.physics import element_positions, steering

#: LM damping: start, and the factors on a kept and on a refused step (Nielsen's simple schedule)
LAMBDA_START = 1e-3
LAMBDA_DOWN = 0.3
LAMBDA_UP = 10.0
LAMBDA_MAX = 1e6


def atom_jacobians(grid: SearchGrid, p: Tensor) -> tuple[Tensor, Tensor]:
    """Steering vectors and their derivatives at positions p [..., 3] (φ, θ, 1/r): a complex64 [..., N] (from
    `ris_model.physics.steering`, float32) and ∂a/∂(φ, θ, 1/r) complex64 [..., 3, N], analytic for the
    system's steering model (exact spherical or Fresnel)."""
    system = grid.system
    az, el, inv_r = p[..., 0].float(), p[..., 1].float(), p[..., 2].float()
    a = steering(system, az, el, 1 / inv_r)  # [..., N] complex64
    e = element_positions(system, device=p.device, dtype=torch.float32)  # [N, 3], e_z = 0
    k0 = 2 * math.pi / system.wavelength_m
    r = (1 / inv_r)[..., None]
    ca, sa, ce, se = (t[..., None] for t in (az.cos(), az.sin(), el.cos(), el.sin()))
    w = ce * sa * e[:, 0] + se * e[:, 1]  # [..., N]: direction · e_n
    w_az = ce * ca * e[:, 0]  # ∂w/∂φ
    w_el = -se * sa * e[:, 0] + ce * e[:, 1]  # ∂w/∂θ
    e2 = (e * e).sum(-1)
    if system.steering_model == "fresnel":  # δ = −w + (‖e‖² − w²)·u/2, u = 1/r
        u = inv_r[..., None]
        d_az, d_el = -w_az * (1 + w * u), -w_el * (1 + w * u)
        d_u = (e2 - w * w) / 2
    else:  # δ = ‖p − e‖ − r, d = ‖p − e‖ = √(r² − 2r·w + ‖e‖²)
        dist = torch.sqrt(torch.clamp(r * r - 2 * r * w + e2, min=1e-30))
        d_az, d_el = -r * w_az / dist, -r * w_el / dist
        # ∂δ/∂r = (r − w)/d − 1 = −(‖e‖² − w²)/(d·(d + r − w)), without cancellation; ∂/∂u = −r²·∂/∂r
        d_u = r * r * (e2 - w * w) / (dist * (dist + r - w))
    dphase = -k0 * torch.stack([d_az, d_el, d_u], -2)  # [..., 3, N]: ∂(−k0·δ)/∂(φ, θ, u)
    da = a.unsqueeze(-2) * torch.complex(torch.zeros_like(dphase), dphase)  # ∂a = j·∂phase·a
    return a, da


def small_solve(A: Tensor, rhs: Tensor) -> Tensor:
    """x = A⁻¹·rhs for Hermitian positive definite A [..., n, n] (real or complex) and rhs [..., n] or [..., n, m]:
    batched Cholesky (`cholesky_ex`: no host check of the factorization, which would wait on the device)."""
    vector = rhs.dim() == A.dim() - 1
    factor = torch.linalg.cholesky_ex(A).L
    x = torch.cholesky_solve(rhs.unsqueeze(-1) if vector else rhs, factor)
    return x.squeeze(-1) if vector else x


_SLOT_INDEX: dict[tuple[tuple[int, ...], int, str], Tensor] = {}


def slot_index(n_slots: tuple[int, ...], S: int, device: torch.device) -> Tensor:
    """Flat indices t·S + s of the used slots (s < n_slots[t]), made once per structure and device."""
    key = (n_slots, S, str(device))
    if key not in _SLOT_INDEX:
        _SLOT_INDEX[key] = torch.tensor([t * S + s for t, n in enumerate(n_slots) for s in range(n)], device=device)
    return _SLOT_INDEX[key]


class Scenes:
    """One chunk's measurements y complex64 [b, L, M] and operators H·diag(c_l) complex64 [b, L·M, N], made once
    and shared by every configuration, count and iteration; the search grid's dictionary on first use (the
    global moves' candidates)."""

    def __init__(self, y: Tensor, H: Tensor, codes: Tensor, grid: SearchGrid) -> None:
        b, L, M = y.shape
        self.L, self.M, self.grid = L, M, grid
        self.y = y.to(torch.complex64)
        self.ops = (H[:, None] * codes[:, :, None, :]).to(torch.complex64).reshape(b, L * M, -1)
        self.box = fov_box(grid, y.device)
        self.steps = torch.tensor(grid.steps(), dtype=torch.float64, device=y.device)
        self._dictionary: Tensor | None = None

    def atoms(self, p: Tensor, jacobian: bool, n_slots: tuple[int, ...] | None = None
              ) -> tuple[Tensor, Tensor | None]:
        """Effective atoms Φ complex64 [b, T, L, M, S] at p [b, T, S, 3] and, with `jacobian`, their derivatives
        [b, T, L, M, S, 3]: one product of each scene's L·M operator rows with all its atoms. `n_slots` (T
        counts, static): configuration t uses only its first n_slots[t] slots; the others' atoms are zero and
        cost nothing."""
        b, T, S, _ = p.shape
        index = None if n_slots is None or min(n_slots) == S else slot_index(n_slots, S, p.device)
        q = p.reshape(b, T * S, 3) if index is None else p.reshape(b, T * S, 3).index_select(1, index)
        a, da = atom_jacobians(self.grid, q) if jacobian else (steering(
            self.grid.system, q[..., 0].float(), q[..., 1].float(), (1 / q[..., 2]).float()), None)
        cols = a[..., None, :] if da is None else torch.cat([a[..., None, :], da], -2)  # [b, P, C, N]
        P, C = cols.shape[1:3]
        out = (self.ops @ cols.reshape(b, P * C, -1).transpose(1, 2)).reshape(b, self.L, self.M, P, C)
        if index is not None:
            full = out.new_zeros(b, self.L, self.M, T * S, C)
            out = full.index_copy_(3, index, out)
        out = out.reshape(b, self.L, self.M, T, S, C).permute(0, 3, 1, 2, 4, 5)  # [b, T, L, M, S, C]
        return out[..., 0], (out[..., 1:] if jacobian else None)

    def dictionary(self) -> Tensor:
        """The grid's effective atoms scaled to unit norm per snapshot, complex64 [b, L, G, M]."""
        if self._dictionary is None:
            b = self.y.shape[0]
            steer = self.grid.steering.to(self.y.device, torch.complex64)
            d = (self.ops @ steer.T).reshape(b, self.L, self.M, -1).transpose(2, 3)  # [b, L, G, M]
            norm2 = torch.view_as_real(d).square().sum((-1, -2)).clamp_min(1e-30)  # [b, L, G]
            self._dictionary = d * norm2.rsqrt()[..., None]
        return self._dictionary

    def grid_best(self, target: Tensor) -> tuple[Tensor, Tensor]:
        """For targets [b, T, L, M]: the grid point that explains most energy, Σ_l |b_lᴴt_l|²/‖b_l‖², as (φ, θ,
        1/r) float64 [b, T, 3], and that energy [b, T]."""
        b, T = target.shape[:2]
        corr = self.dictionary().conj() @ target.permute(0, 2, 3, 1)  # [b, L, G, T]: the conjugates of b̂_lᴴt_l
        score = torch.view_as_real(corr).square().sum((1, -1))  # [b, G, T]
        best, g = score.max(1)  # [b, T]
        az, el, rng = self.grid.points(g)
        return torch.stack([az, el, 1 / rng], -1).to(torch.float64), best.double()

    def clamp(self, p: Tensor) -> Tensor:
        return torch.minimum(torch.maximum(p, self.box[0]), self.box[1])


@dataclass
class Fits:
    """T configurations per scene: positions p float64 [b, T, S, 3], valid bool [b, T, S], and, after
    `evaluate`, the residual energy [b, T] (float64) and the LM state."""

    p: Tensor
    valid: Tensor
    energy: Tensor | None = None
    normal: Tensor | None = None  # Re Σ JᴴJ, float64 [b, T, 3S, 3S]
    gradient: Tensor | None = None  # Re Σ D_lᴴ r_l, float64 [b, T, 3S]: E falls along it
    damping: Tensor | None = None  # [b, T]
    n_slots: tuple[int, ...] | None = None  # static: configuration t uses only its first n_slots[t] slots

    def evaluate(self, scenes: Scenes) -> Fits:
        """Energy, normal matrix and gradient at p (one atom product); returns self."""
        self.energy, self.normal, self.gradient = _normal_equations(scenes, self.p, self.valid, self.n_slots)
        if self.damping is None:
            self.damping = torch.full_like(self.energy, LAMBDA_START)
        return self

    def lm(self, scenes: Scenes, n_iter: int) -> Fits:
        """n_iter Levenberg–Marquardt steps on every configuration at once; a step is kept only where it lowers
        the energy. Each step moves a coordinate by at most one grid step and stays in the field of view."""
        if self.energy is None:
            self.evaluate(scenes)
        assert self.energy is not None and self.normal is not None and self.gradient is not None
        assert self.damping is not None
        b, T, S, _ = self.p.shape
        eye = torch.eye(3 * S, dtype=torch.float64, device=self.p.device)
        cap = scenes.steps.repeat(S)  # [3S]
        for _ in range(n_iter):
            diag = self.normal.diagonal(dim1=-2, dim2=-1)
            scale = diag + 1e-12 * diag.mean(-1, keepdim=True) + (diag <= 0)  # a dead slot's step is 0
            A = self.normal + (self.damping[..., None] * scale)[..., None] * eye + (diag <= 0)[..., None] * eye
            step = small_solve(A, self.gradient)
            step = torch.maximum(torch.minimum(step, cap), -cap).reshape(b, T, S, 3)
            trial_p = scenes.clamp(self.p + step * self.valid[..., None])
            energy, normal, gradient = _normal_equations(scenes, trial_p, self.valid, self.n_slots)
            keep = energy < self.energy  # [b, T]
            self.p = torch.where(keep[..., None, None], trial_p, self.p)
            self.energy = torch.where(keep, energy, self.energy)
            self.normal = torch.where(keep[..., None, None], normal, self.normal)
            self.gradient = torch.where(keep[..., None], gradient, self.gradient)
            self.damping = torch.where(keep, self.damping * LAMBDA_DOWN,
                                       (self.damping * LAMBDA_UP).clamp_max(LAMBDA_MAX))
        return self


def least_squares(y: Tensor, phi: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-snapshot LS of y [b, 1 or T, L, M] on the valid columns of Φ [b, T, L, M, S] (invalid columns are
    ignored and get zero amplitude): amplitudes [b, T, L, S], residual [b, T, L, M] and Gram factor inputs
    (the Gram matrices [b, T, L, S, S] with unit diagonal at invalid slots)."""
    phi = phi * valid[:, :, None, None, :]
    gram = phi.mH @ phi  # [b, T, L, S, S]
    eye = torch.eye(phi.shape[-1], dtype=torch.bool, device=phi.device)
    load = 1e-7 * gram.diagonal(dim1=-2, dim2=-1).real.mean(-1).clamp_min(1e-30)  # [b, T, L]
    gram = gram + (eye * (~valid)[:, :, None, :, None] + load[..., None, None] * eye)
    rhs = (phi.mH @ y.unsqueeze(-1)).squeeze(-1)  # [b, T, L, S]
    coef = small_solve(gram, rhs)
    residual = y - (phi @ coef.unsqueeze(-1)).squeeze(-1)
    return coef, residual, gram


def energy_of(residual: Tensor) -> Tensor:
    """Σ over snapshots and antennas of |r|², float64 [...] for residuals [..., L, M]."""
    return torch.view_as_real(residual).double().square().sum((-3, -2, -1))


def _normal_equations(scenes: Scenes, p: Tensor, valid: Tensor, n_slots: tuple[int, ...] | None
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Energy [b, T], Re Σ_l JᴴJ [b, T, 3S, 3S] and Re Σ_l D_lᴴ r_l [b, T, 3S] (module docstring) at p."""
    phi, dphi = scenes.atoms(p, jacobian=True, n_slots=n_slots)
    assert dphi is not None
    b, T, L, M, S = phi.shape
    coef, residual, gram = least_squares(scenes.y[:, None], phi, valid)
    phi = phi * valid[:, :, None, None, :]
    D = (dphi * (coef * valid[:, :, None])[:, :, :, None, :, None]).reshape(b, T, L, M, 3 * S)  # ∂Φ·ŝ
    X = phi.mH @ D  # [b, T, L, S, 3S]
    Z = small_solve(gram, X)  # G⁻¹X
    # the sums over snapshots as single products over the stacked rows (inner sizes L·M and L·S)
    D, X, Z = D.reshape(b, T, L * M, 3 * S), X.reshape(b, T, L * S, 3 * S), Z.reshape(b, T, L * S, 3 * S)
    normal = (D.mH @ D - X.mH @ Z).real.double()  # [b, T, 3S, 3S]
    gradient = (D.mH @ residual.reshape(b, T, L * M, 1)).squeeze(-1).real.double()  # [b, T, 3S]
    return energy_of(residual), normal, gradient
