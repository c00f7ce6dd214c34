"""A diagnostic job's progress: setup, each training phase, then the checks, with a fraction that only rises
and reaches 1.0 only when the last check is done; one log line per check. Runs a real tiny diagnostic on the
CPU (a few seconds)."""

from __future__ import annotations

import logging
from itertools import groupby
from pathlib import Path

import pytest

from api_schemas import PhaseConfig
from api_schemas import metrics as keys
from ris_model.diagnose.checks import CheckId
from ris_model.train.jobs import CHECKS_PHASE, SETUP_PHASE, run_training_job
from ris_model.train.sinks import MemorySink
from tests.ris_model.diagnose.test_checks import SEED_WEIGHTS, diag_config


def test_progress_phases_appear_in_order_and_the_fraction_reaches_1_only_after_the_checks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    phases = (PhaseConfig(name="k_only", epochs=1, amp=False, loss_weights=SEED_WEIGHTS),
              PhaseConfig(name="joint", epochs=1, amp=False, loss_weights=SEED_WEIGHTS))
    config = diag_config(phases=phases, log_every_steps=2)
    sink = MemorySink()
    with caplog.at_level(logging.INFO, logger="ris_model"):
        result = run_training_job(config, sink=sink, checkpoint_dir=tmp_path, device="cpu")
    assert result.report is not None
    progress = [p for p in sink.points if p.key == keys.PROGRESS_FRACTION]
    assert [phase for phase, _ in groupby(p.phase for p in progress)] == [SETUP_PHASE, "k_only", "joint",
                                                                           CHECKS_PHASE]
    fractions = [p.value for p in progress]
    assert fractions == sorted(fractions), "the fraction must never go back"
    assert all(f < 1.0 for f in fractions[:-1]), "1.0 before the last check was done"
    assert fractions[-1] == pytest.approx(1.0)
    checks = [p.value for p in progress if p.phase == CHECKS_PHASE]
    assert len(checks) == len(CheckId) + 1  # before each check, and after the last
    assert len(set(checks)) == len(checks), "every check advances the fraction"
    lines = [r.getMessage() for r in caplog.records if r.name == "ris_model.diagnose.checks"]
    assert [line.split(" ", 2)[1] for line in lines] == [f"{i}/{len(CheckId)}" for i in range(1, len(CheckId) + 1)]
    assert all(c["name"] in line for c, line in zip(result.report["checks"], lines, strict=True))
