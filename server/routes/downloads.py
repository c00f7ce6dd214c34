"""Serving an artifact-store object over HTTP: ETag / If-None-Match (304), Range / If-Range (206, 416), HEAD,
and an optional redirect to a presigned URL (ARTIFACT_PRESIGNED_REDIRECT).

Owns `object_response`, shared by checkpoint and job-artifact downloads. The bytes stream from the store in
1 MiB chunks (`ObjectStore.iter_range`), so a large checkpoint on S3 is never held in memory.

Ranges (RFC 9110 §14): one `bytes=a-b`, `bytes=a-` or `bytes=-n` range is served as 206; a range that starts
past the end is a 416 problem+json with `Content-Range: bytes */size`; a malformed Range header is a 400
problem+json naming it; a range in another unit than `bytes`, or several ranges at once, is ignored and the whole
object is sent (200), as §14.2 allows: that never amplifies a response.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import Response
from fastapi.responses import RedirectResponse, StreamingResponse

from server.errors import problem_response
from server.settings import Settings
from server.store.objects import ObjectInfo, ObjectStore

#: `unit=spec`: the unit is an RFC 9110 token.
_UNIT_RE = re.compile(r"^\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=(.*)$")
_SPEC_RE = re.compile(r"^(\d*)-(\d*)$")
MALFORMED, UNSATISFIABLE = "malformed", "unsatisfiable"


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weak comparison, `*` matches)."""
    if if_none_match is None:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """[start, end) of one satisfiable byte range; None to send everything; MALFORMED (400) or UNSATISFIABLE
    (416)."""
    if header is None:
        return None
    unit = _UNIT_RE.match(header)
    if unit is None:
        return MALFORMED
    if unit.group(1).lower() != "bytes":
        return None
    spec = unit.group(2).strip()
    if "," in spec:
        return None
    match = _SPEC_RE.match(spec)
    if match is None or match.groups() == ("", ""):
        return MALFORMED
    first, last = match.groups()
    if not first:  # suffix: the last n bytes
        n = int(last)
        return UNSATISFIABLE if n == 0 else (max(0, size - n), size)
    start = int(first)
    if last and int(last) < start:
        return MALFORMED
    if start >= size:
        return UNSATISFIABLE
    return start, (min(size, int(last) + 1) if last else size)


def object_response(
    objects: ObjectStore,
    key: str,
    info: ObjectInfo,
    *,
    settings: Settings,
    method: str,
    media_type: str,
    etag: str | None = None,
    filename: str | None = None,
    range_header: str | None = None,
    if_range: str | None = None,
    if_none_match: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The response for a GET or HEAD of `key` (whose stat is `info`)."""
    out = {"Accept-Ranges": "bytes", "Cache-Control": "private, no-cache", **(headers or {})}
    if etag is not None:
        out["ETag"] = etag
        if etag_matches(if_none_match, etag):
            return Response(status_code=304, headers=out)
    if filename is not None:
        out["Content-Disposition"] = f"attachment; filename=\"{quote(filename)}\""
    if settings.artifact_presigned_redirect:
        url = objects.presigned_url(key, expires_s=settings.artifact_presigned_expiry_s)
        if url is not None:
            return RedirectResponse(url, status_code=307, headers=out)
    size = info.size
    wanted = parse_range(range_header, size) if (if_range is None or if_range == etag) else None
    if wanted == MALFORMED:
        return problem_response(400, f"malformed Range header {str(range_header)[:100]!r}; use bytes=<start>-<end>")
    if wanted == UNSATISFIABLE:
        return problem_response(416, f"no byte of the range lies within the file ({size} bytes)",
                                headers={"Content-Range": f"bytes */{size}"})
    status, start, end = 200, 0, size
    if isinstance(wanted, tuple):
        status, (start, end) = 206, wanted
        out["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    out["Content-Length"] = str(end - start)
    if method == "HEAD":
        return Response(status_code=status, headers=out, media_type=media_type)
    return StreamingResponse(objects.iter_range(key, start, end), status_code=status, headers=out,
                             media_type=media_type)
