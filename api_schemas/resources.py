"""What a job asks of the worker that runs it: processes (one per GPU) and the device
(ARCHITECTURE.md, "Multi-GPU training").

Owns: Resources, DEFAULT_RESOURCES, the job priority (PRIORITY_FIELD, DEFAULT_PRIORITY), device_queue,
stored_config, split_stored_config and stored_priority. Imports nothing of ours; no torch.

`resources` and `priority` are siblings of `config` in the job body, not part of it: a training config's
sha256 (which a checkpoint must match to resume) does not depend on how many processes train it or how urgent
it is. The job store keeps them inside the job's JSON `config` column under RESOURCES_KEY and PRIORITY_KEY (no
schema change); split_stored_config takes them back out, so a stored config without them (every job made before
they existed) reads as the defaults.

Queues: a job goes to the `gpu` queue unless `resources.device` is "cpu" (then the `cpu` queue); see
`device_queue`. Priority: 0..9, 9 the most urgent; among the jobs waiting in one queue, a more urgent one is
delivered first (equal priorities in submission order).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: The keys under which the store keeps a job's resources and priority inside its JSON config column.
RESOURCES_KEY = "resources"
PRIORITY_KEY = "priority"

Device = Literal["cuda", "cpu"]
#: The queues workers serve: `gpu` (jobs that want CUDA: the default) and `cpu` (jobs that ask for the CPU).
DeviceQueue = Literal["gpu", "cpu"]
DEVICE_QUEUES: tuple[DeviceQueue, ...] = ("gpu", "cpu")

#: Job priority: 0 (least urgent) .. 9 (most urgent); jobs that do not say get DEFAULT_PRIORITY.
MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 9, 5
PRIORITY_FIELD = Field(
    DEFAULT_PRIORITY, ge=MIN_PRIORITY, le=MAX_PRIORITY,
    description="0..9, 9 the most urgent: among the jobs waiting in one queue (gpu or cpu), a more urgent one "
    "starts first; equal priorities start in submission order. A running job is never preempted",
)


class Resources(BaseModel):
    """How many training processes a job runs and on what.

    `gpus` processes train one model with torch.distributed (DistributedDataParallel), one per GPU of one
    worker host: NCCL between GPUs, gloo between CPU processes. Each process trains on its own
    `config.data.batch_size` scenes per step, so one optimizer step sees `gpus` x batch_size scenes and an
    epoch of `config.data.n_train` scenes takes `gpus` times fewer steps.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpus: int = Field(
        1, ge=1, le=64,
        description="training processes, one per GPU of one worker host (on the CPU: gloo processes); each "
        "trains on config.data.batch_size scenes per step, so a step sees gpus x batch_size scenes. More than "
        "the server's MAX_GPUS_PER_JOB is refused (422); more than any live worker has waits QUEUED",
    )
    device: Device | None = Field(
        None,
        description="cuda: run on GPUs only (the gpu queue); cpu: run on the CPU (the cpu queue; any CPU worker, "
        "also on a GPU host); null, the default of every kind: the gpu queue, on CUDA where the worker has GPUs, "
        "else on the CPU (a single machine without GPUs serves the gpu queue on its CPU)",
    )


#: What a job that says nothing about resources gets.
DEFAULT_RESOURCES = Resources()


def device_queue(resources: Resources) -> DeviceQueue:
    """The queue a job waits in: `cpu` when it asks for the CPU, else `gpu`."""
    return "cpu" if resources.device == "cpu" else "gpu"


def stored_config(config: dict[str, Any], resources: Resources, priority: int = DEFAULT_PRIORITY) -> dict[str, Any]:
    """The JSON the store keeps for a job: its config with `resources` and `priority` beside the config's own
    fields (each left out when it is the default, so that such a job's stored config is its config alone)."""
    out = dict(config)
    if resources != DEFAULT_RESOURCES:
        out[RESOURCES_KEY] = resources.model_dump(mode="json")
    if priority != DEFAULT_PRIORITY:
        out[PRIORITY_KEY] = priority
    return out


def split_stored_config(stored: dict[str, Any]) -> tuple[dict[str, Any], Resources]:
    """The job's config and its resources from what stored_config made (the defaults when absent)."""
    config = dict(stored)
    raw = config.pop(RESOURCES_KEY, None)
    config.pop(PRIORITY_KEY, None)
    return config, (Resources.model_validate(raw) if raw is not None else DEFAULT_RESOURCES)


def stored_priority(stored: dict[str, Any]) -> int:
    """The job's priority from what stored_config made (DEFAULT_PRIORITY when absent)."""
    value = stored.get(PRIORITY_KEY, DEFAULT_PRIORITY)
    return int(value) if isinstance(value, int) else DEFAULT_PRIORITY
