"""Request context, as pure ASGI middleware: a request id for logs and the response, the request
count and duration metrics, and a 503 for what the server cancels at shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import NotReady
from service.http.error_handlers import error_response
from service.logs import request_id
from service.metrics import Metrics

log = logging.getLogger("service")


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

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
