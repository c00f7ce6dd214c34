"""The weights a training job starts from when its config says `init_from` (continue or fine-tune a run).

Owns: `initial_weights`. The source (a checkpoint of an earlier job, or an upload) is untrusted bytes: it is
resolved through the store, loaded only with `weights_only=True` (`ris_model.load_estimator`), and must have
been trained for the same system and weight shapes; anything else raises UserInputRejected, so the job ends
FAILED USER_CONFIG with the reason. The API checks what it can at submit (an earlier job's stored config); an
upload is checked here. ris_model is imported inside the function (no torch in the prefork parent).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from api_schemas import TrainingJobConfig
from api_schemas.lineage import init_mismatch
from server.store.files import ArtifactStore
from worker.evaluation import resolve_source
from worker.failures import UserInputRejected

if TYPE_CHECKING:
    from torch import Tensor



def initial_weights(config: TrainingJobConfig, *, sessions: sessionmaker[Session],
                    artifacts: ArtifactStore, inputs_dir: Path) -> dict[str, Tensor] | None:
    """The validated weights of `config.init_from` (None when the config has none), downloaded from the artifact
    store into `inputs_dir` (the job's scratch directory) first.

    Raises:
        UserInputRejected: the source does not exist, is not a loadable ris-jobs checkpoint, or was trained for
            another system or other weight shapes.
    """
    if config.init_from is None:
        return None
    path = resolve_source(config.init_from, sessions=sessions, artifacts=artifacts, inputs_dir=inputs_dir)
    from ris_model.errors import CheckpointError
    from ris_model.inference import load_estimator

    try:
        estimator = load_estimator(path, device="cpu")
    except CheckpointError as exc:
        raise UserInputRejected(f"init_from {config.init_from.model_dump()}: {exc}") from exc
    mismatch = init_mismatch(estimator.config.model_dump(mode="json"), config.model_dump(mode="json"))
    if mismatch is not None:
        raise UserInputRejected(f"init_from {config.init_from.model_dump()}: {mismatch}")
    return {k: v.detach().clone() for k, v in estimator.model.state_dict().items()}
