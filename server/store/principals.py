"""Who acts on the job store: principals, and the one filter that keeps each one to its own jobs (tenants).

Owns: `Principal`, the fixed principals (`ANONYMOUS`, `ADMIN`, `WORKER`, `REAPER`, `DISPATCHER`),
`principal_for_key_digest` and `owned_by` (the WHERE clause every store query that reads or changes a job adds).
Must not import FastAPI or torch.

An API key's principal id is `key-` + the first 16 hex digits of sha256(key): stable, non-secret, the same
whether the key is configured in plain text or as `sha256:<hex>`. Jobs store it in `jobs.principal` (the owner;
NULL for the anonymous principal when authentication is off, as before tenants existed); events store the id of
whoever caused them in `job_events.principal`. A principal that `sees_all` (an admin key, the worker, the
reaper) skips the filter; every other principal sees exactly the jobs it owns, and a job it does not own is
"not found", the same as a job that never existed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, true

from server.store.models import JobRow

#: Hex digits of sha256(key) in a key's principal id.
PRINCIPAL_DIGEST_HEX = 16


@dataclass(frozen=True)
class Principal:
    """id: recorded on the events it causes; owner: `jobs.principal` of jobs it creates and may see;
    sees_all: skips the ownership filter (admin keys and the service's own processes)."""

    id: str
    owner: str | None
    sees_all: bool = False


#: Everyone when authentication is off (no API keys configured): owns the jobs with `principal` NULL.
ANONYMOUS = Principal(id="anonymous", owner=None)
#: An administrator acting without a key of its own (operators' scripts, tests).
ADMIN = Principal(id="system:admin", owner=None, sees_all=True)
#: The Celery worker: claims, heartbeats, metric points, checkpoints, the terminal state.
WORKER = Principal(id="system:worker", owner=None, sees_all=True)
#: The reaper: requeues, fails and cancels jobs whose worker is gone; re-dispatches lost messages.
REAPER = Principal(id="system:reaper", owner=None, sees_all=True)
#: The API's dispatch sweep, which re-sends QUEUED jobs whose enqueue failed.
DISPATCHER = Principal(id="system:dispatcher", owner=None, sees_all=True)


def principal_for_key_digest(sha256_hex: str, *, admin: bool) -> Principal:
    """The principal of the API key whose sha256 is `sha256_hex` (an admin key sees every job)."""
    pid = f"key-{sha256_hex[:PRINCIPAL_DIGEST_HEX]}"
    return Principal(id=pid, owner=pid, sees_all=admin)


def owned_by(principal: Principal) -> ColumnElement[bool]:
    """The jobs `principal` may see and control: all of them for one that sees all, else the ones it owns."""
    if principal.sees_all:
        return true()
    if principal.owner is None:
        return JobRow.principal.is_(None)
    return JobRow.principal == principal.owner
