"""service/http/middleware.py: the request id (the client's when it is sane, else a new one) in
the response, the handler's context and the log line; the request metrics by route template;
and a 503 for a request the server cancels before answering it."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import httpx
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from service.http.middleware import RequestContext
from service.logs import request_id
from service.metrics import Metrics


def echo_app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/items/{n}")
    async def item(n: int) -> dict[str, str]:
        return {"seen_as": request_id.get()}

    return app


async def get(metrics: Metrics, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=RequestContext(echo_app(), metrics))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        return await c.get(path, headers=headers)


async def test_a_sane_request_id_is_kept_and_any_other_replaced() -> None:
    metrics = Metrics()
    kept = await get(metrics, "/v1/items/1", **{"x-request-id": "trace-42"})
    assert kept.headers["x-request-id"] == kept.json()["seen_as"] == "trace-42"
    for sent in ("", "x" * 65, "a\tb"):
        r = await get(metrics, "/v1/items/1", **{"x-request-id": sent})
        assert re.fullmatch("[0-9a-f]{32}", r.headers["x-request-id"]), sent
        assert r.json()["seen_as"] == r.headers["x-request-id"]
    assert request_id.get() == "-"  # reset once answered


async def test_requests_are_counted_by_route_template_and_logged(caplog) -> None:
    metrics = Metrics()
    with caplog.at_level(logging.INFO, logger="service"):
        for path in ("/v1/items/1", "/v1/items/2", "/v1/nowhere"):
            await get(metrics, path)
    sample = metrics.registry.get_sample_value
    assert sample("vit_requests_total", {"endpoint": "/v1/items/{n}", "status": "200"}) == 2
    assert sample("vit_requests_total", {"endpoint": "other", "status": "404"}) == 1
    assert sample("vit_request_duration_seconds_count", {"endpoint": "/v1/items/{n}"}) == 2
    assert re.search(r"GET /v1/nowhere 404 \d+\.\dms", caplog.text)


async def test_a_request_cancelled_before_its_answer_gets_503() -> None:
    """At the end of the drain the server cancels what it has not answered (a body still
    arriving): that request is turned away like every other at shutdown."""
    arrived = asyncio.Event()

    async def waits_forever(scope: Scope, receive: Receive, send: Send) -> None:
        arrived.set()
        await asyncio.Event().wait()

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    metrics = Metrics()
    scope: Scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": [], "query_string": b""}
    task = asyncio.create_task(RequestContext(waits_forever, metrics)(scope, receive, send))
    await arrived.wait()
    task.cancel()
    await task  # answered, not cancelled
    assert sent[0]["status"] == 503
    assert json.loads(sent[1]["body"])["error"] == {"type": "not_ready", "message": "the service is shutting down"}
    assert metrics.registry.get_sample_value("vit_requests_total", {"endpoint": "other", "status": "503"}) == 1
