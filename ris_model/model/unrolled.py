"""Unrolled simultaneous OMP as a network backbone: look, cancel, look again.

Owns UnrolledOMPBackbone. The known sensing operator H·diag(c_l) is the model's prior: K_MAX greedy
iterations pick the grid atom that best explains the whitened residual across all L snapshots, refit all
picked atoms per snapshot by least squares, and record what each look saw (the local image around the peak,
peak-to-mean ratio, residual energy before/after). The greedy part has no parameters and no gradient; a small
transformer over the K_MAX look tokens learns the stopping rule (the K-head) and sub-grid refinements
(the geometry head predicts offsets from each look's grid anchor). No N×N matrix is formed: the M×M Cholesky
whitening and the t×t (t ≤ K_MAX) least-squares solves are the only factorizations.

References: Tropp, Gilbert, Strauss, "Algorithms for simultaneous sparse approximation" (SOMP), 2006;
Gregor & LeCun, "Learning fast approximations of sparse coding" (unrolling), 2010.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from api_schemas import ModelConfig, SystemConfig
from ris_model.accel.cuda_graphs import CudaGraphed
from ris_model.accel.kernels import grouped_power
from ris_model.accel.lowp import (
    ALL_FUSED,
    LOW_PRECISION,
    FusedRoutes,
    LowPrecisionOperator,
    block_power,
    candidate_block,
    normalized_image,
    real_block,
    reduce_image,
)
from ris_model.accel.refine_kernel import fused_refine
from ris_model.estimators.grid import fov_axes
from ris_model.model.whitening import channel_cholesky, cholesky_unchecked
from ris_model.physics import element_positions, steering

_PATCH = torch.tensor([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])  # [27, 3]
N_LOOK_FEATURES = 27 + 5  # patch, peak ratio, log residual energy before/after, peak share, iteration


class UnrolledOMPBackbone(nn.Module):
    # buffers (registered in __init__)
    anchors: Tensor  # [G, 3]: φ, θ, 1/r of the grid points
    dictionary: Tensor  # [G, N]
    dictionary_h: Tensor  # [N, G]
    dictionary_h_lowp: Tensor  # [2N, 2G]
    element_xyz: Tensor  # [N, 3]
    grid_step: Tensor  # [3]
    patch_index: Tensor  # [27, 3]
    patch_offsets: Tensor  # [27, 3]

    def __init__(self, system: SystemConfig, model: ModelConfig, routes: FusedRoutes = ALL_FUSED) -> None:
        """`routes`: which products of the look pass run as fused Triton kernels where they can (CUDA)."""
        super().__init__()
        d, self.k_max = model.d_model, system.k_max
        self.routes = routes
        self.shape = (model.grid_inv_range, model.grid_elevation, model.grid_azimuth)  # (Gr, Ge, Ga)
        az_max, el_max = math.radians(system.azimuth_max_deg), math.radians(system.elevation_max_deg)
        az, el, inv_r = fov_axes(system, model.grid_azimuth, model.grid_elevation, model.grid_inv_range)
        rr, ee, aa = torch.meshgrid(inv_r, el, az, indexing="ij")  # flat index (i_r·Ge + i_e)·Ga + i_a
        anchors = torch.stack([aa.reshape(-1), ee.reshape(-1), rr.reshape(-1)], -1)  # [G, 3]: φ, θ, 1/r
        D = steering(system, anchors[:, 0], anchors[:, 1], 1 / anchors[:, 2]).to(torch.complex64)  # [G, N]
        self.register_buffer("anchors", anchors.float(), persistent=False)
        self.register_buffer("dictionary", D, persistent=False)  # [G, N]
        self.register_buffer("dictionary_h", D.T.conj().contiguous(), persistent=False)  # [N, G]
        # the same matrix as a real [2N, 2G] block for fp16 tensor-core products on CUDA (see _grid_power)
        self.register_buffer("dictionary_h_lowp", real_block(D.T.conj()), persistent=False)  # [2N, 2G]
        self.normalize_atoms = model.normalize_atoms
        self.refine_rounds = model.look_refine_rounds
        self.system = system
        self.register_buffer("element_xyz", element_positions(system, dtype=torch.float32), persistent=False)
        self.wavenumber = 2 * math.pi / system.wavelength_m  # k0, rad/m
        self.fresnel = system.steering_model == "fresnel"
        step = torch.tensor([2 * az_max / max(model.grid_azimuth - 1, 1), 2 * el_max / max(model.grid_elevation - 1, 1),
                             (1 / system.range_min_m - 1 / system.range_max_m) / max(model.grid_inv_range - 1, 1)])
        self.register_buffer("grid_step", step.float(), persistent=False)
        self.register_buffer("patch_index", _PATCH.clone(), persistent=False)  # device copies: no H2D per step
        self.register_buffer("patch_offsets", _PATCH.float(), persistent=False)
        self.graphed_looks = CudaGraphed() if model.cuda_graphs else None
        self.embed = nn.Sequential(nn.Linear(N_LOOK_FEATURES + 3, d), nn.GELU(), nn.Linear(d, d))
        self.look_pos = nn.Parameter(torch.randn(self.k_max, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, model.n_heads, 2 * d, model.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, model.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, y: Tensor, H: Tensor, codes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """y: complex [B, L, M] (axis 1 = snapshots), H: [B, M, N], codes: [B, L, N], each unit-RMS.

        Returns pooled [B, d], slots [B, K_MAX, d] and anchors [B, K_MAX, 3] (φ, θ in radians, 1/r in 1/m)."""
        looks, anchors = self.look_pass(y, H, codes)
        return (*self.encode(looks, anchors), anchors)

    def look_pass(self, y: Tensor, H: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
        """The parameter-free greedy pass (no gradient; a CUDA-graph replay in training on CUDA):
        looks [B, K_MAX, N_LOOK_FEATURES] and anchors [B, K_MAX, 3]."""
        with torch.no_grad(), torch.autocast(y.device.type, enabled=False):  # the looks set their own precision
            if self.training and self.graphed_looks is not None and y.is_cuda:
                looks, anchors = self.graphed_looks(self.look, y, H, codes)
                return looks, anchors
            return self.look(y, H, codes)

    def encode(self, looks: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
        """The trainable part: a transformer over the look tokens. Returns pooled [B, d], slots [B, K_MAX, d]."""
        looks = torch.cat([looks, anchors / self.anchors.abs().amax(0).clamp_min(1e-6)], -1)
        tokens = self.embed(looks) + self.look_pos  # [B, K, d]
        slots = self.norm(self.encoder(tokens))
        return slots.mean(1), slots

    def look(self, y: Tensor, H: Tensor, codes: Tensor, real_block: bool | None = None,
             routes: FusedRoutes | None = None) -> tuple[Tensor, Tensor]:
        """The greedy SOMP pass. Returns per-look features [B, K, N_LOOK_FEATURES] and anchors [B, K, 3].
        `real_block` picks the fp16 real-block products (default: on CUDA) or complex64 (default on the CPU);
        `routes` the fused kernels (default: the backbone's own).

        No host synchronization (so that it can be replayed as a CUDA graph): `cholesky_ex` instead of
        `cholesky`, index buffers instead of host tensors, `scatter_` instead of boolean indexing."""
        B, L, M = y.shape
        K, G = self.k_max, self.dictionary.shape[0]
        chol = channel_cholesky(H)  # [B, M, M]; the same for all snapshots since |c| = 1
        Hw = torch.linalg.solve_triangular(chol, H, upper=False)  # [B, M, N] whitened operator
        yw = torch.linalg.solve_triangular(chol, y.transpose(1, 2), upper=False)  # [B, M, L]
        # H_w·diag(c_l), one operator per snapshot, kept once for the atom norms and the refinement
        ops = LowPrecisionOperator.from_factors(Hw, codes, real_block=real_block, routes=routes or self.routes)
        norms = self._atom_norms(ops) if self.normalize_atoms else None
        energy0 = yw.abs().square().sum((1, 2)).clamp_min(1e-20)  # [B]
        resid, atoms = yw, []
        taken = torch.zeros(B, G, dtype=torch.bool, device=y.device)
        feats, picks = [], []
        log_e_prev = torch.zeros(B, device=y.device)
        for t in range(K):
            z = (Hw.mH @ resid).transpose(1, 2) * codes.conj()  # [B, L, N] back-projected residual
            img = self._image(z, norms, taken, ops.real_block, fused=ops.fused and ops.routes.image)  # [B, G]
            g = img.argmax(-1)
            taken.scatter_(1, g[:, None], True)  # no host sync (index_put with a Python bool syncs)
            mean = img.mean(-1).clamp_min(1e-20)
            peak = img.gather(1, g[:, None]).squeeze(1)
            patch = self._patch(img, g) / peak[:, None].clamp_min(1e-20)  # [B, 27] in [0, 1]
            # off the grid: a local search around the cell (SOMP's refinement), then refit every picked atom
            anchor = self.anchors[g]
            if self.refine_rounds:
                anchor = self._refine(anchor, z, ops)
            a_g = self._steer(anchor)  # [B, N]
            atoms.append(Hw @ (codes * a_g[:, None, :]).transpose(1, 2))  # [B, M, L]
            resid = yw - self._project(torch.stack(atoms, -1), yw)
            log_e = torch.log(resid.abs().square().sum((1, 2)) / energy0 + 1e-6)
            share = (peak * L / (resid.abs().square().sum((1, 2)) + 1e-20)).clamp(max=1e6)
            feats.append(torch.cat([patch, torch.stack([
                torch.log(peak / mean), log_e_prev, log_e, torch.log1p(share),
                torch.full_like(log_e, t / max(K - 1, 1))], -1)], -1))
            picks.append(anchor)
            log_e_prev = log_e
        return torch.stack(feats, 1).float(), torch.stack(picks, 1)

    def _steer(self, anchor: Tensor) -> Tensor:
        """Steering vectors, complex64 [..., N], at anchors [..., 3] = (φ, θ, 1/r)."""
        return steering(self.system, anchor[..., 0], anchor[..., 1], 1 / anchor[..., 2]).to(torch.complex64)

    def _refine(self, anchor: Tensor, z: Tensor, ops: LowPrecisionOperator) -> Tensor:
        """Pattern search around each pick: `refine_rounds` rounds over the 27 points at ±½, ±¼, … of a grid
        cell, keeping the best normalized matched-filter score Σ_l |aᴴ·z_l|² / ‖H_w·diag(c_l)·a‖².
        anchor: [B, 3] (φ, θ, 1/r); z: [B, L, N] back-projected residual. Returns the refined [B, 3]."""
        step = self.grid_step / 2
        offsets = self.patch_offsets.to(anchor.dtype)  # [27, 3]; row 13 is the centre
        lo, hi = self.anchors.amin(0), self.anchors.amax(0)
        # real-block route: aᴴ·z_l = conj(zᴴ·a), so conj(z) meets the same candidate block as the operators
        zr = torch.view_as_real(z.conj().resolve_conj()).flatten(-2).to(LOW_PRECISION) if ops.real_block else None
        if zr is not None and ops.fused_refine:  # every round in one kernel (ris_model.accel.refine_kernel)
            _, L, M = ops.shape
            return fused_refine(anchor, zr, ops.ops, self.element_xyz, step, lo, hi, self.wavenumber, self.fresnel,
                                self.refine_rounds, L, M)
        for _ in range(self.refine_rounds):
            cand = torch.maximum(torch.minimum(anchor[:, None, :] + offsets * step, hi), lo)  # [B, 27, 3]
            if zr is not None:  # one fused kernel (compiled on CUDA) writes the fp16 block of all candidates
                block = candidate_block(cand, self.element_xyz, self.wavenumber, self.fresnel)
                power = ops.power_block(block)  # [B, L, 27]
                if ops.fused:  # one Triton kernel: the matched product, ÷ the norms, summed over l
                    score = grouped_power(zr, block, zr.shape[1], power)[:, 0]
                else:
                    score = (block_power(zr @ block) / power.clamp_min(1e-12)).sum(1)
            else:
                a = self._steer(cand)  # [B, 27, N]
                score = ((z @ a.mH).abs().square() / ops.power(a).clamp_min(1e-12)).sum(1)
            best = score.argmax(-1)  # [B]
            anchor = cand.gather(1, best[:, None, None].expand(-1, 1, 3)).squeeze(1)
            step = step / 2
        return anchor

    def _atom_norms(self, ops: LowPrecisionOperator) -> Tensor:
        """‖H_w·diag(c_l)·a(g)‖² for every snapshot l and grid point g, [B, L, G]: on CUDA one Triton kernel
        (the 2 TFLOP product at B = 4,096 is reduced in registers, never written); else a bounded slice at a
        time (the [B, L, M, G] products are the largest tensor of the forward pass)."""
        B, L, M = ops.shape
        if not ops.real_block:
            x = ops.ops.reshape(B, L, M, -1)
            return torch.cat([self._grid_power(x[:, l:l + 4], sum_dim=2) for l in range(0, L, 4)], 1)
        if ops.fused and ops.routes.atom_norms:  # the [B, L·M, 2G] product is never written
            return grouped_power(ops.ops, self.dictionary_h_lowp, M)
        G2 = self.dictionary_h_lowp.shape[1]  # 2G
        chunk = max(1, 2**30 // (L * M * G2 * 2))  # ~1 GiB of fp16 products at a time
        return torch.cat([
            torch.linalg.vector_norm((ops.ops[b:b + chunk] @ self.dictionary_h_lowp).reshape(-1, L, M, 2, G2 // 2),
                                     dim=(2, 3), dtype=torch.float32).square()
            for b in range(0, B, chunk)], 0)

    def _image(self, z: Tensor, norms: Tensor | None, taken: Tensor, real_block: bool, fused: bool = False) -> Tensor:
        """The look's image mean_l |a(g)ᴴ·z_l|² / ‖H_w·diag(c_l)·a(g)‖² over the grid, [B, G], 0 at `taken`.

        Real-block route (CUDA): the real fp16 tensor-core product of view_as_real(z) with the real block form
        of Dᴴ, its squares, normalization and sum over snapshots in one Triton kernel (`fused`; else cuBLAS and
        one compiled reduction). Scores only rank and describe looks, so fp16's ~0.05 % error is harmless; the
        complex64 route's separate squares would copy every [B, L, G] intermediate."""
        if real_block:
            zr = torch.view_as_real(z.contiguous()).flatten(-2).to(LOW_PRECISION)  # [B, L, 2N]
            if fused:  # Σ_l in the kernel, then the mean and the taken mask
                return (grouped_power(zr, self.dictionary_h_lowp, z.shape[1], norms)[:, 0]
                        / z.shape[1]).masked_fill(taken, 0.0)
            return normalized_image(zr @ self.dictionary_h_lowp, norms, taken)
        return reduce_image(self._grid_power(z), norms, taken)

    def _grid_power(self, x: Tensor, sum_dim: int | None = None) -> Tensor:
        """|x·Dᴴ|² over the grid in complex64, real [..., G] for complex x [..., N] (summed over `sum_dim`)."""
        power = (x @ self.dictionary_h).abs().square()
        return power if sum_dim is None else power.sum(sum_dim)

    def _patch(self, img: Tensor, g: Tensor) -> Tensor:
        """The 3×3×3 neighbourhood of grid index g in the (Gr, Ge, Ga) image (edges clamped), [B, 27]."""
        Gr, Ge, Ga = self.shape
        idx = torch.stack([g // (Ge * Ga), (g // Ga) % Ge, g % Ga], -1)  # [B, 3]
        nb = idx[:, None, :] + self.patch_index  # [B, 27, 3]
        nb = torch.stack([nb[..., 0].clamp(0, Gr - 1), nb[..., 1].clamp(0, Ge - 1), nb[..., 2].clamp(0, Ga - 1)], -1)
        flat = (nb[..., 0] * Ge + nb[..., 1]) * Ga + nb[..., 2]
        return img.gather(1, flat)

    @staticmethod
    def _project(atoms: Tensor, yw: Tensor) -> Tensor:
        """Least-squares fit of yw_l on the picked atoms of snapshot l; atoms [B, M, L, t], yw [B, M, L]."""
        A = atoms.permute(0, 2, 1, 3)  # [B, L, M, t]
        rhs = yw.transpose(1, 2).unsqueeze(-1)  # [B, L, M, 1]
        gram = A.mH @ A  # [B, L, t, t]
        t = gram.shape[-1]
        load = 1e-6 * gram.diagonal(dim1=-2, dim2=-1).real.mean(-1).clamp_min(1e-20)
        gram = gram + load[..., None, None] * torch.eye(t, dtype=gram.dtype, device=gram.device)
        chol = cholesky_unchecked(gram)
        # two triangular solves rather than cholesky_solve, whose batched CUDA path (MAGMA) cannot be captured
        w = torch.linalg.solve_triangular(chol, A.mH @ rhs, upper=False)
        coef = torch.linalg.solve_triangular(chol.mH, w, upper=True)  # [B, L, t, 1]
        return (A @ coef).squeeze(-1).transpose(1, 2)  # [B, M, L]
