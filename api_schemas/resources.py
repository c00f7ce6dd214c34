"""What a job asks of the worker that runs it: processes (one per GPU) and the device (DESIGN §3.4).

Owns: Resources, DEFAULT_RESOURCES, stored_config and split_stored_config. Imports nothing of ours; no torch.

`resources` is a sibling of `config` in the job body, not part of it: a training config's sha256 (which a
checkpoint must match to resume) does not depend on how many processes train it. The job store keeps
`resources` inside the job's JSON `config` column under RESOURCES_KEY (no schema change); split_stored_config
takes it back out, so a stored config without it (every job made before it existed) reads as the defaults.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: The key under which the store keeps a job's resources inside its JSON config column.
RESOURCES_KEY = "resources"

Device = Literal["cuda", "cpu"]


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
        description="cuda: run on GPUs only; cpu: run on the CPU even on a GPU worker; null: CUDA where the "
        "worker has GPUs, else the CPU",
    )


#: What a job that says nothing about resources gets.
DEFAULT_RESOURCES = Resources()


def stored_config(config: dict[str, Any], resources: Resources) -> dict[str, Any]:
    """The JSON the store keeps for a job: its config with `resources` beside the config's own fields
    (left out when they are the defaults, so that such a job's stored config is its config alone)."""
    if resources == DEFAULT_RESOURCES:
        return dict(config)
    return {**config, RESOURCES_KEY: resources.model_dump(mode="json")}


def split_stored_config(stored: dict[str, Any]) -> tuple[dict[str, Any], Resources]:
    """The job's config and its resources from what stored_config made (the defaults when absent)."""
    config = dict(stored)
    raw = config.pop(RESOURCES_KEY, None)
    return config, (Resources.model_validate(raw) if raw is not None else DEFAULT_RESOURCES)
