"""Typed FastAPI dependencies: what a route needs, named for what it gives.

Owns: `SettingsDep`, `SessionDep`, `ArtifactsDep`, `RedisDep`, `ProducerDep`, `PrincipalDep` and the API-key
check (`authenticate` per route, with the key's rate limit; `ApiKeyMiddleware` before everything else). Everything
comes from `app.state`, filled once by `server.main.create_app`. Keys are compared by their sha256 with
`hmac.compare_digest` (`key_matches`) and never logged; a principal (`server.store.principals`) carries a
non-secret digest of the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any

import redis
from celery import Celery
from fastapi import Depends, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import Unauthenticated, problem_response
from server.ratelimit import RateLimiter
from server.settings import Settings
from server.store import ArtifactStore
from server.store.principals import ANONYMOUS, Principal, principal_for_key_digest

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
    client: redis.Redis = request.app.state.redis
    return client


def get_producer(request: Request) -> Celery:
    producer: Celery = request.app.state.producer
    return producer


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
ProducerDep = Annotated[Celery, Depends(get_producer)]


def key_digest(api_key: str) -> str:
    """sha256 hex of a presented key: what configured keys (plain or `sha256:<hex>`) are compared with."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def principal_of(api_key: str, *, admin: bool = False) -> Principal:
    """The principal of an API key: a stable, non-secret id (stored on jobs; safe to log)."""
    return principal_for_key_digest(key_digest(api_key), admin=admin)


def key_matches(settings: Settings, api_key: str, *, admin_only: bool = False) -> bool:
    """Whether `api_key` is one of the configured keys (only ADMIN_API_KEYS with `admin_only`). Digests are
    compared in constant time with every configured key: the timing reveals neither which key matched nor how
    long a common prefix was."""
    given = key_digest(api_key).encode()
    matched = False
    for digest, admin in settings.key_digests():
        matched |= hmac.compare_digest(digest.encode(), given) and (admin or not admin_only)
    return matched


def authenticate(
    request: Request, settings: SettingsDep, api_key: Annotated[str | None, Security(_api_key_header)]
) -> Principal:
    """The caller's principal (ANONYMOUS when auth is off), after its rate limit.

    Raises Unauthenticated (401) and RateLimited (429)."""
    if not settings.auth_enabled:
        return ANONYMOUS
    if not api_key:
        raise Unauthenticated("missing X-API-Key header")
    if not key_matches(settings, api_key):
        raise Unauthenticated("invalid API key")
    principal = principal_of(api_key, admin=key_matches(settings, api_key, admin_only=True))
    limiter: RateLimiter = request.app.state.rate_limiter
    limiter.check(principal.id)
    return principal


class ApiKeyMiddleware:
    """401 before anything else reads the request (body size and type checks, routing, the body itself) when
    keys are configured and the request's X-API-Key matches none; `open_paths` (health, readiness) pass.
    `is_open(path)` opens more paths (the dashboard's static files). The route dependency `authenticate` checks
    again and gives the principal."""

    def __init__(self, app: ASGIApp, *, settings: Settings, open_paths: frozenset[str],
                 is_open: Callable[[str], bool] | None = None) -> None:
        self.app = app
        self.settings = settings
        self.open_paths = open_paths
        self.is_open = is_open or (lambda _path: False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (scope["type"] != "http" or not self.settings.auth_enabled or path in self.open_paths
                or self.is_open(path)):
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


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def _coerced_scalars(raw: Any, parsed: Any, loc: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], str]]:
    """Where pydantic's lax mode turned a JSON scalar into another JSON type ("3" → 3, "yes" → true, 1 → true,
    true → 1): the published schema allows none of these. Walks `raw` (the request JSON) beside `parsed` (the
    validated model dumped as JSON) and compares scalars only, so presets and defaults never trip it."""
    if isinstance(raw, dict) and isinstance(parsed, dict):
        return [hit for k, v in raw.items() if k in parsed for hit in _coerced_scalars(v, parsed[k], (*loc, k))]
    if isinstance(raw, list) and isinstance(parsed, list) and len(raw) == len(parsed):
        pairs = enumerate(zip(raw, parsed, strict=True))
        return [hit for i, (r, p) in pairs for hit in _coerced_scalars(r, p, (*loc, i))]
    scalar = (bool, int, float)
    if isinstance(raw, str) and isinstance(parsed, scalar):
        return [(loc, f"expected a JSON {'boolean' if isinstance(parsed, bool) else 'number'}, got a string")]
    if isinstance(raw, scalar) and isinstance(parsed, scalar) and isinstance(raw, bool) != isinstance(parsed, bool):
        return [(loc, f"expected a JSON {'boolean' if isinstance(parsed, bool) else 'number'}")]
    return []


class _NonFinite:
    def __init__(self, token: str) -> None:
        self.token = token


def _nonfinite_numbers(body: bytes) -> list[tuple[tuple[str | int, ...], str]]:
    """Where the body has NaN, Infinity or -Infinity (Python's json accepts them, JSON does not): each is one
    clear error at its own field, instead of whatever a range check or a later validator makes of a NaN."""
    try:
        raw = json.loads(body, parse_constant=_NonFinite)
    except ValueError:
        return []  # not JSON at all: FastAPI's 400 answers it
    hits: list[tuple[tuple[str | int, ...], str]] = []

    def walk(value: Any, loc: tuple[str | int, ...]) -> None:
        if isinstance(value, _NonFinite):
            hits.append((loc, value.token))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*loc, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*loc, i))

    walk(raw, ("body",))
    return hits


def strict_json_body(model: Any) -> Callable[[Request], Awaitable[None]]:
    """A dependency that refuses bodies which only pydantic's lax coercion makes valid.

    FastAPI validates bodies in lax mode, which turns "3" into 3 and "yes" into true although the published
    schema says integer and boolean. Pydantic's strict mode cannot be used:
    it also refuses arrays for tuples once a `mode="before"` validator ran. So the body is validated as FastAPI
    does, and any JSON scalar whose type changed on the way is a 422 naming its field. Bodies that fail
    validation anyway are left to FastAPI's own error.
    """
    adapter: TypeAdapter[Any] = TypeAdapter(model)

    async def check(request: Request) -> None:
        body = await request.body()
        nonfinite = _nonfinite_numbers(body)
        if nonfinite:
            raise RequestValidationError([
                {"type": "finite_number", "loc": loc, "input": None,
                 "msg": f"{token} is not a number JSON allows; give a finite number"}
                for loc, token in nonfinite
            ])
        try:
            raw = json.loads(body)
            parsed = adapter.dump_python(adapter.validate_python(raw), mode="json", by_alias=True)
        except (ValueError, ValidationError):
            return  # FastAPI's own parse and validation answer this one (400 / 422)
        hits = _coerced_scalars(raw, parsed, ("body",))
        if hits:
            raise RequestValidationError(
                [{"type": "strict_type", "loc": loc, "msg": msg, "input": None} for loc, msg in hits]
            )

    return check


def forbid_unknown_query(request: Request) -> None:
    """Refuse query parameters the route does not declare (422), as request bodies refuse unknown fields:
    a typo such as `?stat=QUEUED` must not silently return every job."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return
    known: set[str] = set()
    pending = [dependant]
    while pending:  # the route's own query parameters and those of its dependencies
        current = pending.pop()
        known |= {param.alias for param in current.query_params}
        pending.extend(current.dependencies)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError([
            {"type": "extra_forbidden", "loc": ("query", name), "msg": "unknown query parameter", "input": None}
            for name in unknown
        ])
