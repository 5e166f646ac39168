"""Where every error becomes a response, and only here: docs/API.md's error body, or under /v2
(the Open Inference Protocol) and /weaviate (Weaviate's modules) their `{"error": message}`."""

from __future__ import annotations

import logging
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import MethodNotAllowed, NotFound, ServiceError, invalid_parameter
from service.metrics import Metrics

log = logging.getLogger("service")


def error_response(error: ServiceError, path: str) -> JSONResponse:
    """The error's body for `path`, with its status and headers (Retry-After, WWW-Authenticate)."""
    body: dict[str, Any] = {"error": {"type": error.type, "message": error.message}}
    if path.startswith(("/v2", "/weaviate")):
        body = {"error": error.message}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Service errors, FastAPI's validation errors, starlette's 404/405 and anything unexpected
    (500, logged with its traceback), each counted in vit_rejected_total by its reason."""

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        exc = cast(ServiceError, exc)
        if exc.status >= 500 and exc.status != 503 and exc.status != 504:
            log.error("%s: %s", exc.type, exc.message)
        metrics.rejected.labels(reason=exc.reason).inc()
        return error_response(exc, request.url.path)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        return await service_error(request, invalid_parameter(cast(RequestValidationError, exc).errors()))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        exc = cast(StarletteHTTPException, exc)
        if exc.status_code == 405:  # keeps starlette's Allow header
            error = MethodNotAllowed(f"{request.method} is not allowed here", dict(exc.headers or {}))
            return await service_error(request, error)
        return await service_error(request, NotFound(f"no route {request.url.path}"))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        metrics.rejected.labels(reason="internal").inc()
        return error_response(ServiceError("internal error; see the server log"), request.url.path)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
