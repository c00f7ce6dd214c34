"""Every HTTP error of the API as application/problem+json (RFC 9457; ARCHITECTURE.md, "HTTP API").

Owns: the API's own error types (auth, limits, dispatch), the one mapping from domain errors to status codes
(`install_error_handlers`), validation-error formatting (`errors: [{field, message}]` with pydantic's union tag
stripped), and `RequestGuardMiddleware` (413 on oversized bodies, streamed or not; 415 on non-JSON bodies).
No other module builds an error response; routes raise domain errors.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_schemas import FieldError, JobKind, Problem
from server.dispatch import DispatchError
from server.ratelimit import RateLimited
from server.store.db import is_transient
from server.store.errors import (
    ArtifactRejected,
    CheckpointNotFound,
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    JobNotFound,
    LeaseLost,
    OffsetOutOfRange,
    ReportNotFound,
    StoreError,
    UploadNotFound,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
#: Retry-After of a 503 while the job store is unreachable, seconds (a database restart takes a few).
STORE_RETRY_AFTER_S = 5
#: Kinds that the API accepts in JobCreate: every JobKind.
IMPLEMENTED_KINDS = tuple(kind.value for kind in JobKind)
#: Methods whose body must be JSON. Only POST has routes; PUT/PATCH fall through to routing's 405.
_BODY_METHODS = frozenset({"POST"})

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- API errors


class ApiError(Exception):
    """Base of the API's own (non-store) errors."""


class Unauthenticated(ApiError):
    """No X-API-Key, or one that matches no configured key (HTTP 401)."""


class QueueLimitExceeded(ApiError):
    """The principal already has MAX_QUEUED_JOBS_PER_KEY jobs waiting (HTTP 429)."""


class JobNotDispatched(ApiError):
    """The job is committed QUEUED but the broker refused the message (HTTP 503); a sweep re-sends it."""

    def __init__(self, job_id: str, cause: DispatchError) -> None:
        super().__init__(
            f"job {job_id} is QUEUED but could not be sent to the workers (broker unavailable); it will be "
            "dispatched when the broker is back, or retry with the same Idempotency-Key"
        )
        self.job_id = job_id
        self.cause = cause


class InvalidReference(ApiError):
    """The request names something the caller cannot use (an evaluation's checkpoint job, name or upload that
    does not exist or is not theirs): HTTP 422 naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class StoreUnavailable(ApiError):
    """The job store could not be reached (HTTP 503 with Retry-After); nothing was changed by the request."""


class FaultInjectionRefused(ApiError):
    """A job config's `debug` section asks for fault injection and ALLOW_FAULT_INJECTION is off (HTTP 422)."""

    FIELD = "config.debug"

    def __init__(self) -> None:
        super().__init__(
            "fault injection (config.debug) is disabled on this server; remove the debug section, or set "
            "ALLOW_FAULT_INJECTION=true on the API and the workers of a test deployment"
        )


class NotReady(ApiError):
    """A dependency of the API is down (HTTP 503); `checks` names each one and its state."""

    def __init__(self, checks: dict[str, str]) -> None:
        down = sorted(name for name, state in checks.items() if state != "ok")
        super().__init__(f"not ready: {', '.join(down)} unavailable")
        self.checks = checks


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` when a streamed body passes MAX_BODY_BYTES (an HTTPException so that FastAPI's
    body parsing re-raises it instead of turning it into a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body exceeds {limit} bytes")


# ---------------------------------------------------------------------------------------------- responses


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """A route's OpenAPI `responses` for these error codes: each answers a Problem as application/problem+json."""
    return {code: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}} for code in codes}


def problem_response(
    status: int,
    detail: str | None = None,
    *,
    instance: str | None = None,
    errors: Sequence[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> JSONResponse:
    """An RFC 9457 problem: `type` about:blank, `title` the status phrase, plus optional extension members."""
    problem = Problem(
        title=HTTPStatus(status).phrase, status=status, detail=detail, instance=instance,
        errors=list(errors) if errors is not None else None,
    )
    body = {**problem.model_dump(exclude_none=True), **(extensions or {})}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


#: Store error → HTTP status. Subclasses are looked up through the MRO.
_STORE_STATUS: dict[type[StoreError], int] = {
    JobNotFound: 404,
    CheckpointNotFound: 404,
    ReportNotFound: 404,
    UploadNotFound: 404,
    ArtifactRejected: 404,  # never say more about a path we refuse to serve
    InvalidTransition: 409,
    LeaseLost: 409,
    IdempotencyConflict: 422,
    InvalidCursor: 422,
    OffsetOutOfRange: 416,
}


def _store_error(request: Request, exc: Exception) -> JSONResponse:
    status = next((_STORE_STATUS[c] for c in type(exc).__mro__ if c in _STORE_STATUS), 500)
    if status == 500:
        log.error("unmapped store error on %s: %r", request.url.path, exc)
        return problem_response(500, "internal error", instance=request.url.path)
    errors = None
    if isinstance(exc, InvalidCursor):
        errors = [FieldError(field="page_token", message=str(exc))]
    elif isinstance(exc, IdempotencyConflict):
        errors = [FieldError(field="Idempotency-Key", message=str(exc))]
    headers = {"Content-Range": f"bytes */{exc.size}"} if isinstance(exc, OffsetOutOfRange) else None
    detail = "not found" if isinstance(exc, ArtifactRejected) else str(exc)
    return problem_response(status, detail, instance=request.url.path, errors=errors, headers=headers)


def _api_error(request: Request, exc: Exception) -> JSONResponse:
    path = request.url.path
    if isinstance(exc, Unauthenticated):
        return problem_response(401, str(exc), instance=path, headers={"WWW-Authenticate": 'APIKey header="X-API-Key"'})
    if isinstance(exc, QueueLimitExceeded):
        return problem_response(429, str(exc), instance=path, headers={"Retry-After": "60"})
    if isinstance(exc, JobNotDispatched):
        return problem_response(
            503, str(exc), instance=path, headers={"Location": f"/v1/jobs/{exc.job_id}", "Retry-After": "10"},
            extensions={"job_id": exc.job_id},
        )
    if isinstance(exc, FaultInjectionRefused):
        return problem_response(
            422, "the request is not valid", instance=path,
            errors=[FieldError(field=FaultInjectionRefused.FIELD, message=str(exc))],
        )
    if isinstance(exc, NotReady):
        return problem_response(503, str(exc), instance=path, extensions={"checks": exc.checks},
                                headers={"Retry-After": str(STORE_RETRY_AFTER_S)})
    if isinstance(exc, InvalidReference):
        return problem_response(422, "the request is not valid", instance=path,
                                errors=[FieldError(field=exc.field, message=str(exc))])
    if isinstance(exc, StoreUnavailable):
        return problem_response(503, str(exc), instance=path, headers={"Retry-After": str(STORE_RETRY_AFTER_S)})
    log.error("unmapped API error on %s: %r", path, exc)
    return problem_response(500, "internal error", instance=path)


# ---------------------------------------------------------------------------------------------- validation


def _field_path(loc: Sequence[int | str]) -> str:
    """`("body", "diagnostic", "config", "data", "batch_size")` → `config.data.batch_size`."""
    parts = [str(p) for p in loc]
    source = parts.pop(0) if parts and parts[0] in ("body", "query", "path", "header", "cookie") else None
    if source == "body" and parts and parts[0] in {k.value for k in JobKind}:
        parts.pop(0)  # the discriminated union's tag is not a field the client wrote
    if not parts:
        return source or ""
    return ".".join(str(p) for p in parts)


def _field_message(error: dict[str, Any]) -> str:
    ctx = error.get("ctx") or {}
    if error.get("type") == "union_tag_invalid":
        tag = ctx.get("tag")
        return f"kind must be one of {', '.join(IMPLEMENTED_KINDS)}, got {tag!r}"
    if error.get("type") == "union_tag_not_found":
        return f"kind is required: one of {', '.join(IMPLEMENTED_KINDS)}"
    if error.get("type") == "int_parsing_size":  # e.g. 1e30 where an integer is expected
        return "the number is too large for this integer field"
    if error.get("type") == "value_error" and str(error.get("msg", "")).startswith("Value error, "):
        return str(error["msg"]).removeprefix("Value error, ")
    return str(error.get("msg", "invalid value"))


def field_errors(errors: Sequence[Any]) -> list[FieldError]:
    """Pydantic errors as `[{field, message}]` with dotted paths the client recognizes."""
    out = []
    for err in errors:
        field = _field_path(err.get("loc", ()))
        if err.get("type") in ("union_tag_invalid", "union_tag_not_found"):
            field = "kind"
        out.append(FieldError(field=field, message=_field_message(err)))
    return out


def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """A database error: 503 + Retry-After when the store is unreachable (a restart), else a logged 500. The
    driver's message (host names, SQL) never reaches the client."""
    if is_transient(exc):
        log.warning("job store unavailable on %s: %s", request.url.path, str(exc).splitlines()[0])
        return _api_error(request, StoreUnavailable("the job store is unavailable; retry shortly"))
    log.error("database error on %s: %r", request.url.path, exc)
    return problem_response(500, "internal error", instance=request.url.path)


def _rate_limited(request: Request, exc: Exception) -> JSONResponse:
    retry_after_s = cast(RateLimited, exc).retry_after_s  # registered for this type only
    return problem_response(429, str(exc), instance=request.url.path, headers={"Retry-After": str(retry_after_s)})


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = cast(RequestValidationError, exc).errors()  # registered for this type only
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem_response(400, "request body is not valid JSON", instance=request.url.path)
    return problem_response(
        422, "the request is not valid", instance=request.url.path, errors=field_errors(errors)
    )


def _route_methods(routes: Sequence[Any], path: str) -> set[str]:
    """Methods of every route (included routers flattened) whose path template matches `path`."""
    methods: set[str] = set()
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)  # FastAPI's included routers
        if contexts is not None:
            methods |= _route_methods(list(contexts()), path)
        elif getattr(route, "methods", None) and route.path_regex.match(path):
            methods |= set(route.methods)
    return methods


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    http_exc = cast(StarletteHTTPException, exc)  # registered for this type only
    detail = http_exc.detail if isinstance(http_exc.detail, str) else None
    headers = dict(http_exc.headers or {})
    if http_exc.status_code == 405:  # the router names only the first matching route's methods (RFC 9110 §15.5.6)
        allowed = _route_methods(request.app.routes, request.url.path)
        if allowed:
            headers["Allow"] = ", ".join(sorted(allowed))
    return problem_response(http_exc.status_code, detail, instance=request.url.path, headers=headers or None)


def install_error_handlers(app: FastAPI) -> None:
    """Register every domain → problem+json mapping on `app`, and document it in the OpenAPI schema."""
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(RateLimited, _rate_limited)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    _document_problems(app)


def _problem_content() -> dict[str, Any]:
    return {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}


def _document_problems(app: FastAPI) -> None:
    """Make the OpenAPI schema say what the handlers do: every 4xx/5xx body is application/problem+json,
    and every /v1 or keyed operation may answer 401 (API key), 422 (validation), 429 (the key's rate limit) and
    503 (the job store is unavailable)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(problem.pop("$defs", {}))
        components["Problem"] = problem
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if path.startswith("/v1/") or operation.get("security"):  # every route behind the API key
                    responses.setdefault("401", {"description": "missing or invalid X-API-Key"})
                    responses.setdefault("422", {"description": "invalid request"})
                    responses.setdefault("429", {"description": "the API key's rate limit; see Retry-After"})
                    responses.setdefault("503", {"description": "the job store is unavailable; see Retry-After"})
                for code, response in responses.items():
                    if code[0] in "45":
                        response["content"] = _problem_content()
                        response["description"] = response.get("description") or HTTPStatus(int(code)).phrase
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------- request guard


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class RequestGuardMiddleware:
    """413 for bodies over `max_body_bytes` (by Content-Length, and while streaming for chunked bodies);
    415 for a POST body that is not JSON. Pure ASGI, so streaming responses pass untouched.

    The upload route (`upload_path`, POST only) takes application/octet-stream instead, up to
    `max_upload_bytes`."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, upload_path: str | None = None,
                 max_upload_bytes: int = 0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.upload_path = upload_path
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        is_upload = scope["method"] == "POST" and self.upload_path is not None and scope["path"] == self.upload_path
        limit = self.max_upload_bytes if is_upload else self.max_body_bytes
        early = self._early_refusal(scope["method"], headers, limit=limit, is_upload=is_upload)
        if early is not None:
            await early(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._limited(receive, limit), send_tracking)
        except BodyTooLarge as exc:  # raised where no route handler could map it
            if started:
                raise
            await problem_response(413, str(exc.detail))(scope, receive, send)

    def _early_refusal(self, method: str, headers: dict[str, str], *, limit: int, is_upload: bool
                       ) -> JSONResponse | None:
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return problem_response(413, f"request body exceeds {limit} bytes")
        has_body = (length is not None and length != "0") or "transfer-encoding" in headers
        content_type = headers.get("content-type", "")
        if is_upload:
            if content_type.split(";", 1)[0].strip().lower() != "application/octet-stream":
                return problem_response(415, "upload the checkpoint file as the raw body with "
                                             "Content-Type: application/octet-stream")
            return None
        if method in _BODY_METHODS and has_body and not _is_json(content_type):
            return problem_response(415, "request bodies must be application/json")
        return None

    def _limited(self, receive: Receive, limit: int) -> Callable[[], Awaitable[Message]]:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        return limited_receive

