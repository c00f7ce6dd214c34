"""Serving an artifact-store object over HTTP: ETag / If-None-Match (304), Range / If-Range (206, 416), HEAD,
and an optional redirect to a presigned URL (ARTIFACT_PRESIGNED_REDIRECT).

Owns `object_response`, shared by checkpoint and job-artifact downloads. The bytes stream from the store in
1 MiB chunks (`ObjectStore.iter_range`), so a large checkpoint on S3 is never held in memory.

Ranges: one `bytes=a-b`, `bytes=a-` or `bytes=-n` range is served as 206 (416 with `Content-Range: bytes */size`
when it starts past the end). A Range header that is malformed or asks for several ranges is ignored, as RFC 9110
§14.2 allows, and the whole object is sent (200): that never amplifies a response.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import Response
from fastapi.responses import RedirectResponse, StreamingResponse

from server.settings import Settings
from server.store.objects import ObjectInfo, ObjectStore

_RANGE_RE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weak comparison, `*` matches)."""
    if if_none_match is None:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """[start, end) of a single satisfiable range; None to send everything; "unsatisfiable" for a 416."""
    if header is None:
        return None
    match = _RANGE_RE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size
    start = int(first)
    end = size if not last else int(last) + 1
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size)


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
    if wanted == "unsatisfiable":
        return Response(status_code=416, headers={**out, "Content-Range": f"bytes */{size}"})
    status, start, end = 200, 0, size
    if isinstance(wanted, tuple):
        status, (start, end) = 206, wanted
        out["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    out["Content-Length"] = str(end - start)
    if method == "HEAD":
        return Response(status_code=status, headers=out, media_type=media_type)
    return StreamingResponse(objects.iter_range(key, start, end), status_code=status, headers=out,
                             media_type=media_type)
