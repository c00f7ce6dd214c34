"""The look pass's low-precision operators: complex products as real fp16 tensor-core blocks.

Owns LOW_PRECISION, FusedRoutes, real_block, LowPrecisionOperator and the compiled helpers that build fp16
blocks (operator rows, candidate blocks) and reduce their products (block powers, look images). On CUDA the
operators are kept as a real fp16 block (half the bytes of complex64, tensor cores, fp32 accumulation); on
the CPU as complex64. Which fused Triton kernels run is an argument (`FusedRoutes`), so that two routes can
be compared in one process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ris_model.accel.cuda_graphs import compiled_on_cuda
from ris_model.accel.kernels import fused_available, grouped_power
from ris_model.accel.refine_kernel import refine_available
from ris_model.physics import phase_at, source_position

#: CUDA products of the look pass: fp16 (2⁻¹¹ rounding) rather than bf16 (2⁻⁸) at the same tensor-core speed;
#: every operand is unit-scale (whitened operators, unit-norm atoms), far inside fp16's range
LOW_PRECISION = torch.float16


@dataclass(frozen=True)
class FusedRoutes:
    """Which products of the look pass run as fused Triton kernels where those can run (else cuBLAS and a
    torch reduction): the grid-wide atom norms, the look images, and every refinement round of a look in one
    kernel (ris_model.accel.refine_kernel). All on by default; `FusedRoutes.none()` is the plain torch route."""

    atom_norms: bool = True
    image: bool = True
    refine: bool = True

    @classmethod
    def none(cls) -> FusedRoutes:
        return cls(atom_norms=False, image=False, refine=False)


#: every fused route on (the default)
ALL_FUSED = FusedRoutes()


def real_block(m: Tensor) -> Tensor:
    """The real LOW_PRECISION form [..., 2N, 2P] of a complex right factor m [..., N, P], such that
    view_as_real(x).flatten(-2) @ real_block(m) = [re(x·m) | im(x·m)] for complex x [..., N]: rows interleaved
    (re x_n, im x_n), columns [re out | im out]. Written in place in the low precision: no fp32 halves are
    stacked and converted."""
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

    def __init__(self, ops: Tensor, *, real_block: bool | None = None, routes: FusedRoutes = ALL_FUSED) -> None:
        """ops: complex [B, L, M, N], the operators of the L snapshots."""
        B, L, M, N = ops.shape
        real_block = ops.is_cuda if real_block is None else real_block
        flat = ops.reshape(B, L * M, N)
        self._setup((B, L, M), torch.view_as_real(flat).flatten(-2).to(LOW_PRECISION) if real_block else flat,
                    real_block, routes)

    @classmethod
    def from_factors(cls, Hw: Tensor, codes: Tensor, *, real_block: bool | None = None,
                     routes: FusedRoutes = ALL_FUSED) -> LowPrecisionOperator:
        """The operators H_w·diag(c_l) from Hw [B, M, N] and codes [B, L, N] (complex). On the real-block route
        one compiled kernel writes the fp16 rows: the complex64 [B, L, M, N] product (1.2 GB at B = 4,096) is
        never formed."""
        real_block = Hw.is_cuda if real_block is None else real_block
        if not real_block:
            return cls(Hw[:, None] * codes[:, :, None, :], real_block=False, routes=routes)
        op = cls.__new__(cls)
        op._setup((Hw.shape[0], codes.shape[1], Hw.shape[1]),
                  operator_rows(torch.view_as_real(Hw), torch.view_as_real(codes)), True, routes)
        return op

    def _setup(self, shape: tuple[int, int, int], ops: Tensor, real_block: bool, routes: FusedRoutes) -> None:
        B, L, M = shape
        self.shape = shape
        self.real_block = real_block
        self.ops = ops  # [B, L·M, 2N] fp16 real rows, or complex [B, L·M, N]
        self.routes = routes
        #: the products as the fused ris_model.accel.kernels.grouped_power (B = 4,096 on an H100,
        #: `bench/grouped_power.py`, docs/RESULTS.md): atom norms 4.5 vs 7.1 ms for cuBLAS + a reduction, images
        #: 0.54 vs 0.59 ms; where the one-kernel refinement cannot run, its per-round norms 0.30 vs 0.39 ms and
        #: scores 0.09 vs 0.14 ms
        self.fused = self.real_block and fused_available(self.ops, M) and fused_available(self.ops, L)
        #: the whole refinement as one kernel per look (ris_model.accel.refine_kernel), where its shapes allow
        self.fused_refine = routes.refine and self.real_block and refine_available(self.ops, L, M)

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
    from them (a copy), so that each element costs one sine and one cosine rather than one of each per entry
    (`bench/candidate_block.py` times the forms)."""
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


def reduce_image(power: Tensor, norms: Tensor | None, taken: Tensor) -> Tensor:
    """[B, L, G] powers → the look image [B, G]: normalized by the atom norms, mean over snapshots, 0 at taken."""
    if norms is not None:
        power = power / norms.clamp_min(1e-12)
    return power.mean(1).masked_fill(taken, 0.0)


@compiled_on_cuda
def normalized_image(out: Tensor, norms: Tensor | None, taken: Tensor) -> Tensor:
    """The look image from a real-block grid product out [B, L, 2G] = [re | im] (on CUDA one compiled
    reduction instead of four passes over [B, L, G])."""
    return reduce_image(out.unflatten(-1, (2, -1)).float().square().sum(-2), norms, taken)
