"""The public inference API (SCIENCE.md, "Estimators and evaluation"): ris_model.load_estimator(path, device) →
predict(y, H, codes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ris_model
from ris_model.errors import CheckpointError
from ris_model.inference import Estimator, load_estimator
from ris_model.scenes import generate_scenes
from ris_model.train import checkpoint as ckpt
from tests.factories import malicious_checkpoint_bytes


@pytest.fixture(scope="module")
def estimator(trained_checkpoint: Path) -> Estimator:
    return ris_model.load_estimator(trained_checkpoint, device="cpu")


def _scenes(estimator: Estimator, n: int = 12, seed: int = 7):  # noqa: ANN202
    return generate_scenes(estimator.system, n, generator=torch.Generator().manual_seed(seed), device="cpu")


def test_predict_returns_k_in_range_and_k_sources_in_the_field_of_view(estimator: Estimator) -> None:
    s = estimator.system
    batch = _scenes(estimator)
    scenes = estimator.predict(batch.y, batch.H, batch.codes)
    assert len(scenes) == len(batch)
    for scene in scenes:
        assert isinstance(scene["k"], int) and 1 <= scene["k"] <= s.k_max
        assert len(scene["sources"]) == scene["k"]
        for src in scene["sources"]:
            assert set(src) == {"azimuth_deg", "elevation_deg", "range_m"}
            assert abs(src["azimuth_deg"]) <= s.azimuth_max_deg + 1e-4  # float32 tanh at the edge
            assert abs(src["elevation_deg"]) <= s.elevation_max_deg + 1e-4
            assert s.range_min_m - 1e-4 <= src["range_m"] <= s.range_max_m + 1e-4


def test_numpy_complex128_and_torch_complex64_inputs_give_the_same_answer(estimator: Estimator) -> None:
    batch = _scenes(estimator)
    from_torch = estimator.predict(batch.y, batch.H, batch.codes, snr_db=batch.snr_db)
    from_numpy = estimator.predict(*(t.numpy().astype(np.complex128) for t in (batch.y, batch.H, batch.codes)),
                                   snr_db=batch.snr_db.numpy())
    assert [s["k"] for s in from_numpy] == [s["k"] for s in from_torch]
    for a, b in zip(from_numpy, from_torch, strict=True):
        for sa, sb in zip(a["sources"], b["sources"], strict=True):
            # complex128 → complex64 is the same cast the tensors went through: identical up to float noise
            assert sa == pytest.approx(sb, rel=1e-5, abs=1e-5)


def test_polish_moves_positions_not_counts_and_refine_repeats_it(trained_checkpoint: Path,
                                                                 estimator: Estimator) -> None:
    """`polish` (on by default) refines the network's positions by the local ML search; `refine` applies the
    same search to an unpolished estimate (what the evaluation does to report both)."""
    raw_estimator = load_estimator(trained_checkpoint, device="cpu", polish=False)
    batch = _scenes(estimator, n=6)
    raw = raw_estimator.estimate(batch.y, batch.H, batch.codes)
    assert torch.equal(raw.azimuth, estimator.estimate(batch.y, batch.H, batch.codes, polish=False).azimuth)
    polished = estimator.estimate(batch.y, batch.H, batch.codes)
    assert torch.equal(polished.k, raw.k) and torch.equal(polished.valid, raw.valid)
    assert not torch.equal(polished.azimuth[raw.valid], raw.azimuth[raw.valid])
    assert torch.equal(estimator.refine(batch.y, batch.H, batch.codes, raw).azimuth, polished.azimuth)


def test_order_test_runs_with_snr_and_refine_count_repeats_it(trained_checkpoint: Path,
                                                              estimator: Estimator) -> None:
    """Given snr_db, the count is chosen by penalized likelihood (`order_test`, on by default); without snr_db,
    or with order_test=False, the count is the K-head's; `refine_count` does the same to an unpolished
    estimate; where the chosen count is the head's, the positions are the head count's polished ones."""
    batch = _scenes(estimator, n=8)
    head = estimator.estimate(batch.y, batch.H, batch.codes)
    off = load_estimator(trained_checkpoint, device="cpu", order_test=False)
    assert torch.equal(off.estimate(batch.y, batch.H, batch.codes, snr_db=batch.snr_db).k, head.k)
    tested = estimator.estimate(batch.y, batch.H, batch.codes, snr_db=batch.snr_db)
    assert ((tested.k >= 1) & (tested.k <= estimator.system.k_max)).all()
    assert torch.equal(tested.valid, torch.arange(tested.valid.shape[1]) < tested.k[:, None])
    assert tested.k_log_prob is not None and torch.allclose(tested.k_log_prob.exp().sum(1), torch.ones(8).double())
    same = tested.k == head.k
    torch.testing.assert_close(tested.azimuth[same][tested.valid[same]], head.azimuth[same][head.valid[same]])
    raw = estimator.estimate(batch.y, batch.H, batch.codes, polish=False)
    again = estimator.refine_count(batch.y, batch.H, batch.codes, raw, batch.snr_db)
    assert torch.equal(again.k, tested.k)
    torch.testing.assert_close(again.azimuth[again.valid], tested.azimuth[tested.valid])
    scalar = estimator.estimate(batch.y, batch.H, batch.codes, snr_db=float(batch.snr_db[0]))
    assert scalar.k.shape == head.k.shape, "a scalar SNR applies to every scene"


def test_internal_batching_does_not_change_the_answer(trained_checkpoint: Path, estimator: Estimator) -> None:
    small = load_estimator(trained_checkpoint, device="cpu", batch_size=5)
    batch = _scenes(estimator, n=12)
    a = estimator.estimate(batch.y, batch.H, batch.codes)
    b = small.estimate(batch.y, batch.H, batch.codes)
    assert torch.equal(a.k, b.k)
    # float32 atoms: a batch of another size rounds differently, and the LM's kept steps follow (~1e-4 rad, far
    # below the CRB's ~4e-3 rad)
    torch.testing.assert_close(a.azimuth, b.azimuth, rtol=0, atol=1e-3, msg="batch composition only")


def test_estimator_holds_the_checkpoints_eval_model_weights_in_eval_mode(
        trained_checkpoint: Path, estimator: Estimator) -> None:
    state = ckpt.load_checkpoint(trained_checkpoint)
    assert not estimator.model.training
    for name, value in estimator.model.state_dict().items():
        assert torch.equal(value, state["eval_model"][name]), name


@pytest.mark.parametrize(("which", "shape", "expected"), [
    ("y", (3, 5, 4), "y: expected shape [3, 4, 4]"),
    ("H", (3, 4, 15), "H: expected shape [3, 4, 16]"),
    ("codes", (2, 4, 16), "codes: expected shape [3, 4, 16]"),
    ("y", (4, 4), "y: expected shape [B, 4, 4]"),
])
def test_bad_shapes_raise_value_error_with_expected_and_got(
        estimator: Estimator, which: str, shape: tuple[int, ...], expected: str) -> None:
    batch = _scenes(estimator, n=3)
    args = {"y": batch.y, "H": batch.H, "codes": batch.codes}
    args[which] = torch.zeros(shape, dtype=torch.complex64)
    with pytest.raises(ValueError, match=r"got \[") as info:
        estimator.predict(**args)
    assert expected in str(info.value)


def test_real_input_raises_type_error(estimator: Estimator) -> None:
    batch = _scenes(estimator, n=2)
    with pytest.raises(TypeError, match="complex"):
        estimator.predict(batch.y.real, batch.H, batch.codes)


def test_non_finite_input_raises_value_error(estimator: Estimator) -> None:
    batch = _scenes(estimator, n=2)
    y = batch.y.clone()
    y[0, 0, 0] = complex(float("nan"), 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        estimator.predict(y, batch.H, batch.codes)


def test_malicious_pickle_is_rejected_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    path.write_bytes(malicious_checkpoint_bytes(marker))
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_estimator(path, device="cpu")
    assert not marker.exists(), "the pickle payload was executed"


def test_foreign_checkpoint_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a ris-jobs checkpoint"):
        load_estimator(path, device="cpu")


def test_checkpoint_with_mismatched_weights_is_rejected(trained_checkpoint: Path, tmp_path: Path) -> None:
    state = ckpt.load_checkpoint(trained_checkpoint)
    state["eval_model"] = {"not_a_layer.weight": torch.zeros(1)}
    path = tmp_path / "mismatch.pt"
    ckpt.save_checkpoint(path, {k: v for k, v in state.items() if k != ckpt.FORMAT_KEY})
    with pytest.raises(CheckpointError, match="do not fit the network"):
        load_estimator(path, device="cpu")


def test_importing_ris_model_stays_cheap_and_resolves_load_estimator_lazily() -> None:
    code = ("import sys, ris_model; before = 'torch' in sys.modules; f = ris_model.load_estimator; "
            "print(before, 'torch' in sys.modules, f.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "ris_model.inference"]
