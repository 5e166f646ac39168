"""`create_app(settings)`: the FastAPI app, its lifespan, request context and error mapping."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import logging.config
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__, oip
from service.batching import Batcher
from service.decoding import DecodePool
from service.engine import Engine
from service.errors import MethodNotAllowed, NotFound, NotReady, ServiceError, invalid_parameter
from service.routes import router
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("service")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def create_app(settings: Settings, engine_factory: Callable[[Settings], Engine] = Engine.from_settings) -> FastAPI:
    """The service for `settings`; `engine_factory` loads the model (in a thread, after start-up)."""
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(_start(state, engine_factory))
        try:
            yield
        finally:
            await _stop(state, loader)

    app = FastAPI(
        title="vit-serve",
        version=__version__,
        summary="Vision Transformer labels and embeddings, micro-batched.",
        lifespan=lifespan,
    )
    app.state.service = state
    app.include_router(router)
    app.include_router(oip.router)
    _install_error_handlers(app, state)
    app.add_middleware(RequestContext, state=state)
    return app


async def _start(state: ServiceState, engine_factory: Callable[[Settings], Engine]) -> None:
    """Load, warm up, start the batcher, then turn ready; any failure turns `failed`."""
    try:
        engine = await asyncio.to_thread(engine_factory, state.settings)
        state.engine = engine
        await asyncio.to_thread(engine.warmup, state.max_batch_size)
        settings = state.settings
        pool = DecodePool(
            settings.decoders,
            engine.image_size,
            engine.preprocess,
            settings.max_image_pixels,
            settings.decode_timeout_s,
            settings.decode_memory_bytes,
            draft=settings.jpeg_draft,
            observe=state.metrics.preprocess_duration.observe,
            restarted=state.metrics.decode_restarts.inc,
        )
        state.decode_pool = pool
        await pool.start()
        batcher = Batcher(
            engine.stage,
            engine.forward,
            max_batch_size=state.max_batch_size,
            max_wait_s=state.settings.max_wait_ms / 1000,
            max_queue_size=state.max_queue_size,
            metrics=state.metrics,
            max_in_flight=2 if engine.pipelined else 1,
            compute_thread=engine.thread,
        )
        batcher.start()
        state.batcher = batcher
        state.metrics.model_info.labels(model=engine.model_id, device=str(engine.device), dtype=engine.dtype_name).set(
            1
        )
        state.status = "ready"
        log.info(
            "ready: %s on %s (%s), batches up to %d", engine.model_id, engine.device, engine.dtype, state.max_batch_size
        )
    except Exception:
        state.status = "failed"
        log.exception("start-up failed")


async def drain(state: ServiceState) -> None:
    """Turn `draining` (readiness 503, new requests 503 not_ready), then answer every admitted
    request, those still being decoded included, for at most VIT_SHUTDOWN_TIMEOUT_S; what is
    left after that gets 503. Safe to call twice."""
    state.status = "draining"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + state.settings.shutdown_timeout_s
    while state.admitted and loop.time() < deadline:
        await asyncio.sleep(0.005)
    if state.batcher is not None and state.batcher.running:
        finished = await state.batcher.drain(max(0.0, deadline - loop.time())) and not state.admitted
        log.info("drained the queue" if finished else "shutdown timeout: unfinished requests were answered 503")


async def _stop(state: ServiceState, loader: asyncio.Task[None]) -> None:
    """Stop loading if still loading, drain, and end the decode processes."""
    loader.cancel()
    await asyncio.gather(loader, return_exceptions=True)
    await drain(state)
    if state.decode_pool is not None:
        state.decode_pool.close()


def error_response(error: ServiceError, path: str) -> JSONResponse:
    """SPEC §4's error body; under /v2, the Open Inference Protocol's `{"error": message}`."""
    body: dict[str, Any] = {"error": {"type": error.type, "message": error.message}}
    if path.startswith("/v2"):
        body = {"error": error.message}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def _install_error_handlers(app: FastAPI, state: ServiceState) -> None:
    """Every error becomes SPEC §4's body here, and only here."""

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        exc = cast(ServiceError, exc)
        if exc.status >= 500 and exc.status != 503 and exc.status != 504:
            log.error("%s: %s", exc.type, exc.message)
        state.metrics.rejected.labels(reason=exc.reason).inc()
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
        state.metrics.rejected.labels(reason="internal").inc()
        return error_response(ServiceError("internal error; see the server log"), request.url.path)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


class RequestContext:
    """Pure ASGI middleware: a request id for logs and the response, request count and duration."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app, self.metrics = app, state.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        token = request_id.set(rid)
        status = 0  # no response started yet

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # The server cancels what is still unanswered when it stops (a body still arriving, at
            # the end of the drain): that is one more request turned away, so it gets 503 like them.
            task = asyncio.current_task()
            if status or task is None:
                raise
            task.uncancel()
            await error_response(NotReady("the service is shutting down"), scope["path"])(scope, receive, send_with_id)
        finally:
            route = scope.get("route")  # set by routing: its template, e.g. /v2/models/{name}/infer
            endpoint = route.path if route is not None else "other"
            elapsed = time.perf_counter() - start
            status = status or 500  # the app raised before answering; the server answers 500
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.request_duration.labels(endpoint=endpoint).observe(elapsed)
            log.info("%s %s %d %.1fms", scope["method"], scope["path"], status, elapsed * 1000)
            request_id.reset(token)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure_logging(level: str) -> dict[str, Any]:
    """Log lines carry the request id; returned as a dictConfig for uvicorn too."""
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["request_id"]}},
        "loggers": {
            "": {"handlers": ["stderr"], "level": level.upper()},
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
        },
    }
    logging.config.dictConfig(config)
    return config
