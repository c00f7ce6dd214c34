"""The web dashboard (`/ui/`) and the API docs (`/docs`, `/redoc`), served by the API itself.

Every file lies in `server/ui/` (HTML, plain JS modules, CSS and the vendored uPlot, Swagger UI and ReDoc), so
the pages load nothing from any other host and work offline. The pages and their assets hold no data and are
open without an API key; the data they show comes from the /v1 API, which the pages call with the X-API-Key
that the user typed (kept in the browser's sessionStorage, never in a URL). With API keys configured the
OpenAPI schema stays behind the key: the docs pages fetch it with the stored key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parents[1] / "ui"
UI_PREFIX = "/ui"
#: Paths that need no API key: the pages and their static assets (everything under UI_PREFIX/ too).
OPEN_PATHS = frozenset({"/", "/docs", "/redoc", UI_PREFIX})

router = APIRouter(include_in_schema=False)


@router.get("/")
def home() -> RedirectResponse:
    """The dashboard."""
    return RedirectResponse(f"{UI_PREFIX}/", status_code=307)


@router.get("/docs")
def swagger_ui() -> FileResponse:
    """Swagger UI on /openapi.json (self-hosted; its Authorize button takes the API key)."""
    return FileResponse(UI_DIR / "docs.html", media_type="text/html")


@router.get("/redoc")
def redoc() -> FileResponse:
    """ReDoc on /openapi.json (self-hosted)."""
    return FileResponse(UI_DIR / "redoc.html", media_type="text/html")


def is_open(path: str) -> bool:
    """Whether `path` is a dashboard or docs page or asset (served without an API key)."""
    return path in OPEN_PATHS or path.startswith(f"{UI_PREFIX}/")


def mount_ui(app: FastAPI) -> None:
    """Serve the pages and `server/ui/` at UI_PREFIX."""
    app.include_router(router)
    app.mount(UI_PREFIX, StaticFiles(directory=UI_DIR, html=True), name="ui")
