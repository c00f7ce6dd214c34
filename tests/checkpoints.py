"""What a training checkpoint holds, checked value by value (SCIENCE.md, "The trainer"): its keys, format marker, config
digest, position, and tensors shaped as the model that its own config builds."""

from __future__ import annotations

from typing import Any

import torch

from api_schemas import ModelConfig, SystemConfig, config_sha256
from ris_model.model.network import RisNet
from ris_model.train import checkpoint as ckpt

#: every key the trainer writes (the format marker is added by save_checkpoint)
TRAINING_CHECKPOINT_KEYS = frozenset({
    ckpt.FORMAT_KEY, ckpt.KIND_KEY, ckpt.MODEL_KEY, ckpt.EMA_KEY, ckpt.EVAL_WEIGHTS_KEY, ckpt.OPTIMIZER_KEY,
    ckpt.RNG_KEY, ckpt.CONFIG_KEY, ckpt.CONFIG_SHA_KEY, ckpt.POSITION_KEY, ckpt.COUNTERS_KEY, "epoch_start",
    "eval_model",
})
POSITION_FIELDS = frozenset({"phase_index", "phase", "epoch", "batch", "global_step", "optimizer_phase", "world_size"})


def assert_training_checkpoint(state: dict[str, Any], *, kind: str, phase: str) -> None:
    """`state` (torch.load(..., weights_only=True) of a trainer checkpoint) is complete and self-consistent."""
    assert set(state) == TRAINING_CHECKPOINT_KEYS
    assert (state[ckpt.FORMAT_KEY], state[ckpt.KIND_KEY]) == (ckpt.FORMAT, kind)
    assert config_sha256(state[ckpt.CONFIG_KEY]) == state[ckpt.CONFIG_SHA_KEY]  # the canonical digest
    assert set(state[ckpt.POSITION_KEY]) == POSITION_FIELDS
    assert state[ckpt.POSITION_KEY]["phase"] == phase
    assert state[ckpt.RNG_KEY]["torch"].dtype == torch.uint8
    config = state[ckpt.CONFIG_KEY]
    with torch.random.fork_rng(devices=[]):
        model = RisNet(SystemConfig(**config["system"]), ModelConfig(**config["model"]))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in state[ckpt.MODEL_KEY].items()} == shapes
    assert {k: tuple(v.shape) for k, v in state["eval_model"].items()} == shapes
    assert state[ckpt.EVAL_WEIGHTS_KEY] == ("ema" if state[ckpt.EMA_KEY] is not None else "model")
