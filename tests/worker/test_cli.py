"""ris-jobs CLI helpers: GPU discovery without CUDA, worker command lines, the README's curl lines."""

from __future__ import annotations

import json

import pytest
from pydantic import TypeAdapter

from api_schemas import JobCreate, quickstart_diagnostic
from server.settings import Settings
from worker.cli import build_parser, curl_lines, default_queues, gpu_groups, visible_gpus, worker_command


def test_visible_gpus_reads_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert visible_gpus() == ["0", "2"]


def test_visible_gpus_empty_cuda_visible_devices_means_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_visible_gpus_without_nvidia_smi_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("shutil.which", lambda _: None)
    assert visible_gpus() == []


def test_worker_command_runs_one_prefork_process_per_gpu_on_its_device_queues() -> None:
    cmd = worker_command(Settings(job_queue="jobs"), name="gpu1", queues=["gpu"])
    joined = " ".join(cmd)
    assert "-c 1 -P prefork --max-tasks-per-child=1" in joined
    assert "-n gpu1@%h" in joined
    assert "-Q jobs.gpu " in joined
    assert "-Q jobs.gpu,jobs.cpu " in " ".join(worker_command(Settings(job_queue="jobs"), name="cpu",
                                                              queues=["gpu", "cpu"]))


def test_queues_option_and_defaults() -> None:
    parser = build_parser()
    assert parser.parse_args(["worker", "--queues", "cpu,gpu"]).queues == ("gpu", "cpu")
    assert parser.parse_args(["worker", "--queues", "cpu"]).queues == ("cpu",)
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--queues", "tpu"])
    assert default_queues(["0", "1"]) == ("gpu",)
    assert default_queues([]) == ("gpu", "cpu"), "a machine without GPUs runs every job"


def test_parser_knows_every_subcommand() -> None:
    parser = build_parser()
    for argv in (["serve"], ["api", "--port", "9000"], ["worker", "--cpu"], ["reaper"]):
        assert parser.parse_args(argv).command == argv[0]


def test_curl_lines_submit_poll_and_download() -> None:
    post, poll, download = curl_lines("http://127.0.0.1:8000")
    assert "-X POST http://127.0.0.1:8000/v1/jobs" in post
    assert "/v1/jobs/$ID" in poll
    assert download.endswith("/v1/jobs/$ID/checkpoints/final")


def test_curl_post_body_is_the_quickstart_diagnostic() -> None:
    post = curl_lines("http://127.0.0.1:8000")[0]
    body = json.loads(post.split("-d '", 1)[1].split("' |", 1)[0])
    parsed = TypeAdapter(JobCreate).validate_python(body)
    assert parsed.config == quickstart_diagnostic()


def test_gpus_are_grouped_per_worker_for_multi_gpu_jobs() -> None:
    gpus = ["0", "1", "2", "3", "4"]
    assert gpu_groups(gpus, 1) == [["0"], ["1"], ["2"], ["3"], ["4"]]
    assert gpu_groups(gpus, 2) == [["0", "1"], ["2", "3"], ["4"]]
    assert gpu_groups(gpus, 8) == [gpus]
    assert build_parser().parse_args(["worker", "--gpus-per-worker", "4"]).gpus_per_worker == 4
