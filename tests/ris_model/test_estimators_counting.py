"""ris_model.estimators counting: Wax–Kailath MDL/AIC, the dual Gram form, oracle-array and R_yy counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from api_schemas import SystemConfig
from ris_model.estimators import aic, count_sources, mdl, measurement_counts, oracle_array_counts, sample_eigenvalues
from ris_model.scenes import generate_scenes

C64 = torch.complex64


def ula_snapshots(n_sensors: int, angles_deg: list[float], snr_db: float, n_snapshots: int, n_trials: int,
                  gen: torch.Generator) -> torch.Tensor:
    """Textbook far-field half-wavelength ULA, equal-power uncorrelated sources, white noise:
    complex [n_trials, T, n] (rows are snapshots); SNR per sensor per source."""
    m = torch.arange(n_sensors, dtype=torch.float64)
    theta = torch.deg2rad(torch.tensor(angles_deg, dtype=torch.float64))
    A = torch.polar(torch.ones(n_sensors, len(angles_deg), dtype=torch.float64),
                    math.pi * m[:, None] * theta.sin()[None]).to(C64)  # [n, K], |a_m| = 1
    s = torch.randn(n_trials, n_snapshots, len(angles_deg), generator=gen, dtype=C64) * 10 ** (snr_db / 20)
    w = torch.randn(n_trials, n_snapshots, n_sensors, generator=gen, dtype=C64)
    return s @ A.T + w


@pytest.mark.parametrize("angles_deg", [[10.0], [-20.0, 15.0], [-40.0, 0.0, 30.0]])
def test_mdl_ula_far_field_white_noise_many_snapshots_gives_true_count(angles_deg: list[float],
                                                                       gen: torch.Generator) -> None:
    x = ula_snapshots(10, angles_deg, snr_db=5.0, n_snapshots=500, n_trials=20, gen=gen)  # T ≫ N
    assert count_sources(x, method="mdl").tolist() == [len(angles_deg)] * 20


@pytest.mark.parametrize("angles_deg", [[10.0], [-20.0, 15.0], [-40.0, 0.0, 30.0]])
def test_aic_ula_far_field_mostly_right_and_never_under(angles_deg: list[float], gen: torch.Generator) -> None:
    # AIC is not consistent: it keeps a non-vanishing probability of overestimating (Wax & Kailath 1985)
    x = ula_snapshots(10, angles_deg, snr_db=5.0, n_snapshots=500, n_trials=40, gen=gen)
    k = count_sources(x, method="aic")
    assert bool((k >= len(angles_deg)).all())
    assert float((k == len(angles_deg)).float().mean()) >= 0.8


def test_mdl_noise_only_gives_zero(gen: torch.Generator) -> None:
    x = torch.randn(20, 1000, 8, generator=gen, dtype=C64)
    assert count_sources(x, method="mdl").tolist() == [0] * 20


def test_mdl_and_aic_on_exact_eigenvalues() -> None:
    # equal noise eigenvalues make the likelihood term vanish for k ≥ 2: both criteria pick the smallest such k
    eigs = torch.tensor([[10.0, 5.0, 1.0, 1.0, 1.0, 1.0], [3.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    assert mdl(eigs, 100).tolist() == [2, 1]
    assert aic(eigs, 100).tolist() == [2, 1]
    assert mdl(eigs.flip(-1), 100).tolist() == [2, 1], "input order does not matter"


def test_dual_gram_eigenvalues_equal_primal_nonzero_eigenvalues(gen: torch.Generator) -> None:
    T, n = 6, 20
    x = torch.randn(3, T, n, generator=gen, dtype=torch.complex128)
    dual, count = sample_eigenvalues(x)
    primal = torch.linalg.eigvalsh(x.transpose(1, 2) @ x.conj() / T).flip(-1)[:, :T]
    assert count == n and dual.shape == (3, T)
    assert_close(dual * n / T, primal, rtol=1e-10, atol=1e-12, msg="same non-zero spectrum up to the scale n/T")


def test_oracle_array_mdl_counts_our_scenes_at_high_snr() -> None:
    system = SystemConfig(snr_min_db=15.0, snr_max_db=20.0)
    batch = generate_scenes(system, 200, generator=torch.Generator().manual_seed(11), device="cpu")
    k = oracle_array_counts(batch, generator=torch.Generator().manual_seed(12), method="mdl")
    assert float((k == batch.k).float().mean()) >= 0.97


def test_measurement_counts_stay_in_range() -> None:
    system = SystemConfig()
    batch = generate_scenes(system, 32, generator=torch.Generator().manual_seed(13), device="cpu")
    k = measurement_counts(batch.y, method="aic")
    assert k.dtype == torch.long and bool(((k >= 0) & (k < system.n_bs_antennas)).all())


def test_unknown_criterion_raises() -> None:
    with pytest.raises(ValueError, match="'mdl' or 'aic'"):
        count_sources(torch.zeros(1, 4, 3, dtype=C64), method="bic")  # type: ignore[arg-type]


def test_eigenvalues_of_wrong_rank_raise() -> None:
    with pytest.raises(ValueError, match=r"\[B, n\]"):
        mdl(torch.ones(5), 10)
