"""The Celery configuration (ARCHITECTURE.md, "The life of a job") and the no-CUDA-in-the-parent rule."""

from __future__ import annotations

import subprocess
import sys

from server.settings import Settings
from worker.app import celery_config


def _settings() -> Settings:
    return Settings(job_queue="gpu-a", job_soft_time_limit_s=3000, job_hard_time_limit_s=3600)


def test_celery_config_is_at_least_once_with_one_job_per_child() -> None:
    conf = celery_config(_settings())
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert (conf["worker_prefetch_multiplier"], conf["worker_max_tasks_per_child"]) == (1, 1)
    assert conf["worker_pool"] == "prefork"
    assert conf["task_ignore_result"]


def test_celery_config_time_limits_come_from_settings() -> None:
    conf = celery_config(_settings())
    assert (conf["task_soft_time_limit"], conf["task_time_limit"]) == (3000, 3600)


def test_celery_visibility_timeout_exceeds_hard_limit_in_all_three_places() -> None:
    conf = celery_config(_settings())
    values = [
        conf["broker_transport_options"]["visibility_timeout"],
        conf["result_backend_transport_options"]["visibility_timeout"],
        conf["visibility_timeout"],
    ]
    assert all(v > conf["task_time_limit"] for v in values)


def test_celery_default_queue_is_the_settings_gpu_queue() -> None:
    # each job is sent to its device queue explicitly (server.dispatch.queue_for); the default is the gpu queue
    conf = celery_config(_settings())
    assert conf["task_default_queue"] == "gpu-a.gpu"


def test_worker_modules_import_neither_torch_nor_ris_model() -> None:
    code = ("import sys, worker.app, worker.tasks, worker.reaper, worker.cli; "
            "print(any(m.startswith((\"torch\", \"ris_model\")) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
