"""The look pass's off-grid refinement as one fused Triton kernel per look.

Owns fused_refine and refine_available. Imports torch and, lazily, triton (through ris_model.accel.kernels).
UnrolledOMPBackbone._refine searches `rounds` rounds over 27 candidates around each pick (the cell's
centre ± the step in φ, θ and 1/r, the step halving each round) for the best normalized matched-filter score
    score(a) = Σ_l |aᴴ·z_l|² / ‖H_w·diag(c_l)·a‖².
Its torch route builds each round's candidate steering vectors as an fp16 real block in memory and runs two
products over all scenes (the norms read the whole [B, L·M, 2N] operator again every round). Here one program
per scene runs every round: the candidates, their steering phases (computed in registers, never written), the
operator and back-projection products on tensor cores, the scores and the argmax (the 27 candidates are the
3×3×3 pattern of unrolled._PATCH, row-major over (φ, θ, 1/r) offsets in {−1, 0, 1}, padded to 32). Later
rounds can find the scene's operator (147 KB at the default) in L2. Same arithmetic as the torch route: fp32
positions and phases, fp16 phasors, fp32 accumulation; the first maximal candidate wins, as in torch.argmax.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import torch
from torch import Tensor

from ris_model.accel.kernels import triton_usable

_MAX_ROWS = 256  # L·M rows of one scene (its operator, 147 KB at the default, is re-read from L2 each round)


def refine_available(ops: Tensor, L: int, M: int) -> bool:
    """Whether fused_refine runs for these operands: CUDA (or Triton's CPU interpreter), Triton importable,
    L and M powers of two with 16 ≤ L·M ≤ 256."""
    on_device = ops.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    pow2 = L & (L - 1) == 0 and M & (M - 1) == 0
    return on_device and triton_usable() and pow2 and 16 <= L * M <= _MAX_ROWS


def fused_refine(anchor: Tensor, zr: Tensor, ops: Tensor, element_xyz: Tensor, step: Tensor, lo: Tensor,
                 hi: Tensor, wavenumber: float, fresnel: bool, rounds: int, L: int, M: int,
                 row_block: int | None = None) -> Tensor:
    """The refined anchors [B, 3] (φ, θ radians, 1/r in 1/m), fp32.

    anchor [B, 3] fp32: each pick's grid cell; zr [B, L, 2N] fp16: view_as_real(conj(z)) of the back-projected
    residual (snapshot axis 1); ops [B, L·M, 2N] fp16: the real operator rows of H_w·diag(c_l), snapshot-major;
    element_xyz [N, 3] fp32 meters; step, lo, hi [3] fp32 tensors (the first round's step, the grid's bounds:
    device tensors, so that no value is read on the host and the call can be captured in a CUDA graph).
    row_block: operator rows per inner tile (a multiple of M dividing L·M, ≥ 16); None: autotuned on CUDA,
    the smallest allowed in Triton's interpreter (tests use it to cover both snapshot-product routes)."""
    B, K = zr.shape[0], zr.shape[-1]
    N = element_xyz.shape[0]
    assert ops.shape == (B, L * M, K) and K == 2 * N and zr.shape == (B, L, K), (ops.shape, zr.shape, N)
    assert ops.stride(-1) == 1 and zr.stride(-1) == 1
    plain, tuned = _kernel()
    anchor, element_xyz = anchor.float().contiguous(), element_xyz.float().contiguous()
    bounds = torch.stack([step, lo, hi]).float().contiguous()  # [3, 3]
    out = torch.empty_like(anchor)
    args = (anchor, out, ops, zr, element_xyz, bounds, ops.stride(0), ops.stride(1), zr.stride(0), zr.stride(1),
            float(wavenumber), 1 / math.sqrt(N))
    consts = {"K": K, "L": L, "M": M, "ROUNDS": rounds, "FRESNEL": bool(fresnel)}
    if tuned is None or row_block is not None:
        rb = row_block or max(16, M)
        assert rb % M == 0 and (L * M) % rb == 0 and rb >= 16, (rb, L, M)
        plain[(B,)](*args, **consts, BLOCK_K=32, ROW_BLOCK=rb)
    else:
        tuned[(B,)](*args, **consts)
    return out


@functools.cache
def _kernel() -> tuple[Any, Any]:
    """(the plain triton.JITFunction, its autotuned wrapper or None under the interpreter)."""
    import triton
    import triton.language as tl

    @triton.jit
    def refine_kernel(anchor_ptr, out_ptr, x_ptr, z_ptr, e_ptr, bounds_ptr, sxb, sxr, szb, szr, k0, inv_sqrt_n,
                      K: tl.constexpr, L: tl.constexpr, M: tl.constexpr, ROUNDS: tl.constexpr,
                      FRESNEL: tl.constexpr, BLOCK_K: tl.constexpr, ROW_BLOCK: tl.constexpr):
        # Each round walks the scene's operator rows in tiles of ROW_BLOCK (= LS snapshots × M antennas): a
        # smaller tile needs fewer registers, so that more programs share an SM (the autotuner picks; on an
        # H100 one 256-row tile won). The score Σ_l |z_l·a|² / norm_l is a sum over snapshots, so each tile
        # adds its snapshots' share.
        LS: tl.constexpr = ROW_BLOCK // M
        b = tl.program_id(0).to(tl.int64)
        p = tl.arange(0, 32)  # candidate index, 27 used
        valid = p < 27
        off_phi = (p // 9 - 1).to(tl.float32)
        off_el = ((p // 3) % 3 - 1).to(tl.float32)
        off_ir = (p % 3 - 1).to(tl.float32)
        a_phi = tl.load(anchor_ptr + b * 3)
        a_el = tl.load(anchor_ptr + b * 3 + 1)
        a_ir = tl.load(anchor_ptr + b * 3 + 2)
        s_phi, s_el, s_ir = tl.load(bounds_ptr), tl.load(bounds_ptr + 1), tl.load(bounds_ptr + 2)
        lo_phi, lo_el, lo_ir = tl.load(bounds_ptr + 3), tl.load(bounds_ptr + 4), tl.load(bounds_ptr + 5)
        hi_phi, hi_el, hi_ir = tl.load(bounds_ptr + 6), tl.load(bounds_ptr + 7), tl.load(bounds_ptr + 8)
        rows = tl.arange(0, ROW_BLOCK)
        lz = tl.arange(0, LS)
        for _ in range(ROUNDS):  # loops, not unrolled: unrolled rounds × row tiles took minutes to compile
            c_phi = tl.minimum(tl.maximum(a_phi + off_phi * s_phi, lo_phi), hi_phi)
            c_el = tl.minimum(tl.maximum(a_el + off_el * s_el, lo_el), hi_el)
            c_ir = tl.minimum(tl.maximum(a_ir + off_ir * s_ir, lo_ir), hi_ir)
            r = 1.0 / c_ir  # source_position: r·(cosθ·sinφ, sinθ, ·)
            xs = r * tl.cos(c_el) * tl.sin(c_phi)
            ys = r * tl.sin(c_el)
            score = tl.zeros((32,), dtype=tl.float32)
            for r0 in range(0, L * M, ROW_BLOCK):
                acc_re = tl.zeros((ROW_BLOCK, 32), dtype=tl.float32)
                acc_im = tl.zeros((ROW_BLOCK, 32), dtype=tl.float32)
                zac_re = tl.zeros((LS, 32), dtype=tl.float32)
                zac_im = tl.zeros((LS, 32), dtype=tl.float32)
                for kk in range(0, K, BLOCK_K):
                    k = kk + tl.arange(0, BLOCK_K)  # real row k = 2n + part (part 0: re, 1: im of element n)
                    kmask = k < K
                    n = k // 2
                    ex = tl.load(e_ptr + n * 3, mask=kmask, other=0.0)
                    ey = tl.load(e_ptr + n * 3 + 1, mask=kmask, other=0.0)
                    e2 = ex * ex + ey * ey
                    proj = ex[:, None] * xs[None, :] + ey[:, None] * ys[None, :]  # [BLOCK_K, 32], phase_at
                    rr = r[None, :]
                    if FRESNEL:
                        u = proj / rr
                        delta = -u + (e2[:, None] - u * u) / (2.0 * rr)
                    else:
                        dist = tl.sqrt(tl.maximum(rr * rr - 2.0 * proj + e2[:, None], 0.0))
                        delta = (e2[:, None] - 2.0 * proj) / (dist + rr)
                    phase = -k0 * delta
                    phase = phase - 6.283185307179586 * tl.floor(phase * 0.15915494309189535 + 0.5)  # [−π, π]
                    cos = tl.cos(phase) * inv_sqrt_n
                    sin = tl.sin(phase) * inv_sqrt_n
                    even = ((k % 2) == 0)[:, None]
                    d_re = tl.where(even, cos, -sin).to(tl.float16)  # unrolled.real_block of the steering
                    d_im = tl.where(even, sin, cos).to(tl.float16)
                    xt = tl.load(x_ptr + b * sxb + (r0 + rows)[:, None] * sxr + k[None, :], mask=kmask[None, :],
                                 other=0.0)
                    acc_re = tl.dot(xt, d_re, acc_re)
                    acc_im = tl.dot(xt, d_im, acc_im)
                    zt = tl.load(z_ptr + b * szb + (r0 // M + lz)[:, None] * szr + k[None, :], mask=kmask[None, :],
                                 other=0.0)
                    if LS >= 16:  # a tensor-core tile
                        zac_re = tl.dot(zt, d_re, zac_re)
                        zac_im = tl.dot(zt, d_im, zac_im)
                    else:  # too few snapshots for one: products and a sum (fp32, from the same fp16 operands)
                        zf = zt.to(tl.float32)[:, :, None]
                        zac_re += tl.sum(zf * d_re.to(tl.float32)[None, :, :], axis=1)
                        zac_im += tl.sum(zf * d_im.to(tl.float32)[None, :, :], axis=1)
                norms = tl.sum(tl.reshape(acc_re * acc_re + acc_im * acc_im, (LS, M, 32)), axis=1)  # [LS, 32]
                score += tl.sum((zac_re * zac_re + zac_im * zac_im) / tl.maximum(norms, 1e-12), axis=0)
            score = tl.where(valid, score, float("-inf"))
            best = tl.argmax(score, 0)
            pick = valid & (p == best)
            found = tl.sum(pick.to(tl.int32), 0) > 0  # an all-NaN score row keeps its anchor
            a_phi = tl.where(found, tl.sum(tl.where(pick, c_phi, 0.0), 0), a_phi)
            a_el = tl.where(found, tl.sum(tl.where(pick, c_el, 0.0), 0), a_el)
            a_ir = tl.where(found, tl.sum(tl.where(pick, c_ir, 0.0), 0), a_ir)
            s_phi, s_el, s_ir = s_phi * 0.5, s_el * 0.5, s_ir * 0.5
        tl.store(out_ptr + b * 3, a_phi)
        tl.store(out_ptr + b * 3 + 1, a_el)
        tl.store(out_ptr + b * 3 + 2, a_ir)

    if os.environ.get("TRITON_INTERPRET") == "1":  # CPU tests: no autotuning (it needs a GPU driver)
        return refine_kernel, None
    configs = [triton.Config({"BLOCK_K": bk, "ROW_BLOCK": rb}, num_warps=w, num_stages=st)
               for rb, bk, w, st in ((256, 32, 8, 2), (128, 32, 4, 2), (64, 32, 4, 2))]  # 256 won on an H100

    def prune(configs: list, named_args: dict, **kwargs: object) -> list:
        """Row tiles that hold whole snapshots and divide the scene's L·M rows."""
        L, M = kwargs["L"], kwargs["M"]
        return [c for c in configs if c.kwargs["ROW_BLOCK"] % M == 0 and (L * M) % c.kwargs["ROW_BLOCK"] == 0]

    tuned = triton.autotune(configs=configs, key=["K", "L", "M", "ROUNDS", "FRESNEL"],
                            prune_configs_by={"early_config_prune": prune})(refine_kernel)
    return refine_kernel, tuned
