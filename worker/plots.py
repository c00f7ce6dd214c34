"""The plots of a training or diagnostic job: loss curves and K accuracy per epoch, as PNG artifacts.

After a run has SUCCEEDED, `write_metric_plots` reads the job's stored metric points back from the store (what
the API serves, so the plots show exactly the recorded history), renders them with
`ris_model.evaluate.plots.render_training_plots` (imported here only: torch and matplotlib stay out of the
prefork parent) and writes each PNG atomically into `<job dir>/artifacts/` with `write_artifact`, the writer of
the evaluation job's files. The report lists them (`artifacts`); `GET /v1/jobs/{id}/artifacts/{name}` serves them.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from api_schemas import StoredMetricPoint
from api_schemas.evaluation import EvaluationArtifact
from server.store import read_points
from server.store.artifacts import ArtifactStore
from server.store.metrics import MAX_PAGE_POINTS
from server.store.principals import WORKER
from worker.evaluation import write_artifact

log = logging.getLogger(__name__)


def stored_points(sessions: sessionmaker[Session], job_id: str) -> list[StoredMetricPoint]:
    """Every metric point of the job, in seq order."""
    points: list[StoredMetricPoint] = []
    since = 0
    with sessions() as session:
        while True:
            page = read_points(session, job_id, principal=WORKER, since_seq=since, limit=MAX_PAGE_POINTS)
            points.extend(page.points)
            if page.next_since_seq is None:
                return points
            since = page.next_since_seq


def write_metric_plots(job_id: str, *, sessions: sessionmaker[Session], artifacts: ArtifactStore
                       ) -> list[EvaluationArtifact]:
    """Render the job's loss and K-accuracy plots and write them; returns what was written."""
    from ris_model.evaluate.plots import render_training_plots  # lazy: matplotlib in the job's child only

    figures = render_training_plots(stored_points(sessions, job_id))
    written = [write_artifact(artifacts, job_id, name, data) for name, data in figures.items()]
    log.info("wrote %s", ", ".join(a.name for a in written) or "no plots (no epoch metrics)")
    return written
