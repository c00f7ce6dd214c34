"""classify_failure: the one place that maps an exception to a FailureReason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from api_schemas import FailureReason, TrainingJobConfig
from ris_model.errors import CheckpointError, NonFiniteAbort, NonFiniteAttribution
from server.store.errors import LeaseLost
from worker.failures import TrainerFailed, UserInputRejected, classify_failure, failure_message, traceback_tail


def _validation_error() -> ValidationError:
    try:
        TrainingJobConfig.model_validate({"data": {"batch_size": 0}})
    except ValidationError as exc:
        return exc
    raise AssertionError("config should not validate")


def _nonfinite_abort() -> NonFiniteAbort:
    return NonFiniteAbort("20 consecutive non-finite steps", NonFiniteAttribution("k_only", 0, 20, "loss", ["k"]))


def _wrapped(exc: BaseException) -> TrainerFailed:
    """As the task wraps an exception that escaped run_training_job."""
    try:
        raise TrainerFailed(exc) from exc
    except TrainerFailed as wrapped:
        return wrapped


def test_classify_nonfinite_abort_from_trainer_is_nonfinite_abort() -> None:
    assert classify_failure(_wrapped(_nonfinite_abort())) is FailureReason.NONFINITE_ABORT


def test_classify_torch_out_of_memory_is_oom() -> None:
    assert classify_failure(_wrapped(torch.OutOfMemoryError("CUDA out of memory"))) is FailureReason.OOM


def test_classify_cuda_out_of_memory_alias_is_oom() -> None:
    assert classify_failure(_wrapped(torch.cuda.OutOfMemoryError("CUDA out of memory"))) is FailureReason.OOM


def test_classify_host_memory_error_is_oom() -> None:
    assert classify_failure(MemoryError()) is FailureReason.OOM


def test_classify_stored_config_validation_error_is_user_config() -> None:
    assert classify_failure(_validation_error()) is FailureReason.USER_CONFIG


def test_classify_validation_error_inside_trainer_is_training_error() -> None:
    assert classify_failure(_wrapped(_validation_error())) is FailureReason.TRAINING_ERROR


def test_classify_checkpoint_error_is_training_error() -> None:
    assert classify_failure(_wrapped(CheckpointError("truncated"))) is FailureReason.TRAINING_ERROR


@pytest.mark.parametrize("exc", [RuntimeError("shape mismatch"), ValueError("bad"), ZeroDivisionError()])
def test_classify_other_trainer_exception_is_training_error(exc: Exception) -> None:
    assert classify_failure(_wrapped(exc)) is FailureReason.TRAINING_ERROR


def test_classify_soft_time_limit_is_timeout() -> None:
    assert classify_failure(SoftTimeLimitExceeded()) is FailureReason.TIMEOUT
    assert classify_failure(_wrapped(SoftTimeLimitExceeded())) is FailureReason.TIMEOUT


def test_classify_store_failure_inside_trainer_is_internal() -> None:
    db_error = OperationalError("INSERT", {}, Exception("disk I/O error"))
    assert classify_failure(_wrapped(db_error)) is FailureReason.INTERNAL
    assert classify_failure(_wrapped(LeaseLost("j1"))) is FailureReason.INTERNAL


def test_classify_exception_outside_trainer_is_internal() -> None:
    assert classify_failure(RuntimeError("bug in the task body")) is FailureReason.INTERNAL


def test_failure_message_names_the_trainer_exception() -> None:
    assert failure_message(_wrapped(CheckpointError("truncated file"))) == "CheckpointError: truncated file"


def test_failure_message_of_config_error_lists_field_paths() -> None:
    message = failure_message(_validation_error())
    assert message.startswith("ValidationError: invalid stored config: data.batch_size")


def test_traceback_tail_is_bounded() -> None:
    assert len(traceback_tail(_wrapped(RuntimeError("deep " * 5000)))) <= 4000


def test_traceback_tail_shows_the_trainer_exception() -> None:
    assert traceback_tail(_wrapped(RuntimeError("boom"))).rstrip().endswith("RuntimeError: boom")


def test_rejected_user_input_is_user_config_with_its_own_message() -> None:
    try:
        raise UserInputRejected("the checkpoint to evaluate was rejected: bad file") from CheckpointError("bad file")
    except UserInputRejected as exc:
        assert classify_failure(exc) == FailureReason.USER_CONFIG
        assert failure_message(exc) == "the checkpoint to evaluate was rejected: bad file"


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EROFS", "ENOTDIR", "EEXIST", "EACCES", "EFBIG"])
def test_artifact_storage_oserror_is_internal_with_a_clear_message(errno_name: str) -> None:
    import errno
    import os

    code = getattr(errno, errno_name)
    exc = _wrapped(OSError(code, os.strerror(code), "/artifacts/jobs/j/checkpoints"))
    assert classify_failure(exc) == FailureReason.INTERNAL
    message = failure_message(exc)
    assert "artifact storage failed" in message and "(checkpoints)" in message
    assert "/artifacts" not in message  # no server path in a message users see


def test_failure_messages_carry_no_server_paths() -> None:
    exc = _wrapped(RuntimeError("cannot read /srv/ris/artifacts/jobs/0f3a/checkpoints/final.pt: bad magic"))
    assert failure_message(exc) == "RuntimeError: cannot read final.pt: bad magic"


def test_a_checkpoint_holding_code_is_rejected_naming_the_refused_global(tmp_path: Path) -> None:
    from ris_model.errors import CheckpointError
    from ris_model.train.checkpoint import load_checkpoint
    from tests.factories import malicious_checkpoint_bytes
    from worker.evaluation import rejection_reason

    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(malicious_checkpoint_bytes(tmp_path / "ran"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(hostile)
    reason = rejection_reason(info.value)
    assert "refused global exec" in reason and "it was not run" in reason
    assert str(tmp_path) not in reason and not (tmp_path / "ran").exists()


def test_soft_time_limit_backstop_message_says_what_happened() -> None:
    message = failure_message(_wrapped(SoftTimeLimitExceeded()))
    assert "soft time limit" in message and "checkpoint" in message


def test_debug_oom_at_step_raises_torch_oom_classified_oom() -> None:
    assert classify_failure(_wrapped(torch.OutOfMemoryError("debug.oom_at_step"))) == FailureReason.OOM
