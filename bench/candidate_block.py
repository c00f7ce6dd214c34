"""Time one refinement round's candidate block (ris_model.accel.lowp.candidate_block) on the GPU: the shipped
two compiled kernels (phasor planes, then the block) against one compiled kernel for the block and eager ops.

    python3 bench/candidate_block.py [--batch 4096] [--reps 100] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable

import torch

from api_schemas import SystemConfig
from ris_model.accel.lowp import LOW_PRECISION, block_from_planes, phasor_planes
from ris_model.physics import element_positions, phase_at


def _one_kernel(x, y, r, e, k0, fresnel):  # noqa: ANN001, ANN202
    """The previous version: one compiled kernel for the whole block (sine and cosine per block entry)."""
    B, P = x.shape
    N = e.shape[0]
    phase = phase_at(x, y, r, e, k0, fresnel=fresnel).transpose(1, 2)
    re, im = torch.cos(phase) / math.sqrt(N), torch.sin(phase) / math.sqrt(N)
    block = torch.stack([torch.stack([re, im], 2), torch.stack([-im, re], 2)], 2)
    return block.reshape(B, 2 * N, 2 * P).to(LOW_PRECISION)


def time_ms(fn: Callable[[], object], reps: int) -> float:
    """Mean CUDA time of fn() over `reps` calls after three warm-up calls (CUDA events)."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    system, dev = SystemConfig(), torch.device("cuda")
    e = element_positions(system, dtype=torch.float32, device=dev)
    k0 = 2 * math.pi / system.wavelength_m
    g = torch.Generator(device=dev).manual_seed(0)
    x, y = (torch.rand(args.batch, 27, generator=g, device=dev) - 0.5 for _ in range(2))
    r = 0.5 + 9.5 * torch.rand(args.batch, 27, generator=g, device=dev)
    one_kernel = torch.compile(_one_kernel, fullgraph=True)
    variants = {
        "shipped_planes_then_block": lambda: block_from_planes(*phasor_planes(x, y, r, e, k0, False)),
        "one_compiled_kernel": lambda: one_kernel(x, y, r, e, k0, False),
        "eager": lambda: _one_kernel(x, y, r, e, k0, False),
    }
    ref = variants["eager"]().float()
    result = {"device": torch.cuda.get_device_name(), "batch": args.batch, "candidates": 27, "ms_per_round": {},
              "max_abs_diff_vs_eager": {}}
    for name, fn in variants.items():
        result["ms_per_round"][name] = round(time_ms(fn, args.reps), 4)
        result["max_abs_diff_vs_eager"][name] = float((fn().float() - ref).abs().max())
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
