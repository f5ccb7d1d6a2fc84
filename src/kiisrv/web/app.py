"""The HTTP API (shared/spec/API.md), unchanged for deployed Configurators: one app,
assembled from a router per concern around the one core object.

    builds.py   POST / (and any path), /tmp/<zip>, /builds/<hash>, its log
    status.py   /status, /, /status.json, the operator's /status/detail
    stats.py    /stats, /stats.json
    metrics.py  /metrics
    pages.py    /versions, /layouts/<name>, /compat, /healthz, /static/<file>

Errors are raised as kiisrv types everywhere below; errors.py is the one place that
turns them, and the framework's own errors, into ``{"error": ...}`` JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from kiisrv import __version__
from kiisrv.core import Kiisrv
from kiisrv.recipe.layout import request_schema
from kiisrv.settings import Settings
from kiisrv.web import builds, errors, metrics, pages, stats, status
from kiisrv.web.httpguard import HttpRules
from kiisrv.web.middleware import BodyLimit, CountRequests


def create_app(settings: Settings) -> FastAPI:
    server = Kiisrv(settings)
    measures = metrics.Metrics(server)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(title="kiisrv", version=__version__, lifespan=lifespan)
    app.state.kiisrv = server
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(HttpRules)
    app.add_middleware(CountRequests, measures=measures)
    errors.install(app)
    app.include_router(pages.router(server, settings))
    app.include_router(status.router(server, settings))
    app.include_router(stats.router(server))
    app.include_router(metrics.router(measures))
    app.include_router(builds.router(server, settings, measures))  # its catch-all: last

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            defs = request_schema()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(defs.pop("$defs", {}))
            components["BuildRequest"] = defs
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
