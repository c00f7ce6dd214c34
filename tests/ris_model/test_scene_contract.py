"""Generated scenes against the data contract (ARCHITECTURE.md, "The data contract"), written out here in numpy from the
contract's text — not through ris_model.physics — so that a scene generator that builds A, the codes or y in any other
way fails: A's columns are the steering of the labelled (φ, θ, r), the codes are the 2D DFT beams, and every
snapshot y_l lies in the span of H·diag(c_l)·A up to the noise that the scene's SNR allows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from api_schemas import SystemConfig
from ris_model.scenes import SceneBatch, generate_scenes, make_generator

CPU = torch.device("cpu")
#: a non-square RIS (rows ≠ columns) so that a swap of i_h and i_v, or of x and y, shows; SNR high enough that
#: the noise is far below any modelling error
SYSTEM = SystemConfig(n_ris_h=6, n_ris_v=4, n_bs_antennas=8, n_snapshots=9, k_max=3, snr_min_db=50.0,
                      snr_max_db=60.0)


def contract_steering(system: SystemConfig, azimuth: float, elevation: float, range_m: float) -> np.ndarray:
    """a_n(φ,θ,r) = exp(−j·k0·(‖p − e_n‖ − r)) / √N with p = r·(cosθ·sinφ, sinθ, cosθ·cosφ), elements at
    x = (i_h − (N_H−1)/2)·d, y = (i_v − (N_V−1)/2)·d, flat index n = i_v·N_H + i_h
    (ARCHITECTURE.md, "The data contract")."""
    n_h, n_v = system.n_ris_h, system.n_ris_v
    wavelength_m = 299_792_458.0 / system.carrier_hz
    d = system.element_spacing_wavelengths * wavelength_m
    k0 = 2 * math.pi / wavelength_m
    p = range_m * np.array([math.cos(elevation) * math.sin(azimuth), math.sin(elevation),
                            math.cos(elevation) * math.cos(azimuth)])
    a = np.empty(n_h * n_v, dtype=np.complex128)
    for i_v in range(n_v):
        for i_h in range(n_h):
            e = np.array([(i_h - (n_h - 1) / 2) * d, (i_v - (n_v - 1) / 2) * d, 0.0])
            a[i_v * n_h + i_h] = np.exp(-1j * k0 * (np.linalg.norm(p - e) - range_m)) / math.sqrt(n_h * n_v)
    return a


def contract_codes(system: SystemConfig, beams: list[tuple[int, int]]) -> np.ndarray:
    """c[n] = exp(j·2π·(p·i_h/N_H + q·i_v/N_V)) for each (p, q), as rows [L, N]."""
    n_h, n_v = system.n_ris_h, system.n_ris_v
    rows = np.empty((len(beams), n_h * n_v), dtype=np.complex128)
    for row, (p, q) in enumerate(beams):
        for i_v in range(n_v):
            for i_h in range(n_h):
                rows[row, i_v * n_h + i_h] = np.exp(2j * math.pi * (p * i_h / n_h + q * i_v / n_v))
    return rows


@pytest.fixture(scope="module")
def scenes() -> SceneBatch:
    return generate_scenes(SYSTEM, 24, generator=make_generator(2024, CPU), device=CPU)


def test_columns_of_a_are_the_steering_of_the_labelled_sources(scenes: SceneBatch) -> None:
    A = scenes.A.numpy()
    for b in range(len(scenes)):
        k = int(scenes.k[b])
        assert scenes.mask[b].tolist() == [j < k for j in range(SYSTEM.k_max)]
        for j in range(SYSTEM.k_max):
            if j >= k:
                assert not A[b, :, j].any(), "absent slots have zero columns"
                continue
            expected = contract_steering(SYSTEM, float(scenes.azimuth[b, j]), float(scenes.elevation[b, j]),
                                         float(scenes.range_m[b, j]))
            np.testing.assert_allclose(A[b, :, j], expected, atol=2e-5, err_msg=f"scene {b}, source {j}")


def test_labels_are_not_symmetric_in_azimuth_and_elevation(scenes: SceneBatch) -> None:
    # the check above can tell φ from θ only if they differ: they do, by far, in most sources
    diff = (scenes.azimuth - scenes.elevation).abs()[scenes.mask]
    assert float(diff.median()) > math.radians(5.0)


def test_default_codes_are_the_contracts_dft_beams() -> None:
    system = SystemConfig(snr_min_db=50.0, snr_max_db=60.0, k_max=2)  # 12 × 12, L = 16
    batch = generate_scenes(system, 2, generator=make_generator(1, CPU), device=CPU)
    beams = [(p, q) for p in (0, 3, 6, 9) for q in (0, 3, 6, 9)]  # p-major
    expected = contract_codes(system, beams)
    for b in range(2):
        np.testing.assert_allclose(batch.codes[b].numpy(), expected, atol=2e-5)


def test_each_snapshot_lies_in_the_span_of_h_diag_c_a(scenes: SceneBatch) -> None:
    """y_l = H·diag(c_l)·A·s_l + n_l: fitting each s_l by least squares on the K present columns leaves only the
    noise, whose share of Σ_l ‖y_l‖² is about 10^(−SNR/10) ≤ 1e-5 here."""
    shares = _residual_shares(scenes, scenes.A.numpy())
    assert max(shares) < 1e-4, shares


def test_snapshot_fit_fails_for_a_steering_of_swapped_angles(scenes: SceneBatch) -> None:
    # the span check above can fail: with φ and θ swapped in A, the same fit leaves much of y unexplained
    swapped = np.zeros(scenes.A.shape, dtype=np.complex128)
    for b in range(len(scenes)):
        for j in range(int(scenes.k[b])):
            swapped[b, :, j] = contract_steering(SYSTEM, float(scenes.elevation[b, j]), float(scenes.azimuth[b, j]),
                                                 float(scenes.range_m[b, j]))
    assert float(np.median(_residual_shares(scenes, swapped))) > 1e-2


def _residual_shares(scenes: SceneBatch, A: np.ndarray) -> list[float]:
    """Per scene: Σ_l ‖y_l − Φ_l·ŝ_l‖² / Σ_l ‖y_l‖² with Φ_l = H·diag(c_l)·A[:, :K] and ŝ_l its least squares."""
    y, H, codes = (t.numpy().astype(np.complex128) for t in (scenes.y, scenes.H, scenes.codes))
    shares = []
    for b in range(len(scenes)):
        k = int(scenes.k[b])
        residual = 0.0
        for l in range(SYSTEM.n_snapshots):
            phi = H[b] @ (codes[b, l][:, None] * A[b][:, :k])  # [M, K]
            s, *_ = np.linalg.lstsq(phi, y[b, l], rcond=None)
            residual += float(np.linalg.norm(y[b, l] - phi @ s) ** 2)
        shares.append(residual / float(np.linalg.norm(y[b]) ** 2))
    return shares
