"""The FastAPI application (ARCHITECTURE.md, "HTTP API"): `create_app(settings=None) -> FastAPI`.

Owns: wiring only — engine, sessions, artifact store, Redis client, Celery producer and Prometheus registry on
`app.state`; error handlers and the request guard; routers (every /v1 route and /metrics behind the API key;
the dashboard at /ui/ and the docs at /docs and /redoc open, see server.routes.ui);
and the dispatch sweep that re-sends QUEUED jobs whose enqueue failed. Never imports torch or worker/.

Run: `uvicorn server.main:create_app --factory`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import redis
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from server.deps import ApiKeyMiddleware, authenticate, forbid_unknown_query
from server.dispatch import dispatch_pending, make_producer
from server.errors import RequestGuardMiddleware, install_error_handlers
from server.ratelimit import RateLimiter
from server.routes import artifacts as artifact_routes
from server.routes import checkpoints, health, jobs, metrics, ui, uploads
from server.settings import Settings, get_settings
from server.store import ArtifactStore, create_schema, make_engine, make_session_factory

log = logging.getLogger(__name__)

#: A QUEUED job without a Celery message is re-sent once it has waited this long, seconds (at least), so
#: that the sweep never races a request that is still enqueueing.
MIN_UNDISPATCHED_AGE_S = 10.0


async def _dispatch_sweep(app: FastAPI) -> None:
    """Every REAPER_INTERVAL_S, re-send QUEUED jobs that never reached the broker (e.g. Redis was down)."""
    settings: Settings = app.state.settings
    older_than_s = max(MIN_UNDISPATCHED_AGE_S, settings.reaper_interval_s)
    while True:
        await anyio.sleep(settings.reaper_interval_s)
        try:
            sent = await run_in_threadpool(
                dispatch_pending, app.state.session_factory, app.state.producer, settings.job_queue,
                older_than_s=older_than_s,
            )
        except Exception:  # a background loop is a process boundary: log and keep sweeping
            log.exception("dispatch sweep failed")
            continue
        if sent:
            log.info("dispatch sweep re-sent %d job(s)", len(sent))


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_dispatch_sweep, app)
        yield
        tasks.cancel_scope.cancel()
    app.state.redis.close()
    app.state.engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API from `settings` (default: the environment). Creates missing tables."""
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)
    create_schema(engine)
    session_factory = make_session_factory(engine)
    redis_client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1.0, socket_timeout=2.0)
    artifacts = ArtifactStore(settings.artifact_location)

    # With API keys on, the schema is served behind the key too (every data endpoint but health and readiness
    # answers 401 without a valid key); the self-hosted docs pages stay open and fetch it with the user's key.
    open_schema = not settings.auth_enabled
    app = FastAPI(
        title="ris-jobs", version="0.1.0", lifespan=_lifespan,
        description="Training and diagnosing learned RIS near-field localization models, as a service. "
                    "Dashboard: [/ui/](/ui/).",
        openapi_url="/openapi.json" if open_schema else None, docs_url=None, redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = session_factory
    app.state.redis = redis_client
    app.state.producer = make_producer(settings)
    app.state.artifacts = artifacts
    app.state.rate_limiter = RateLimiter(redis_client, rate_per_s=settings.rate_limit_per_s,
                                         burst=settings.rate_limit_burst)
    app.state.metrics_registry = health.make_registry(session_factory, redis_client, settings.job_queue)

    install_error_handlers(app)
    app.add_middleware(RequestGuardMiddleware, max_body_bytes=settings.max_body_bytes,
                       upload_path=uploads.UPLOAD_PATH, max_upload_bytes=settings.max_upload_bytes)
    auth = [Depends(authenticate), Depends(forbid_unknown_query)]
    for router in (jobs.router, metrics.router, checkpoints.router, artifact_routes.router, uploads.router):
        app.include_router(router, dependencies=auth)
    app.include_router(health.router)
    ui.mount_ui(app)
    # added last, so it runs first: an unauthenticated request gets 401 before any size or type check
    app.add_middleware(ApiKeyMiddleware, settings=settings, open_paths=frozenset({"/healthz", "/readyz"}),
                       is_open=ui.is_open)
    if not open_schema:
        app.add_api_route("/openapi.json", lambda: JSONResponse(app.openapi()), include_in_schema=False,
                          dependencies=auth)
    return app
