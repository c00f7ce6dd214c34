"""How a job's progress fraction splits over its parts: setup, training, and (for a diagnostic) the checks.

Owns `ProgressPlan`. The split follows a cost model in training-step equivalents (one optimizer step over one
batch of `batch_size` scenes = 1), so that the fraction advances about evenly in time on any machine:
- setup: drawing the fixed scene pools (train pool unless fresh scenes are drawn each step, and val);
- training: every optimizer step, plus each epoch's validation forward passes;
- checks: the overfit probe's full-batch steps, the identifiability check's scenes and oracle, one val batch
  for the covariance check, the hashed batches of the leakage check; the bookkeeping checks cost ~nothing.
The constants below are estimates relative to a training step; the report's `timing_s` shows the real split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from api_schemas import DiagnosticJobConfig, TrainingJobConfig

#: drawing one batch of scenes, in training steps (a forward + backward + optimizer step of that batch)
SCENE_BATCH_COST = 0.25
#: a validation forward pass over one batch
VAL_BATCH_COST = 0.3
#: identifiability: drawing one batch of scenes and counting them with the oracle on the uncompressed array
ORACLE_BATCH_COST = 0.6
#: checks that only read what the trainer reported (non-finite, steps/LR, motion, dead parameters, provenance)
BOOKKEEPING_CHECK_COST = 0.05


@dataclass(frozen=True)
class ProgressPlan:
    """Costs of the job's parts in training-step equivalents; `fraction_*` map a part's own progress in [0, 1]
    to the job's fraction, which reaches 1.0 only when the last part is done."""

    setup: float
    training: float
    checks: tuple[float, ...]  # one per check, in report order; empty for a training job

    @classmethod
    def for_config(cls, config: TrainingJobConfig) -> ProgressPlan:
        data = config.data
        pool_scenes = data.n_val + (0 if data.fresh_train_each_epoch else data.n_train)
        setup = pool_scenes / data.batch_size * SCENE_BATCH_COST
        val_batch = max(data.batch_size, 256)  # SceneSource.val_batches' batch
        val_cost = math.ceil(data.n_val / val_batch) * val_batch / data.batch_size * VAL_BATCH_COST
        training = config.total_steps + sum(p.epochs for p in config.phases) * val_cost
        checks: tuple[float, ...] = ()
        if isinstance(config, DiagnosticJobConfig):
            c = config.checks
            per_batch = 1.0 / data.batch_size
            checks = (
                BOOKKEEPING_CHECK_COST,  # 1. non-finite steps
                BOOKKEEPING_CHECK_COST,  # 2. optimizer steps and LR
                BOOKKEEPING_CHECK_COST,  # 3. parameter motion
                BOOKKEEPING_CHECK_COST,  # 4. dead parameters
                c.leakage_train_batches * SCENE_BATCH_COST,  # 5. split leakage: hashing train batches
                c.identifiability_scenes * per_batch * ORACLE_BATCH_COST,  # 6. identifiability
                BOOKKEEPING_CHECK_COST,  # 7. learning
                c.overfit_steps * c.overfit_scenes * per_batch,  # 8. overfit probe
                max(data.batch_size, 256) * per_batch * VAL_BATCH_COST,  # 9. covariance: one val batch
                BOOKKEEPING_CHECK_COST,  # 10. provenance
            )
        return cls(setup=setup, training=training, checks=checks)

    @property
    def total(self) -> float:
        return self.setup + self.training + sum(self.checks)

    def fraction_setup(self, done: float) -> float:
        """Setup `done` ∈ [0, 1] of the way."""
        return self._clip(self.setup * done / self.total)

    def fraction_training(self, done: float) -> float:
        """Training `done` ∈ [0, 1] of its steps (the trainer's own fraction)."""
        return self._clip((self.setup + self.training * done) / self.total)

    def fraction_checks(self, n_done: int) -> float:
        """`n_done` checks finished; 1.0 only after the last one."""
        return self._clip((self.setup + self.training + sum(self.checks[:n_done])) / self.total)

    def _clip(self, fraction: float) -> float:
        return min(1.0, max(0.0, fraction))
