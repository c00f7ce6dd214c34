"""The ris-jobs client: `Client` (typed HTTP API access), its errors, and the `ris-jobs` user commands
(`client.cli`). Depends on api_schemas, httpx and the standard library only — no torch."""

from client.client import DEFAULT_URL, Client, StateChange, StreamItem
from client.errors import (
    ApiError,
    BadRequest,
    ChecksumMismatch,
    ClientError,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RangeNotSatisfiable,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    WaitTimeout,
)

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "BadRequest",
    "ChecksumMismatch",
    "Client",
    "ClientError",
    "Conflict",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "RangeNotSatisfiable",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "StateChange",
    "StreamItem",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationFailed",
    "WaitTimeout",
]
