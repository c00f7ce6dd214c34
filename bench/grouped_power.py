"""The look pass's four grouped-power products at the default sizes: the torch route (fp16 tensor-core product
written out, then a norm reduction) against the fused Triton kernel (ris_model.accel.kernels); and one look's whole
refinement (all rounds): the per-round route (candidate blocks + the two fused products) against the one-kernel
route (ris_model.accel.refine_kernel). Not a test.

    python3 bench/grouped_power.py [--batch 4096] [--reps 20] [--out var/bench-grouped-power.json]

Prints a table and writes JSON (ms per call, CUDA events, after a warm-up that includes autotuning).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from candidate_block import time_ms  # noqa: E402  (bench/candidate_block.py, the same folder)

from api_schemas import ModelConfig, SystemConfig  # noqa: E402
from ris_model.accel import kernels, refine_kernel  # noqa: E402
from ris_model.accel.kernels import grouped_power  # noqa: E402
from ris_model.accel.lowp import (  # noqa: E402
    LOW_PRECISION,
    LowPrecisionOperator,
    block_power,
    normalized_image,
)
from ris_model.model.unrolled import UnrolledOMPBackbone  # noqa: E402


def _tuned(use: str) -> object:
    """The autotuned kernel of a use (its best_config is the one picked for the last shape it ran)."""
    return (refine_kernel._kernel() if use == "refine_look" else kernels._kernel())[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("var/bench-grouped-power.json"))
    args = parser.parse_args()
    system, model = SystemConfig(), ModelConfig()
    B, L, M, N = args.batch, system.n_snapshots, system.n_bs_antennas, system.n_ris
    G, P = model.grid_azimuth * model.grid_elevation * model.grid_inv_range, 27
    dev = torch.device("cuda")

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=dev).to(LOW_PRECISION)

    ops, z = rand(B, L * M, 2 * N), rand(B, L, 2 * N)
    dictionary, block = rand(2 * N, 2 * G), rand(B, 2 * N, 2 * P)
    norms_grid = torch.rand(B, L, G, device=dev) + 0.5
    norms_cand = torch.rand(B, L, P, device=dev) + 0.5
    taken = torch.zeros(B, G, dtype=torch.bool, device=dev)

    def norms_torch(d: torch.Tensor) -> torch.Tensor:  # LowPrecisionOperator.power_block / _atom_norms
        out = (ops @ d).reshape(B, L, M, 2, -1)
        return torch.linalg.vector_norm(out, dim=(2, 3), dtype=torch.float32).square()

    uses = {
        "atom_norms": (lambda: norms_torch(dictionary), lambda: grouped_power(ops, dictionary, M)),
        "image": (lambda: normalized_image(z @ dictionary, norms_grid, taken),
                  lambda: grouped_power(z, dictionary, L, norms_grid)),
        "refine_norms": (lambda: norms_torch(block), lambda: grouped_power(ops, block, M)),
        "refine_score": (lambda: (block_power(z @ block) / norms_cand.clamp_min(1e-12)).sum(1),
                         lambda: grouped_power(z, block, L, norms_cand)),
    }
    net = UnrolledOMPBackbone(system, model).to(dev)
    operator = LowPrecisionOperator(torch.randn(B, L, M, N, dtype=torch.complex64, device=dev))
    z_complex = torch.randn(B, L, N, dtype=torch.complex64, device=dev)
    anchor = net.anchors[torch.randint(0, G, (B,), device=dev)]

    def refine(one_kernel: bool) -> torch.Tensor:
        operator.fused_refine = one_kernel
        return net._refine(anchor, z_complex, operator)

    uses["refine_look"] = (lambda: refine(False), lambda: refine(True))
    agree = (refine(False) == refine(True)).all(-1).float().mean().item()
    print(f"refinement: one-kernel route picks the per-round route's anchor in {agree:.4f} of scenes")
    rows = [{"use": "refine_look_same_anchor_fraction", "value": agree}]
    for name, (plain, fused) in uses.items():
        rows.append({"use": name, "torch_ms": time_ms(plain, args.reps), "fused_ms": time_ms(fused, args.reps),
                     "fused_config": str(_tuned(name).best_config)})
        print(f"{name:>14} torch {rows[-1]['torch_ms']:8.3f} ms   fused {rows[-1]['fused_ms']:8.3f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "batch": B, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
