"""Levenberg–Marquardt on the variable-projection likelihood of point sources (SCIENCE.md, "Estimators and evaluation").

Owns the numerical core of the ML polish and of the count selection: `atom_jacobians` (the steering vector and its
analytic derivatives in (φ, θ, 1/r), from one distance pass), `small_solve` (batched elimination of many tiny
Hermitian positive definite systems), `masked_solve` and `fit_energy` (LS fits of column subsets from the Gram
matrix of all columns, and their energies without residuals), `GridTensors` (the grid's constants on a device),
`Scenes` (a chunk's measurements and operators, made once and shared by every fit, count and iteration) and `Fits`
(many candidate configurations per scene, fitted at once). The noise is white per antenna (the data contract), so
the ML positions minimize E(p) = Σ_l ‖y_l − Φ_l(p)·ŝ_l‖² with the per-snapshot LS amplitudes ŝ_l = Φ_l⁺·y_l and Φ_l
= H·diag(c_l)·[a(p_1) … a(p_K)]. Eliminating the amplitudes (variable projection) leaves 3K real unknowns;
`Fits.lm` runs Levenberg–Marquardt on them with Kaufman's Jacobian J_l = −P⊥_l·∂Φ_l·ŝ_l, whose normal equations
need only the atoms, their derivatives and K×K per-snapshot Gram matrices: Re Σ_l J_lᴴJ_l = Re Σ_l (D_lᴴD_l −
X_lᴴG_l⁻¹X_l) with D_l = ∂Φ_l·ŝ_l, X_l = Φ_lᴴD_l, and the gradient −2·Re Σ_l D_lᴴ·r_l. A step is kept where it
lowers E (else the damping rises): no fit ever gets worse, and there is no host synchronization in the loop (fixed
iteration counts, per-fit `torch.where`), so the CPU and CUDA paths are the same code, and a CUDA graph can hold a
whole fit. One product Φᴴ·[Φ, ∂Φ] per snapshot and one elimination of G with [Φᴴy, Φᴴ∂Φ] on the right give ŝ, X and
G⁻¹X at once (ŝ scales X's columns).

Solves: Gaussian elimination with back substitution (`small_solve`) replaces `cholesky_ex` + `cholesky_solve`:
plain elementwise ops that a CUDA graph can hold (cuSOLVER/MAGMA batched calls are not known to be), and a
normal-equations call of 32 scenes × 10 configurations took 0.11–0.13 s against 0.19 s on one CPU thread.
Gauss–Jordan elimination was tried and left LM an energy floor ~1000× higher (its residual grows with cond(G)).

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


def atom_jacobians(grid: SearchGrid, p: Tensor, elements: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Steering vectors and their derivatives at positions p [..., 3] (φ, θ, 1/r): a complex64 [..., N] (the
    phase of `ris_model.physics.steering`, float32) and ∂a/∂(φ, θ, 1/r) complex64 [..., 3, N], analytic for the
    system's steering model (exact spherical or Fresnel). The phase and its derivatives share one distance pass;
    `elements` (float32 [N, 3], `element_positions`) may be given to skip rebuilding them."""
    system = grid.system
    az, el, inv_r = p[..., 0].float(), p[..., 1].float(), p[..., 2].float()
    e = element_positions(system, device=p.device, dtype=torch.float32) if elements is None else elements
    k0 = 2 * math.pi / system.wavelength_m
    r = (1 / inv_r)[..., None]
    ca, sa, ce, se = (t[..., None] for t in (az.cos(), az.sin(), el.cos(), el.sin()))
    w = ce * sa * e[:, 0] + se * e[:, 1]  # [..., N]: direction · e_n
    w_az = ce * ca * e[:, 0]  # ∂w/∂φ
    w_el = -se * sa * e[:, 0] + ce * e[:, 1]  # ∂w/∂θ
    e2 = (e * e).sum(-1)
    if system.steering_model == "fresnel":  # δ = −w + (‖e‖² − w²)·u/2, u = 1/r
        u = inv_r[..., None]
        delta = -w + (e2 - w * w) * u / 2
        d_az, d_el = -w_az * (1 + w * u), -w_el * (1 + w * u)
        d_u = (e2 - w * w) / 2
    else:  # δ = ‖p − e‖ − r = (‖e‖² − 2r·w)/(d + r), d = ‖p − e‖ = √(r² − 2r·w + ‖e‖²)
        dist = torch.sqrt(torch.clamp(r * r - 2 * r * w + e2, min=1e-30))
        delta = (e2 - 2 * r * w) / (dist + r)
        d_az, d_el = -r * w_az / dist, -r * w_el / dist
        # ∂δ/∂r = (r − w)/d − 1 = −(‖e‖² − w²)/(d·(d + r − w)), without cancellation; ∂/∂u = −r²·∂/∂r
        d_u = r * r * (e2 - w * w) / (dist * (dist + r - w))
    a = torch.polar(torch.full_like(delta, 1 / math.sqrt(e.shape[0])), -k0 * delta)  # [..., N] complex64
    dphase = -k0 * torch.stack([d_az, d_el, d_u], -2)  # [..., 3, N]: ∂(−k0·δ)/∂(φ, θ, u)
    da = (a * 1j).unsqueeze(-2) * dphase  # ∂a = j·∂phase·a
    return a, da


def small_solve(A: Tensor, rhs: Tensor) -> Tensor:
    """x = A⁻¹·rhs for Hermitian positive definite A [..., n, n] (real or complex) and rhs [..., n] or [..., n, m]
    (batch shapes broadcast): `forward_eliminate`, then back substitution by column sweeps (a residual as small
    as Cholesky's; Gauss–Jordan's is not). 2n steps of three elementwise ops, for the small n here (a Gram
    matrix of ≤ K_MAX atoms, a normal matrix of 3·K_MAX unknowns): no library call and nothing waits on the
    host, so a CUDA graph can hold it."""
    vector = rhs.dim() == A.dim() - 1
    aug = forward_eliminate(A, rhs.unsqueeze(-1) if vector else rhs)
    x = back_substitute(aug, A.shape[-1])
    return x.squeeze(-1) if vector else x


def forward_eliminate(A: Tensor, rhs: Tensor) -> Tensor:
    """Gaussian elimination without pivoting of [A | rhs] (A [..., n, n] Hermitian positive definite, rhs
    [..., n, m], batch shapes broadcast), in place on the shrinking active block: returns [U | L⁻¹·rhs] with
    A = L·U, L unit lower triangular and U = D·Lᴴ, D = diag(U) > 0 (the pivots are Schur complements'
    diagonals). Backward stable for these matrices; rhsᴴ·A⁻¹·rhs = Wᴴ·D⁻¹·W with W = L⁻¹·rhs, no back
    substitution needed."""
    n = A.shape[-1]
    batch = torch.broadcast_shapes(A.shape[:-2], rhs.shape[:-2])
    aug = torch.cat([A.expand(*batch, n, n), rhs.expand(*batch, n, rhs.shape[-1])], -1)
    for j in range(n):  # clear column j below the diagonal, touching only the columns from j on
        row = aug[..., j:j + 1, j:] / aug[..., j:j + 1, j:j + 1]
        aug[..., j + 1:, j:] -= aug[..., j + 1:, j:j + 1] * row
    return aug


def back_substitute(aug: Tensor, n: int) -> Tensor:
    """U⁻¹·W [..., n, m] from [U | W] [..., n, n + m] (`forward_eliminate`'s output, changed in place): column
    sweeps on the right-hand sides only."""
    for j in reversed(range(n)):
        aug[..., j:j + 1, n:] /= aug[..., j:j + 1, j:j + 1]
        aug[..., :j, n:] -= aug[..., :j, j:j + 1] * aug[..., j:j + 1, n:]
    return aug[..., n:]


_SLOT_INDEX: dict[tuple[tuple[int, ...], int, str], Tensor] = {}


def slot_index(n_slots: tuple[int, ...], S: int, device: torch.device) -> Tensor:
    """Flat indices t·S + s of the used slots (s < n_slots[t]), made once per structure and device."""
    key = (n_slots, S, str(device))
    if key not in _SLOT_INDEX:
        _SLOT_INDEX[key] = torch.tensor([t * S + s for t, n in enumerate(n_slots) for s in range(n)], device=device)
    return _SLOT_INDEX[key]


@dataclass(frozen=True)
class GridTensors:
    """The search grid's constants on a device, made once and shared by every chunk: the field-of-view box
    (lo, hi) float64 [3], the grid steps float64 [3] and the RIS element positions float32 [N, 3]. Making them
    outside a chunk's fit keeps host-to-device copies out of it (a CUDA graph may hold the fit)."""

    box: tuple[Tensor, Tensor]
    steps: Tensor
    elements: Tensor

    @staticmethod
    def of(grid: SearchGrid, device: torch.device) -> GridTensors:
        return GridTensors(box=fov_box(grid, device),
                           steps=torch.tensor(grid.steps(), dtype=torch.float64, device=device),
                           elements=element_positions(grid.system, device=device, dtype=torch.float32))


class Scenes:
    """One chunk's measurements y complex64 [b, L, M] and operators H·diag(c_l) complex64 [b, L·M, N], made once
    and shared by every configuration, count and iteration; the search grid's dictionary on first use (the
    global moves' candidates). `consts`: the grid's tensors on y's device (`GridTensors.of`), made here when
    not given."""

    def __init__(self, y: Tensor, H: Tensor, codes: Tensor, grid: SearchGrid, consts: GridTensors | None = None
                 ) -> None:
        b, L, M = y.shape
        self.L, self.M, self.grid = L, M, grid
        self.y = y.to(torch.complex64)
        self.ops = (H[:, None] * codes[:, :, None, :]).to(torch.complex64).reshape(b, L * M, -1)
        consts = GridTensors.of(grid, y.device) if consts is None else consts
        self.box, self.steps, self.elements = consts.box, consts.steps, consts.elements
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
        a, da = atom_jacobians(self.grid, q, self.elements) if jacobian else (steering(
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


def masked_solve(gram: Tensor, rhs: Tensor, valid: Tensor) -> Tensor:
    """Per-snapshot LS amplitudes [..., S] from the Gram matrices G = ΦᴴΦ [..., S, S] and Φᴴy [..., S] of all
    columns (or G⁻¹·rhs [..., S, m] for rhs [..., S, m]), using only the `valid` ones ([..., S], broadcast; the
    others get zero): G restricted to them (`masked_gram`). Leave-one-out and one-column-replaced fits are then
    masks and small products on G, never copies of the atoms."""
    v = valid.to(gram.dtype)
    rhs = rhs * (v[..., :, None] if rhs.dim() == gram.dim() else v)
    return small_solve(masked_gram(gram, valid), rhs)


def masked_gram(gram: Tensor, valid: Tensor) -> Tensor:
    """G [..., S, S] restricted to the `valid` [..., S] columns: zero rows and columns elsewhere, with unit
    diagonal there, and a loading of 1e-7 of the mean diagonal."""
    S = gram.shape[-1]
    v = valid.to(gram.dtype)
    g = gram * (v[..., :, None] * v[..., None, :])
    eye = torch.eye(S, dtype=torch.bool, device=gram.device)
    load = 1e-7 * g.diagonal(dim1=-2, dim2=-1).real.mean(-1).clamp_min(1e-30)
    return g + (eye * (~valid)[..., None, :] + load[..., None, None] * eye)


def fit_energy(y_energy: Tensor, gram: Tensor, rhs: Tensor, coef: Tensor) -> Tensor:
    """‖y − Φ·c‖² = ‖y‖² − 2·Re cᴴΦᴴy + cᴴGc, float64 [...], summed over the snapshots (axis −2 of gram [..., L,
    S, S], rhs and coef [..., L, S]; y_energy [...] is ‖y‖²): a fit's energy without its residual."""
    gc = (gram @ coef.unsqueeze(-1)).squeeze(-1)
    terms = torch.view_as_real(coef.conj() * (gc - 2 * rhs))[..., 0].double()  # Re cᴴ(Gc − 2Φᴴy)
    return y_energy + terms.sum((-2, -1))


def least_squares(y: Tensor, phi: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per-snapshot LS of y [b, 1 or T, L, M] on the valid columns of Φ [b, T, L, M, S] (invalid columns are
    ignored and get zero amplitude): amplitudes [b, T, L, S] and residual [b, T, L, M]."""
    coef = masked_solve(phi.mH @ phi, (phi.mH @ y.unsqueeze(-1)).squeeze(-1), valid[:, :, None, :])
    return coef, y - (phi @ coef.unsqueeze(-1)).squeeze(-1)


def energy_of(residual: Tensor) -> Tensor:
    """Σ over snapshots and antennas of |r|², float64 [...] for residuals [..., L, M]."""
    return torch.view_as_real(residual).double().square().sum((-3, -2, -1))


def _normal_equations(scenes: Scenes, p: Tensor, valid: Tensor, n_slots: tuple[int, ...] | None
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Energy [b, T], Re Σ_l JᴴJ [b, T, 3S, 3S] and Re Σ_l D_lᴴ r_l [b, T, 3S] (module docstring) at p. The
    amplitudes ŝ scale the columns of D = ∂Φ·ŝ and X = Φᴴ·D, so one product Φᴴ·[Φ, ∂Φ] and one forward
    elimination of the Gram matrix give G, ŝ (back substitution of one column) and XᴴG⁻¹X = WᴴD⁻¹W."""
    phi, dphi = scenes.atoms(p, jacobian=True, n_slots=n_slots)
    assert dphi is not None
    b, T, L, M, S = phi.shape
    both = torch.cat([phi.unsqueeze(-1), dphi], -1)  # [b, T, L, M, S, 4]
    phi = both[..., 0]
    proj = (phi.mH @ both.reshape(b, T, L, M, 4 * S)).reshape(b, T, L, S, S, 4)  # Φᴴ·[Φ, ∂Φ]
    v = valid[:, :, None, :]
    Xb = proj[..., 1:].reshape(b, T, L, S, 3 * S) * v[..., None].to(phi.dtype)  # Φᴴ∂Φ, rows of valid slots
    rhs = (phi.mH @ scenes.y[:, None, :, :, None]) * v[..., None].to(phi.dtype)  # Φᴴy [b, T, L, S, 1]
    aug = forward_eliminate(masked_gram(proj[..., 0], v), torch.cat([rhs, Xb], -1))  # [U | L⁻¹Φᴴy | L⁻¹Xb]
    coef = back_substitute(aug[..., :S + 1], S)[..., 0]  # ŝ; invalid slots: 0, so are their columns of D and X
    # XᴴG⁻¹X = WᴴD⁻¹W with W = L⁻¹X: L⁻¹Φᴴ∂Φ with ŝ scaling its columns, rows weighted by the pivots' D^(-1/2)
    pivots = aug[..., :S].diagonal(dim1=-2, dim2=-1).real  # [b, T, L, S]
    residual = scenes.y[:, None] - (phi @ coef.unsqueeze(-1)).squeeze(-1)
    scale = coef[..., None].expand(b, T, L, S, 3).reshape(b, T, L, 1, 3 * S)  # ŝ_s at column (s, ·)
    D = (both[..., 1:] * coef[:, :, :, None, :, None]).reshape(b, T, L * M, 3 * S)  # ∂Φ·ŝ
    W = (aug[..., S + 1:] * scale * pivots.rsqrt()[..., None]).reshape(b, T, L * S, 3 * S)
    # the sums over snapshots as single products over the stacked rows (inner sizes L·M and L·S)
    normal = (D.mH @ D - W.mH @ W).real.double()  # [b, T, 3S, 3S]
    gradient = (D.mH @ residual.reshape(b, T, L * M, 1)).squeeze(-1).real.double()  # [b, T, 3S]
    return energy_of(residual), normal, gradient
