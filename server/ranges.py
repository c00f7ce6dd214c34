"""Range requests on file downloads (RFC 9110 §14): the answers Starlette's FileResponse does not give itself.

Owns: `RangedFileResponse`. Starlette serves `bytes` ranges (206, multipart for several) and If-Range; this
wrapper adds what the API promises on top (ARCHITECTURE.md, "HTTP API"):
- a malformed Range header is a 400 problem+json (not plain text);
- a Range in a unit other than `bytes` is ignored and the whole file is served (RFC 9110 §14.2);
- an unsatisfiable range is a 416 problem+json with `Content-Range: bytes */<size>`.
The checks run when the response is sent, on the request's own headers, so routes just return the response.
"""

from __future__ import annotations

import os
import re

from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from server.errors import problem_response

#: `unit=spec`: the unit is an RFC 9110 token.
_RANGE_RE = re.compile(r"^\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=(.*)$")


class RangedFileResponse(FileResponse):
    """A FileResponse whose Range errors are problem+json and which ignores ranges in unknown units."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        raw = headers.get(b"range")
        if raw is None or b"if-range" in headers:  # If-Range decides itself whether the range applies
            await super().__call__(scope, receive, send)
            return
        value = raw.decode("latin-1")
        match = _RANGE_RE.match(value)
        if match is None:
            await problem_response(400, f"malformed Range header {value[:100]!r}; use bytes=<start>-<end>",
                                   instance=scope.get("path"))(scope, receive, send)
            return
        if match.group(1).lower() != "bytes":  # RFC 9110 §14.2: an unknown range unit is ignored
            stripped = [(k, v) for k, v in scope["headers"] if k.lower() != b"range"]
            await super().__call__({**scope, "headers": stripped}, receive, send)
            return
        size = os.stat(self.path).st_size
        try:
            self._parse_range_header(value, size)
        except MalformedRangeHeader as exc:
            await problem_response(400, f"malformed Range header: {exc.content}",
                                   instance=scope.get("path"))(scope, receive, send)
            return
        except RangeNotSatisfiable:
            await problem_response(416, f"no byte of the range lies within the file ({size} bytes)",
                                   instance=scope.get("path"),
                                   headers={"Content-Range": f"bytes */{size}"})(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
