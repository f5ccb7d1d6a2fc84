"""The server's other pages: the versions it builds, the layouts it serves, the
compatibility report, its health, and the status page's own files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from kiisrv.core import Kiisrv
from kiisrv.errors import NotFound
from kiisrv.settings import Settings
from kiisrv.tools import canary

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"chart.umd.min.js": "text/javascript", "status.js": "text/javascript"}
SIGNING_KEY_HEADER = "Kiisrv-Signing-Key"


def router(server: Kiisrv, settings: Settings) -> APIRouter:
    routes = APIRouter()

    @routes.get("/versions")
    async def versions(response: Response) -> dict[str, Any]:
        """Versions whose controller image is present, with their release details. The
        key the zips' manifests are signed with rides along as a header: the body is the
        Configurator's (version name -> release), and a key there would read as a version."""
        available = await server.catalog.available()
        if server.runner.signer is not None:
            response.headers[SIGNING_KEY_HEADER] = server.runner.signer.public_json()["key"]
        return {name: a.info.as_json() if a.info else None for name, a in available.items()}

    @routes.get("/signing-key")
    async def signing_key() -> dict[str, str]:
        """The public key this deployment signs every zip's manifest with (Ed25519,
        base64): what ``kiisrv verify --server`` checks a zip against."""
        if server.runner.signer is None:
            raise NotFound("this server signs nothing")
        return server.runner.signer.public_json()

    @routes.get("/layouts/{name}")
    async def layout(name: str, rev: str | None = None) -> Response:
        """A keyboard's layout JSON; aliases resolve to their target."""
        content = await anyio.to_thread.run_sync(server.layouts.read, name, rev)
        return Response(content, media_type="application/json")

    @routes.get("/static/{name}")
    async def static(name: str) -> FileResponse:
        """The status page's own files (Chart.js): no CDN, self-hosters may be offline."""
        if name not in STATIC_FILES:
            raise NotFound(f"no static file {name!r}")
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])

    @routes.get("/compat")
    async def compat() -> Response:
        """The latest compatibility report of ``kiisrv canary``: layout x version."""
        path = settings.data_dir / canary.REPORT_NAME
        try:
            content = await anyio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError:
            raise NotFound("no compatibility report yet: run `kiisrv canary`") from None
        return Response(content, media_type="application/json")

    @routes.get("/healthz")
    async def health() -> dict[str, object]:
        """Liveness for container health checks; says whether the engine answers."""
        engine = await server.engine.ping()
        return {"status": "ok", "engine": engine}

    return routes
