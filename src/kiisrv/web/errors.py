"""The HTTP boundary's one translation of errors: every kiisrv error type (errors.py
has the tree) and the framework's own become ``{"error": ...}`` JSON with the type's
status, here and nowhere else."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from kiisrv.errors import KiisrvError


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """The handlers: kiisrv's errors, a malformed request, the framework's, a crash."""

    @app.exception_handler(KiisrvError)
    async def on_kiisrv_error(request: Request, exc: KiisrvError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10]
        )
        return error_response(400, f"invalid request: {problems}")

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal server error: {type(exc).__name__}")
