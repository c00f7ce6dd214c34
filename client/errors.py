"""Typed errors of the ris-jobs client: one exception class per HTTP problem the API answers.

Every error the API sends is an RFC 9457 problem (`application/problem+json`, `api_schemas.Problem`);
`error_from_response` parses it and raises the subclass named for its status, so callers catch what they
mean (`except NotFound:`) and still read the server's own words (`exc.problem.detail`, `exc.problem.errors`).
"""

from __future__ import annotations

import httpx
from pydantic import ValidationError

from api_schemas import FieldError, Problem


class ClientError(Exception):
    """Base of every error this client raises."""


class ApiError(ClientError):
    """The API answered with an error status. `problem` is the parsed problem+json body (a bare one with the
    status phrase as title when the body was not a problem)."""

    status: int = 0

    def __init__(self, problem: Problem, *, headers: httpx.Headers | None = None) -> None:
        self.problem = problem
        self.status = problem.status
        self.headers = headers if headers is not None else httpx.Headers()
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"{self.problem.status} {self.problem.title}"
        if self.problem.detail:
            text += f": {self.problem.detail}"
        if self.problem.errors:
            text += " (" + "; ".join(f"{e.field}: {e.message}" for e in self.problem.errors) + ")"
        return text

    @property
    def field_errors(self) -> list[FieldError]:
        """The per-field messages of a 422 (or of a 400/409 that names fields); [] when there are none."""
        return list(self.problem.errors or [])


class BadRequest(ApiError):
    """400: the request could not be read (e.g. the body is not JSON)."""


class Unauthorized(ApiError):
    """401: no X-API-Key, or one the server does not know."""


class Forbidden(ApiError):
    """403."""


class NotFound(ApiError):
    """404: no such job, checkpoint, report or artifact."""


class Conflict(ApiError):
    """409: the job is not in a state that allows the request (e.g. DELETE of a running job)."""


class PayloadTooLarge(ApiError):
    """413: the body is larger than the server accepts."""


class UnsupportedMediaType(ApiError):
    """415: the body has the wrong Content-Type."""


class RangeNotSatisfiable(ApiError):
    """416: a byte range or log offset past the end of the file."""


class ValidationFailed(ApiError):
    """422: the request is not valid; `field_errors` names each field (`config.data.batch_size`, ...)."""


class RateLimited(ApiError):
    """429: too many jobs queued for this key; `retry_after_s` is the server's Retry-After (seconds) or None."""

    @property
    def retry_after_s(self) -> float | None:
        value = self.headers.get("Retry-After")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


class ServiceUnavailable(ApiError):
    """503: a dependency of the API is down (the job, if any, stays QUEUED and is sent later)."""


class ServerError(ApiError):
    """Any other 5xx."""


class ChecksumMismatch(ClientError):
    """A downloaded file's sha256 differs from the one the server announced; the partial file is removed."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"sha256 mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class WaitTimeout(ClientError):
    """`Client.wait` gave up before the job reached a terminal state."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    415: UnsupportedMediaType, 416: RangeNotSatisfiable, 422: ValidationFailed, 429: RateLimited,
    503: ServiceUnavailable,
}


def _problem_of(response: httpx.Response) -> Problem:
    """The response's problem body; a bare Problem when the body is missing or not a problem."""
    phrase = response.reason_phrase or "Error"
    try:
        return Problem.model_validate_json(response.content)
    except (ValidationError, ValueError):
        detail = response.text.strip()[:500] if response.content else None
        return Problem(title=phrase, status=response.status_code, detail=detail or None)


def error_from_response(response: httpx.Response) -> ApiError:
    """The typed error for an error response (its body must have been read)."""
    problem = _problem_of(response)
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = ServerError if response.status_code >= 500 else ApiError
    return cls(problem, headers=response.headers)


def raise_for_problem(response: httpx.Response) -> None:
    """Raise the typed error when `response` is a 4xx/5xx; does nothing otherwise."""
    if response.status_code >= 400:
        response.read()
        raise error_from_response(response)
