"""Riding out a database outage: retry a worker's store write with bounded exponential backoff.

Owns: `retry_store`; what counts as a transient database error is `server.store.db.is_transient`. Used by
the StoreSink (metric flushes, checkpoint records) and by the task's terminal write, so that a PostgreSQL
restart mid-job delays those writes instead of failing the job or losing what the trainer produced. Everything
else (a constraint violation, LeaseLost, a bug) is raised at once. Imports no torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from server.store.db import is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")

#: First wait after a failed attempt, and the longest wait between two attempts, seconds.
FIRST_DELAY_S = 0.2
MAX_DELAY_S = 5.0


def retry_store(
    write: Callable[[], T],
    *,
    what: str,
    deadline_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Call `write()` until it returns; after a transient database error wait (0.2 s doubling up to 5 s) and try
    again, for at most `deadline_s` seconds in all, then raise the last error.

    `write` must be safe to repeat: each call opens its own session and transaction, so a failed attempt left
    nothing behind. `on_retry(exc)` runs before each new attempt (e.g. to find out whether an attempt whose
    connection broke during COMMIT was stored after all).
    """
    end = clock() + deadline_s
    delay = FIRST_DELAY_S
    attempt = 1
    while True:
        try:
            return write()
        except Exception as exc:
            if not is_transient(exc) or clock() + delay > end:
                raise
            log.warning("%s: database unavailable (attempt %d), retrying in %.1f s: %s", what, attempt, delay,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            sleep(delay)
            delay = min(MAX_DELAY_S, delay * 2)
            attempt += 1
            if on_retry is not None:
                on_retry(exc)
