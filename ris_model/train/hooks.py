"""The points of a training run where a caller may act: the StepHooks protocol and its no-op default.

The Trainer calls every hook at a fixed point of every step (and `attach` once, when it is built); with
NO_HOOKS a run is the plain run. The fault injection of the tests and of a job's `debug` section
(ris_model.train.fault_hooks) is one implementation; the trainer itself holds no such logic.
"""

from __future__ import annotations

from typing import Protocol

from api_schemas import LossWeights
from ris_model.losses import LossResult
from ris_model.model.network import ModelOutput, RisNet
from ris_model.scenes import SceneBatch, SceneSource


class StepHooks(Protocol):
    def attach(self, model: RisNet, scenes: SceneSource) -> SceneSource:
        """Once, when the trainer is built (the model is already on its device): may change the model in place;
        returns the scene source the run draws its batches from."""
        ...

    def polls_stop(self) -> bool:
        """Whether the trainer asks its `should_stop` between steps."""
        ...

    def before_step(self, step: int) -> None:
        """Before the forward of the batch that follows `step` processed batches of the run."""
        ...

    def runs_eagerly(self, step: int) -> bool:
        """Whether that batch must take the eager path rather than the CUDA-graph replay (the hook changes its
        loss, or the model in a way the graph does not capture)."""
        ...

    def loss(self, res: LossResult, out: ModelOutput, batch: SceneBatch, weights: LossWeights,
             step: int) -> LossResult:
        """The loss the step backpropagates, given the plain one (eager path only)."""
        ...

    def takes_optimizer_step(self, batch: int, n_batches: int) -> bool:
        """Whether batch `batch` (0-based) of an epoch of `n_batches` ends with an optimizer step."""
        ...

    def after_optimizer_step(self, model: RisNet) -> None:
        """Right after an optimizer step, before the EMA update."""
        ...

    def after_step(self, step: int) -> None:
        """After the batch, once the run has processed `step` batches."""
        ...


class NoHooks:
    """The plain run: every hook does nothing."""

    def attach(self, model: RisNet, scenes: SceneSource) -> SceneSource:
        return scenes

    def polls_stop(self) -> bool:
        return True

    def before_step(self, step: int) -> None:
        pass

    def runs_eagerly(self, step: int) -> bool:
        return False

    def loss(self, res: LossResult, out: ModelOutput, batch: SceneBatch, weights: LossWeights,
             step: int) -> LossResult:
        return res

    def takes_optimizer_step(self, batch: int, n_batches: int) -> bool:
        return True

    def after_optimizer_step(self, model: RisNet) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass


NO_HOOKS: StepHooks = NoHooks()
