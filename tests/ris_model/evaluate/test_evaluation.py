"""Evaluation of a checkpoint against the baselines: tables, known answers, JSON, Markdown, plots, CLI.

Tiny: the tiny_config() system (N = 16, M = 4, K_MAX = 3), 40 scenes, SOMP on a 6 × 3 × 2 grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from api_schemas import DataConfig, EvaluationConfig, EvaluationReport
from api_schemas.evaluation import BASELINES, MODEL_METHOD, RAW_MODEL_METHOD, SompGridConfig
from ris_model.cli import main as cli_main
from ris_model.estimators import SourceEstimate
from ris_model.evaluate.evaluation import evaluate, evaluation_scenes
from ris_model.evaluate.plots import render_plots
from ris_model.inference import Estimator, load_estimator
from ris_model.scenes import SceneSource

SMALL_GRID = SompGridConfig(n_azimuth=6, n_elevation=3, n_range=2)


def tiny_eval_config(**overrides: object) -> EvaluationConfig:
    return EvaluationConfig(**{"n_scenes": 40, "somp_grid": SMALL_GRID, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def estimator(trained_checkpoint: Path) -> Estimator:
    return load_estimator(trained_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def report(estimator: Estimator) -> EvaluationReport:
    return evaluate(estimator, tiny_eval_config())


class _TruthEstimator(Estimator):
    """Returns the true sources of the evaluation scenes: every metric has a known answer."""

    def __init__(self, base: Estimator, config: EvaluationConfig) -> None:
        super().__init__(base.model, base.config, device=base.device, polish=False)
        self.scenes = evaluation_scenes(base.system, config.n_scenes, seed=base.config.data.seed,
                                        k_values=config.k_values, device="cpu")

    def estimate(self, y, H, codes, snr_db=None, *, polish=None) -> SourceEstimate:  # noqa: ANN001
        assert torch.equal(y, self.scenes.y), "evaluate must pass the evaluation scenes, in order"
        s = self.scenes
        return SourceEstimate(k=s.k, azimuth=s.azimuth.double(), elevation=s.elevation.double(),
                              range_m=s.range_m.double(), valid=s.mask)


def test_report_has_every_table_with_the_model_and_each_baseline_side_by_side(report: EvaluationReport) -> None:
    assert report.methods == [MODEL_METHOD, *BASELINES]
    assert [t.label for t in report.by_snr][-1] == "all" and len(report.by_snr) == 4
    assert [t.label for t in report.by_k] == ["K = 1", "K = 2", "K = 3"]
    assert len(report.by_range) == 3 and all(t.counts == "sources" for t in report.by_range)
    for table in report.by_snr + report.by_k:
        assert [m.method for m in table.methods] == report.methods
        for m in table.methods:
            if m.n_scenes:
                assert m.k_acc * m.n_scenes == pytest.approx(round(m.k_acc * m.n_scenes), abs=1e-9)  # whole scenes
                assert m.k_acc + m.k_under + m.k_over == pytest.approx(1.0)
    assert {m.method for m in report.by_range[0].methods} == {MODEL_METHOD, RAW_MODEL_METHOD, "somp"}


def test_scene_counts_add_up_over_snr_bins_and_k(report: EvaluationReport) -> None:
    assert report.by_snr[-1].n_scenes == 40
    assert sum(t.n_scenes for t in report.by_snr[:-1]) == 40  # the default bins cover SNR ∈ [-5, 20)
    assert sum(t.n_scenes for t in report.by_k) == 40
    assert sum(map(sum, report.k_confusion.counts)) == 40


def test_count_only_baselines_have_no_geometry_and_the_model_has_crb_ratios(report: EvaluationReport) -> None:
    rows = {m.method: m for m in report.by_snr[-1].methods}
    assert rows["mdl_oracle"].rmse_azimuth_deg is None and rows["mdl_oracle"].f1 is None
    model = rows[MODEL_METHOD]
    assert model.rmse_azimuth_deg is not None and model.rmse_range_m is not None
    crb = report.by_snr[-1].crb
    assert crb is not None and crb.azimuth_deg is not None and crb.azimuth_deg > 0
    assert model.crb_ratio_azimuth == pytest.approx(model.rmse_azimuth_deg / crb.azimuth_deg)
    outliers = model.outlier_share * model.n_matched  # a share of the matched sources
    assert outliers == pytest.approx(round(outliers), abs=1e-9) and round(outliers) <= model.n_matched
    if model.tp_rmse_azimuth_deg is not None:  # the true positives' RMSE never exceeds the tolerance
        assert model.tp_rmse_azimuth_deg <= report.config.tolerances.azimuth_deg
    for table in report.by_range:
        row = next(m for m in table.methods if m.method == MODEL_METHOD)
        assert row.n_matched == 0 or row.outlier_share is not None


def test_perfect_estimator_gets_the_known_answers(estimator: Estimator) -> None:
    config = tiny_eval_config(baselines=(), crb=False)
    rep = evaluate(_TruthEstimator(estimator, config), config)
    overall = rep.by_snr[-1].methods[0]
    assert (overall.k_acc, overall.k_under, overall.k_over) == (1.0, 0.0, 0.0)
    assert (overall.precision, overall.recall, overall.f1) == (1.0, 1.0, 1.0)
    assert overall.rmse_azimuth_deg == pytest.approx(0.0, abs=1e-9)
    assert overall.rmse_range_m == pytest.approx(0.0, abs=1e-9)
    assert overall.outlier_share == 0.0 and overall.tp_rmse_azimuth_deg == pytest.approx(0.0, abs=1e-9)
    diagonal = [rep.k_confusion.counts[t][t + 1] for t in range(len(rep.k_confusion.true_k))]
    assert sum(diagonal) == 40


def test_report_survives_a_json_round_trip(report: EvaluationReport) -> None:
    text = json.dumps(report.model_dump(mode="json"), allow_nan=False)  # strict JSON: no NaN anywhere
    assert EvaluationReport.model_validate_json(text) == report


def test_markdown_has_every_section(report: EvaluationReport) -> None:
    md = report.to_markdown()
    for heading in ("# Evaluation report", "## By SNR", "## By number of sources K", "## By true range",
                    "## K confusion matrix", "| model |", "| somp |", "Median √CRB"):
        assert heading in md


def test_plots_are_png_files(report: EvaluationReport) -> None:
    figures = render_plots(report)
    assert set(figures) == {"k_acc_vs_snr.png", "rmse_vs_snr.png", "k_confusion.png"}
    assert all(data.startswith(b"\x89PNG\r\n\x1a\n") for data in figures.values())


def test_scenes_are_the_models_own_test_pool(estimator: Estimator) -> None:
    cfg = estimator.config
    scenes = evaluation_scenes(cfg.system, 30, seed=cfg.data.seed, k_values=None, device="cpu")
    pool = SceneSource(cfg.system, DataConfig(seed=cfg.data.seed), "cpu").test_scenes(30)
    assert torch.equal(scenes.y, pool.y)


def test_k_values_restrict_the_scenes_and_the_k_table(estimator: Estimator) -> None:
    rep = evaluate(estimator, tiny_eval_config(n_scenes=12, k_values=(2,), baselines=("mdl_measurement",),
                                               crb=False))
    assert [t.label for t in rep.by_k] == ["K = 2"]
    assert rep.by_k[0].n_scenes == 12
    assert sum(rep.k_confusion.counts[0]) == 0 and sum(rep.k_confusion.counts[1]) == 12


def test_k_values_above_k_max_raise_value_error(estimator: Estimator) -> None:
    with pytest.raises(ValueError, match="K_MAX = 3"):
        evaluate(estimator, tiny_eval_config(k_values=(1, 4)))


def test_progress_is_monotonic_and_ends_at_one(estimator: Estimator) -> None:
    seen: list[float] = []
    evaluate(estimator, tiny_eval_config(n_scenes=8, baselines=("somp",), crb=False),
             progress=lambda fraction, stage: seen.append(fraction))
    assert seen == sorted(seen) and seen[-1] == 1.0


def test_cli_evaluate_writes_report_and_plots(trained_checkpoint: Path, tmp_path: Path) -> None:
    config = tmp_path / "eval.json"
    config.write_text(tiny_eval_config(n_scenes=8, baselines=("aic_oracle",), crb=False).model_dump_json())
    out = tmp_path / "out"
    code = cli_main(["evaluate", "--checkpoint", str(trained_checkpoint), "--out", str(out), "--config",
                     str(config), "--device", "cpu"])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "k_acc_vs_snr.png", "rmse_vs_snr.png",
                                              "k_confusion.png"}
    assert EvaluationReport.model_validate_json((out / "report.json").read_text()).methods == [
        MODEL_METHOD, "aic_oracle"]


def test_cli_evaluate_of_a_foreign_file_fails_with_exit_code_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert cli_main(["evaluate", "--checkpoint", str(bad), "--out", str(tmp_path / "o")]) == 1
