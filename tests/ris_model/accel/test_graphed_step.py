"""ris_model.accel.graphed_step: the CUDA-graph replay of forward + loss + backward equals the eager step.
CUDA only (run on the device machine: bench/gpu_speed_quick.sh); on the CPU the trainer never graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from ris_model.losses import TERMS, compute_loss
from ris_model.scenes import generate_scenes, make_generator
from ris_model.spectral import jacobi_eigh
from ris_model.train.sinks import NullSink
from ris_model.train.trainer import Trainer
from tests.ris_model.conftest import make_model, tiny_config, tiny_phase

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (device machine)")


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("amp", [False, True])
def test_graphed_step_replays_the_eager_step(amp: bool) -> None:
    config = tiny_config(phases=(tiny_phase(amp=amp),))
    trainer = Trainer(config, make_model(config), NullSink(), "cuda", checkpoint_dir=Path("/nonexistent"))
    model, weights = trainer.model.train(), config.phases[0].loss_weights
    for seed in (1, 2, 3):  # capture on the first batch, replay on the others
        batch = generate_scenes(config.system, config.data.batch_size,
                                generator=make_generator(seed, torch.device("cuda")), device="cuda")
        model.zero_grad(set_to_none=True)
        graphed = trainer.graphed.run(batch, weights, autocast=amp)
        assert graphed is not None, trainer.graphed.disabled_reason
        res, k_logits = graphed
        res.total.backward()
        graphed_grads = _grads(model)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = model(batch.y, batch.H, batch.codes)
            eager = compute_loss(out, batch, weights, config.system)
        eager.total.backward()
        assert_close(res.total, eager.total, rtol=1e-5, atol=1e-6)
        for name in TERMS:
            assert_close(res.terms[name], eager.terms[name].detach(), rtol=1e-5, atol=1e-6, msg=name)
        assert_close(k_logits, out.k_logits.detach(), rtol=1e-5, atol=1e-5)
        assert torch.equal(res.assignment, eager.assignment)
        eager_grads = _grads(model)
        assert graphed_grads.keys() == eager_grads.keys()
        for name, g in eager_grads.items():
            assert_close(graphed_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert trainer.graphed.captures == 1


def test_trainer_fits_through_the_graphed_step(tmp_path: Path) -> None:
    config = tiny_config(phases=(tiny_phase(epochs=2),))
    trainer = Trainer(config, make_model(config), NullSink(), "cuda", checkpoint_dir=tmp_path)
    result = trainer.fit()
    assert trainer.graphed.disabled_reason is None and trainer.graphed.captures == 1
    assert result.nonfinite_total == 0 and result.final_checkpoint is not None


def test_jacobi_on_cuda_matches_lapack() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    F = torch.randn(4096, 144, 5, generator=gen, dtype=torch.complex128, device="cuda")
    A = F.mH @ F
    eigs, V = jacobi_eigh(A)
    ref = torch.linalg.eigvalsh(A)
    scale = ref.abs().amax(-1, keepdim=True)
    assert_close(eigs.sort(-1).values / scale, ref / scale, rtol=0, atol=1e-13)
    assert_close(V.mH @ V, torch.eye(5, dtype=V.dtype, device="cuda").expand_as(V), rtol=0, atol=1e-13)
