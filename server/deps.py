"""Typed FastAPI dependencies (STYLE B1, A2): what a route needs, named for what it gives.

Owns: `SettingsDep`, `SessionDep`, `ArtifactsDep`, `RedisDep`, `ProducerDep`, `PrincipalDep` and the API-key
check (`authenticate` per route, `ApiKeyMiddleware` before everything else). Everything comes from `app.state`,
filled once by `server.main.create_app`. Keys are compared with `hmac.compare_digest` (`key_matches`) and never
logged; a principal is a non-secret digest of the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from typing import Annotated

import redis
from celery import Celery
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import Unauthenticated, problem_response
from server.settings import Settings
from server.store import ArtifactStore

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="required when API_KEYS is set")


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, closed afterwards (store functions commit their own writes)."""
    with request.app.state.session_factory() as session:
        yield session


def get_artifacts(request: Request) -> ArtifactStore:
    return request.app.state.artifacts  # type: ignore[no-any-return]


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


def get_producer(request: Request) -> Celery:
    return request.app.state.producer  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
ProducerDep = Annotated[Celery, Depends(get_producer)]


def principal_of(api_key: str) -> str:
    """A stable, non-secret id for an API key (stored on jobs; safe to log)."""
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


def key_matches(settings: Settings, api_key: str) -> bool:
    """Whether `api_key` is one of the configured keys, compared in constant time with every key (the timing
    reveals neither which key matched nor how long a common prefix was)."""
    given = api_key.encode()
    matched = False
    for key in settings.api_keys:
        matched |= hmac.compare_digest(key.get_secret_value().encode(), given)
    return matched


def authenticate(settings: SettingsDep, api_key: Annotated[str | None, Security(_api_key_header)]) -> str | None:
    """The caller's principal, or None when auth is off. Raises Unauthenticated (401)."""
    if not settings.auth_enabled:
        return None
    if not api_key:
        raise Unauthenticated("missing X-API-Key header")
    if not key_matches(settings, api_key):
        raise Unauthenticated("invalid API key")
    return principal_of(api_key)


class ApiKeyMiddleware:
    """401 before anything else reads the request (body size and type checks, routing, the body itself) when
    keys are configured and the request's X-API-Key matches none; `open_paths` (health, readiness) pass.
    The route dependency `authenticate` checks again and gives the principal."""

    def __init__(self, app: ASGIApp, *, settings: Settings, open_paths: frozenset[str]) -> None:
        self.app = app
        self.settings = settings
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.settings.auth_enabled or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        raw = dict(scope["headers"]).get(b"x-api-key")
        if raw is None or not key_matches(self.settings, raw.decode("latin-1")):
            detail = "missing X-API-Key header" if raw is None else "invalid API key"
            response = problem_response(401, detail, instance=scope["path"],
                                        headers={"WWW-Authenticate": 'APIKey header="X-API-Key"'})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


PrincipalDep = Annotated[str | None, Depends(authenticate)]
