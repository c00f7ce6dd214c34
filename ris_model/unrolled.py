"""Unrolled simultaneous OMP as a network backbone: look, cancel, look again (issue 4).

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
from ris_model.cuda_graphs import CudaGraphed, compiled_on_cuda
from ris_model.kernels import fused_available, grouped_power
from ris_model.physics import element_positions, phase_at, source_position, steering
from ris_model.refine_kernel import fused_refine, refine_available

_PATCH = torch.tensor([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])  # [27, 3]
#: CUDA products of the look pass: fp16 (2⁻¹¹ rounding) rather than bf16 (2⁻⁸) at the same tensor-core speed;
#: every operand is unit-scale (whitened operators, unit-norm atoms), far inside fp16's range
LOW_PRECISION = torch.float16
N_LOOK_FEATURES = 27 + 5  # patch, peak ratio, log residual energy before/after, peak share, iteration
#: the grid-wide products (atom norms, look images) as the fused grouped_power where it runs (else cuBLAS + a
#: reduction); module switches, read at call time, so that bench/train.py --torch-route can compare routes
FUSED_ATOM_NORMS = True
FUSED_IMAGE = True
FUSED_REFINE = True  # every refinement round of a look in one kernel (ris_model.refine_kernel)


class UnrolledOMPBackbone(nn.Module):
    def __init__(self, system: SystemConfig, model: ModelConfig) -> None:
        super().__init__()
        d, self.k_max = model.d_model, system.k_max
        self.shape = (model.grid_inv_range, model.grid_elevation, model.grid_azimuth)  # (Gr, Ge, Ga)
        az_max, el_max = math.radians(system.azimuth_max_deg), math.radians(system.elevation_max_deg)
        az = torch.linspace(-az_max, az_max, model.grid_azimuth, dtype=torch.float64)
        el = torch.linspace(-el_max, el_max, model.grid_elevation, dtype=torch.float64)
        inv_r = torch.linspace(1 / system.range_max_m, 1 / system.range_min_m, model.grid_inv_range,
                               dtype=torch.float64)
        rr, ee, aa = torch.meshgrid(inv_r, el, az, indexing="ij")
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
                return self.graphed_looks(self.look, y, H, codes)
            return self.look(y, H, codes)

    def encode(self, looks: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
        """The trainable part: a transformer over the look tokens. Returns pooled [B, d], slots [B, K_MAX, d]."""
        looks = torch.cat([looks, anchors / self.anchors.abs().amax(0).clamp_min(1e-6)], -1)
        tokens = self.embed(looks) + self.look_pos  # [B, K, d]
        slots = self.norm(self.encoder(tokens))
        return slots.mean(1), slots

    def look(self, y: Tensor, H: Tensor, codes: Tensor, real_block: bool | None = None) -> tuple[Tensor, Tensor]:
        """The greedy SOMP pass. Returns per-look features [B, K, N_LOOK_FEATURES] and anchors [B, K, 3].
        `real_block` picks the fp16 real-block products (default: on CUDA) or complex64 (default on the CPU).

        No host synchronization (so that it can be replayed as a CUDA graph): `cholesky_ex` instead of
        `cholesky`, index buffers instead of host tensors, `scatter_` instead of boolean indexing."""
        B, L, M = y.shape
        K, G = self.k_max, self.dictionary.shape[0]
        hh = H @ H.mH  # [B, M, M]; the same for all snapshots since |c| = 1
        load = 1e-2 * hh.diagonal(dim1=-2, dim2=-1).real.mean(-1)
        chol = _cholesky(hh + load[:, None, None] * torch.eye(M, dtype=hh.dtype, device=hh.device))
        Hw = torch.linalg.solve_triangular(chol, H, upper=False)  # [B, M, N] whitened operator
        yw = torch.linalg.solve_triangular(chol, y.transpose(1, 2), upper=False)  # [B, M, L]
        # H_w·diag(c_l), one operator per snapshot, kept once for the atom norms and the refinement
        ops = LowPrecisionOperator.from_factors(Hw, codes, real_block=real_block)
        norms = self._atom_norms(ops) if self.normalize_atoms else None
        energy0 = yw.abs().square().sum((1, 2)).clamp_min(1e-20)  # [B]
        resid, atoms = yw, []
        taken = torch.zeros(B, G, dtype=torch.bool, device=y.device)
        feats, picks = [], []
        log_e_prev = torch.zeros(B, device=y.device)
        for t in range(K):
            z = (Hw.mH @ resid).transpose(1, 2) * codes.conj()  # [B, L, N] back-projected residual
            img = self._image(z, norms, taken, ops.real_block, fused=ops.fused)  # [B, G]
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
        if zr is not None and ops.fused_refine:  # every round in one kernel (ris_model.refine_kernel)
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
        if ops.fused and FUSED_ATOM_NORMS:  # the [B, L·M, 2G] product is never written
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
        one compiled reduction). Scores only rank and describe looks, so fp16's ~0.05 % error is harmless.
        Measured on an H200: the complex64 route with separate squares spent ~45 % of a training step in
        elementwise copies of the intermediates."""
        if real_block:
            zr = torch.view_as_real(z.contiguous()).flatten(-2).to(LOW_PRECISION)  # [B, L, 2N]
            if fused and FUSED_IMAGE:  # Σ_l in the kernel, then the mean and the taken mask
                return (grouped_power(zr, self.dictionary_h_lowp, z.shape[1], norms)[:, 0]
                        / z.shape[1]).masked_fill(taken, 0.0)
            return normalized_image(zr @ self.dictionary_h_lowp, norms, taken)
        return _reduce_image(self._grid_power(z), norms, taken)

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
        chol = _cholesky(gram)
        # two triangular solves rather than cholesky_solve, whose batched CUDA path (MAGMA) cannot be captured
        w = torch.linalg.solve_triangular(chol, A.mH @ rhs, upper=False)
        coef = torch.linalg.solve_triangular(chol.mH, w, upper=True)  # [B, L, t, 1]
        return (A @ coef).squeeze(-1).transpose(1, 2)  # [B, M, L]


def _cholesky(a: Tensor) -> Tensor:
    """Cholesky factor without the host synchronization of `torch.linalg.cholesky`'s error check; every
    matrix factored here is diagonally loaded, hence positive definite."""
    return torch.linalg.cholesky_ex(a, check_errors=False).L


def real_block(m: Tensor) -> Tensor:
    """The real LOW_PRECISION form [..., 2N, 2P] of a complex right factor m [..., N, P], such that
    view_as_real(x).flatten(-2) @ real_block(m) = [re(x·m) | im(x·m)] for complex x [..., N]: rows interleaved
    (re x_n, im x_n), columns [re out | im out]. Written in place in the low precision (stacking fp32 halves
    cost ~10 % of a training step on the H100 profile)."""
    *lead, N, P = m.shape
    block = torch.empty(*lead, N, 2, 2, P, dtype=LOW_PRECISION, device=m.device)
    block[..., 0, 0, :], block[..., 0, 1, :], block[..., 1, 1, :] = m.real, m.imag, m.real
    block[..., 1, 0, :].copy_(m.imag).neg_()
    return block.reshape(*lead, 2 * N, 2 * P)


class LowPrecisionOperator:
    """The per-snapshot operators H_w·diag(c_l), kept once per forward for the grid's atom norms and the
    refinement's many small products (`power`: ‖H_w·diag(c_l)·a‖² for candidates a [B, P, N] → [B, L, P]).

    On CUDA it keeps the operators as a real fp16 block [B, L·M, 2N] (half the bytes of complex64, tensor
    cores, fp32 accumulation; fp16's 2⁻¹¹ rounding changes the norms by ~10⁻⁴, far below the score differences
    the search ranks); on the CPU it keeps the complex64 operators."""

    def __init__(self, ops: Tensor, *, real_block: bool | None = None) -> None:
        """ops: complex [B, L, M, N], the operators of the L snapshots."""
        B, L, M, N = ops.shape
        real_block = ops.is_cuda if real_block is None else real_block
        flat = ops.reshape(B, L * M, N)
        self._setup((B, L, M), torch.view_as_real(flat).flatten(-2).to(LOW_PRECISION) if real_block else flat,
                    real_block)

    @classmethod
    def from_factors(cls, Hw: Tensor, codes: Tensor, *, real_block: bool | None = None) -> LowPrecisionOperator:
        """The operators H_w·diag(c_l) from Hw [B, M, N] and codes [B, L, N] (complex). On the real-block route
        one compiled kernel writes the fp16 rows: the complex64 [B, L, M, N] product (1.2 GB at B = 4,096) is
        never formed."""
        real_block = Hw.is_cuda if real_block is None else real_block
        if not real_block:
            return cls(Hw[:, None] * codes[:, :, None, :], real_block=False)
        op = cls.__new__(cls)
        op._setup((Hw.shape[0], codes.shape[1], Hw.shape[1]),
                  operator_rows(torch.view_as_real(Hw), torch.view_as_real(codes)), True)
        return op

    def _setup(self, shape: tuple[int, int, int], ops: Tensor, real_block: bool) -> None:
        B, L, M = shape
        self.shape = shape
        self.real_block = real_block
        self.ops = ops  # [B, L·M, 2N] fp16 real rows, or complex [B, L·M, N]
        #: the products as the fused ris_model.kernels.grouped_power (B = 4,096 on an H100, `bench/grouped_power.py`,
        #: docs/RESULTS.md): atom norms 4.5 vs 7.1 ms for cuBLAS + a reduction, images 0.54 vs 0.59 ms; where the
        #: one-kernel refinement cannot run, its per-round norms 0.30 vs 0.39 ms and scores 0.09 vs 0.14 ms
        self.fused = self.real_block and fused_available(self.ops, M) and fused_available(self.ops, L)
        #: the whole refinement as one kernel per look (ris_model.refine_kernel), where its shapes allow
        self.fused_refine = FUSED_REFINE and self.real_block and refine_available(self.ops, L, M)

    def power(self, a: Tensor) -> Tensor:
        if not self.real_block:
            B, L, M = self.shape
            return (self.ops @ a.transpose(1, 2)).abs().square().reshape(B, L, M, a.shape[1]).sum(2)
        return self.power_block(real_block(a.transpose(1, 2)))

    def power_block(self, block: Tensor) -> Tensor:
        """‖H_w·diag(c_l)·a_p‖², [B, L, P], for candidates given as their real block [B, 2N, 2P] (real_block
        route only)."""
        B, L, M = self.shape
        if self.fused:
            return grouped_power(self.ops, block, M)
        out = (self.ops @ block).reshape(B, L, M, 2, -1)  # [B, L, M, re/im, P]
        return torch.linalg.vector_norm(out, dim=(2, 3), dtype=torch.float32).square()


@compiled_on_cuda
def operator_rows(hw: Tensor, codes: Tensor) -> Tensor:
    """The real fp16 rows [B, L·M, 2N] (view_as_real layout) of H_w·diag(c_l), from view_as_real factors
    hw [B, M, N, 2] and codes [B, L, N, 2]: the complex products in fp32, rounded once."""
    hr, hi = hw[:, None, :, :, 0], hw[:, None, :, :, 1]  # [B, 1, M, N]
    cr, ci = codes[:, :, None, :, 0], codes[:, :, None, :, 1]  # [B, L, 1, N]
    rows = torch.stack([hr * cr - hi * ci, hr * ci + hi * cr], -1)  # [B, L, M, N, 2]
    B, L, M, N, _ = rows.shape
    return rows.reshape(B, L * M, 2 * N).to(LOW_PRECISION)


def block_power(out: Tensor) -> Tensor:
    """|·|² of the complex results of a real-block product: out [..., 2P] = [re | im] → real [..., P] fp32."""
    return torch.linalg.vector_norm(out.unflatten(-1, (2, -1)), dim=-2, dtype=torch.float32).square()


def candidate_block(cand: Tensor, element_xyz: Tensor, wavenumber: float, fresnel: bool) -> Tensor:
    """real_block(steering(cand)ᵀ) of candidates cand [B, P, 3] = (φ, θ, 1/r): [B, 2N, 2P] in LOW_PRECISION.

    The trigonometry of the angles is done on [B, P] first; then two compiled kernels on CUDA: the phasors'
    cosine and sine planes [B, N, P] (one sine and one cosine per element), and the block's four entries
    from them (a copy). A single kernel for the block evaluated a sine and a cosine for each of the four
    entries of an element: 0.47 ms per refinement round at B = 4,096 on an H100 (`bench/candidate_block.py`;
    1.79 ms eager)."""
    r = 1 / cand[..., 2]
    p = source_position(cand[..., 0], cand[..., 1], r)  # [B, P, 3]
    return block_from_planes(*phasor_planes(p[..., 0], p[..., 1], r, element_xyz, wavenumber, fresnel))


@compiled_on_cuda
def phasor_planes(x_m: Tensor, y_m: Tensor, range_m: Tensor, element_xyz: Tensor, wavenumber: float,
                  fresnel: bool) -> tuple[Tensor, Tensor]:
    """cos and sin of the steering phase, each [B, N, P] fp32 (already scaled by 1/√N), for sources at x, y and
    range [B, P] in meters."""
    N = element_xyz.shape[0]
    phase = phase_at(x_m, y_m, range_m, element_xyz, wavenumber, fresnel=fresnel).transpose(1, 2)  # [B, N, P]
    return torch.cos(phase) / math.sqrt(N), torch.sin(phase) / math.sqrt(N)


@compiled_on_cuda
def block_from_planes(re: Tensor, im: Tensor) -> Tensor:
    """The real block [B, 2N, 2P] (LOW_PRECISION) of the complex matrix re + i·im [B, N, P] (see real_block)."""
    B, N, P = re.shape
    block = torch.stack([torch.stack([re, im], 2), torch.stack([-im, re], 2)], 2)  # [B, N, 2, 2, P]
    return block.reshape(B, 2 * N, 2 * P).to(LOW_PRECISION)


def _reduce_image(power: Tensor, norms: Tensor | None, taken: Tensor) -> Tensor:
    """[B, L, G] powers → the look image [B, G]: normalized by the atom norms, mean over snapshots, 0 at taken."""
    if norms is not None:
        power = power / norms.clamp_min(1e-12)
    return power.mean(1).masked_fill(taken, 0.0)


@compiled_on_cuda
def normalized_image(out: Tensor, norms: Tensor | None, taken: Tensor) -> Tensor:
    """The look image from a real-block grid product out [B, L, 2G] = [re | im] (on CUDA one compiled
    reduction instead of four passes over [B, L, G])."""
    return _reduce_image(out.unflatten(-1, (2, -1)).float().square().sum(-2), norms, taken)
