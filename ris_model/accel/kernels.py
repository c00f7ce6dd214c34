"""A fused Triton kernel for the look pass's grouped powers: a real fp16 tensor-core product whose
squared magnitudes are summed over groups of rows inside the kernel, so that the product itself is never
written to memory.

Owns grouped_power and fused_available. Imports torch and, lazily, triton (absent on CPU-only installs).
Products of this shape in the look pass, for real-block operands (see ris_model.model.unrolled.real_block):
- the grid-wide atom norms ‖H_w·diag(c_l)·a(g)‖² = Σ_m |x_{l,m}·d_g|² (rows x = the L·M operator rows, groups
  of M; d = the shared dictionary) and the look images Σ_l |z_l·d_g|² / norm_{l,g} (one group of L rows per
  scene, divided row by row): 4.5 vs 7.1 ms and 0.54 vs 0.59 ms for cuBLAS + a reduction at B = 4,096 on an
  H100 (bench/grouped_power.py, docs/RESULTS.md). Column tiles run fastest, so a row tile is read from HBM
  once and the 2 MB dictionary stays in L2; the loop over K is pipelined;
- the same two with per-scene candidate blocks d, for the refinement where its one-kernel form
  (ris_model.accel.refine_kernel) cannot run.
out[b, r, j] = Σ_{i < group} |x[b, r·group + i] · (d[:, j] + i·d[:, P + j])|² / norms[b, r·group + i, j]
with d = [re | im] columns, fp32 accumulation. `fused_available` says where it runs; elsewhere the callers keep
their torch route (the CPU, group sizes that are not a power of two, or RIS_NO_TRITON=1 in the environment, a
switch for comparing the two routes on a GPU).
Reference: the Triton tutorial "Matrix multiplication" (tiling, tl.dot).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import Tensor

_MAX_GROUP = 64


@functools.cache
def triton_usable() -> bool:
    if os.environ.get("RIS_NO_TRITON"):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def fused_available(x: Tensor, group: int) -> bool:
    """Whether grouped_power runs for operands like x: CUDA (or Triton's CPU interpreter), Triton importable,
    group a power of two ≤ 64."""
    on_device = x.is_cuda or (os.environ.get("TRITON_INTERPRET") == "1")
    return on_device and triton_usable() and 0 < group <= _MAX_GROUP and group & (group - 1) == 0


def grouped_power(x: Tensor, d: Tensor, group: int, norms: Tensor | None = None) -> Tensor:
    """x [B, R·group, K] fp16 rows; d [K, 2P] or [B, K, 2P] fp16, columns [re | im]; norms (optional)
    fp32 [B, R·group, P]. Returns fp32 [B, R, P]: per group of rows, the sum of |x_i·(d_re + i·d_im)|²
    (divided by norms[i] elementwise when given, after clamping it at 1e-12)."""
    plain, tuned = _kernel()
    B, rows, K = x.shape
    P = d.shape[-1] // 2
    R = rows // group
    assert rows == R * group and d.shape[-2] == K, (x.shape, d.shape, group)
    if d.ndim == 2 and B > 1:  # a shared right factor: all scenes' rows form one tall operand (fuller tiles)
        flat_norms = norms.reshape(1, B * rows, P) if norms is not None else None
        return grouped_power(x.reshape(1, B * rows, K), d, group, flat_norms).reshape(B, R, P)
    out = torch.empty(B, R, P, dtype=torch.float32, device=x.device)
    d_batch_stride = d.stride(0) if d.ndim == 3 else 0
    dk, dp = d.stride(-2), d.stride(-1)
    nb = norms if norms is not None else out  # a placeholder pointer when there are no norms
    n_strides = (norms.stride(0), norms.stride(1), norms.stride(2)) if norms is not None else (0, 0, 0)

    def grid(meta: dict) -> tuple[int, int]:  # column tiles fastest: a row tile is read once, then hit in L2
        return (_cdiv(rows, meta["BLOCK_M"]) * _cdiv(P, meta["BLOCK_P"]), B)

    # the autotuning key's row count: powers of two up to 2¹⁶, one class above, so that the grid-wide products
    # (rows = B·L·M) tune once for all large batches instead of once per batch size (seconds each)
    rows_class = min(1 << max(rows - 1, 0).bit_length(), 1 << 16)
    args = (x, d, nb, out, rows, rows_class, P, x.stride(0), x.stride(1), x.stride(2), d_batch_stride, dk, dp,
            *n_strides, out.stride(0), out.stride(1), out.stride(2))
    if tuned is None:
        meta = {"BLOCK_M": max(16, group), "BLOCK_P": 32, "BLOCK_K": 32}
        plain[grid(meta)](*args, K=K, GROUP=group, HAS_NORMS=norms is not None, **meta)
    else:
        tuned[grid](*args, K=K, GROUP=group, HAS_NORMS=norms is not None)
    return out


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _kernel() -> tuple[Any, Any]:
    """(the plain triton.JITFunction, its autotuned wrapper or None under the interpreter), built on first use so
    that CPU-only installs never import Triton."""
    import triton
    import triton.language as tl

    # the winners on an H100 (bench/grouped_power.py: atom norms 128×128, images 128×64, refinement norms
    # 256×32, scores 16×32) and a few neighbours: each config costs a compile when a new shape class is tuned
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_P": bp, "BLOCK_K": bk}, num_warps=w, num_stages=s)
               for bm, bp, bk, w, s in ((16, 32, 32, 4, 3), (64, 64, 32, 4, 3), (128, 64, 32, 4, 4),
                                        (128, 128, 32, 8, 3), (256, 32, 32, 8, 3), (64, 128, 32, 4, 4))]

    def prune(configs: list, named_args: dict, **kwargs: object) -> list:
        """Row tiles hold whole groups and are no taller than the operand (rounded up to 16); the
        interpreter (CPU tests) takes the first that fits."""
        rows, group, P = named_args["rows"], kwargs["GROUP"], named_args["P"]
        fit = [c for c in configs if c.kwargs["BLOCK_M"] >= group and c.kwargs["BLOCK_M"] % group == 0
               and c.kwargs["BLOCK_M"] <= max(16, 1 << (rows - 1).bit_length())
               and c.kwargs["BLOCK_P"] <= max(32, 1 << (P - 1).bit_length())]
        return fit or [c for c in configs if c.kwargs["BLOCK_M"] % group == 0][-1:]

    @triton.jit
    def grouped_power_kernel(x_ptr, d_ptr, n_ptr, o_ptr, rows, rows_class, P,
                             sxb, sxr, sxk, sdb, sdk, sdp, snb, snr, snp, sob, sor, sop,
                             K: tl.constexpr, GROUP: tl.constexpr, HAS_NORMS: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
        # one flat program index, column tiles fastest: consecutive programs share their row tile (read from
        # HBM once, then from L2) and the shared dictionary (2 MB at the default grid) stays in L2 throughout
        n_p = tl.cdiv(P, BLOCK_P)
        pid_m, pid_p, b = tl.program_id(0) // n_p, tl.program_id(0) % n_p, tl.program_id(1)
        r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        j = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        acc_re = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
        acc_im = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
        x_base = x_ptr + b.to(tl.int64) * sxb
        d_base = d_ptr + b.to(tl.int64) * sdb
        for k0 in range(0, K, BLOCK_K):  # a loop (not unrolled), so that Triton pipelines its loads
            k = k0 + tl.arange(0, BLOCK_K)
            xt = tl.load(x_base + r[:, None] * sxr + k[None, :] * sxk,
                         mask=(r[:, None] < rows) & (k[None, :] < K), other=0.0)
            dmask = (k[:, None] < K) & (j[None, :] < P)
            d_re = tl.load(d_base + k[:, None] * sdk + j[None, :] * sdp, mask=dmask, other=0.0)
            d_im = tl.load(d_base + k[:, None] * sdk + (j[None, :] + P) * sdp, mask=dmask, other=0.0)
            acc_re = tl.dot(xt, d_re, acc_re)
            acc_im = tl.dot(xt, d_im, acc_im)
        power = acc_re * acc_re + acc_im * acc_im
        if HAS_NORMS:
            nrm = tl.load(n_ptr + b.to(tl.int64) * snb + r[:, None] * snr + j[None, :] * snp,
                          mask=(r[:, None] < rows) & (j[None, :] < P), other=1.0)
            power = power / tl.maximum(nrm, 1e-12)
        summed = tl.sum(tl.reshape(power, (BLOCK_M // GROUP, GROUP, BLOCK_P)), axis=1)
        g = pid_m * (BLOCK_M // GROUP) + tl.arange(0, BLOCK_M // GROUP)
        tl.store(o_ptr + b.to(tl.int64) * sob + g[:, None] * sor + j[None, :] * sop, summed,
                 mask=(g[:, None] < rows // GROUP) & (j[None, :] < P))

    if os.environ.get("TRITON_INTERPRET") == "1":  # CPU tests: no autotuning (it needs a GPU driver)
        return grouped_power_kernel, None
    return grouped_power_kernel, triton.autotune(configs=configs, key=["rows_class", "P", "K", "GROUP", "HAS_NORMS"],
                                                 prune_configs_by={"early_config_prune": prune})(grouped_power_kernel)
