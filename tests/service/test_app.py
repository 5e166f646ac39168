"""service/app.py: the app put together: its routers, error handlers and request context on every
route; an engine process's front-end starting only once connected, and refusing to start
without it; the schema stating the loaded model's bounds. (Probes while loading:
tests/service/http/test_ops.py; the offline /docs page: tests/service/scenarios/test_docs_page.py.)"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.engine import Engine
from service.engine.handle import EngineHandle, EngineSource, LocalEngine
from service.metrics import Metrics
from service.settings import Settings
from tests.service.servers import serve, tiny_settings


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_every_route_answers_through_the_request_context_and_error_handlers() -> None:
    async with serve(tiny_settings(), over="asgi") as (_, c):
        schema = (await c.get("/openapi.json")).json()
        routes = {"/v1/classify", "/v1/embeddings", "/v1/features", "/healthz", "/metrics", "/v2/models/{name}/infer"}
        assert routes <= set(schema["paths"])  # the three routers
        missing = await c.get("/v1/nowhere")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
        assert len(missing.headers["x-request-id"]) == 32
        assert (await c.get("/healthz")).headers["x-request-id"] != missing.headers["x-request-id"]
        top_k = schema["paths"]["/v1/classify"]["post"]["parameters"][0]
        assert top_k["name"] == "top_k" and top_k["schema"]["anyOf"][0]["maximum"] == 10  # the model's classes


def front_end(connect_gate: asyncio.Event, fail: bool = False) -> EngineSource:
    """A source as an engine process's front-end has (listening once connected), whose
    connection waits for `connect_gate`, then fails or hands over an engine in this process."""

    async def connect(settings: Settings, metrics: Metrics) -> EngineHandle:
        await connect_gate.wait()
        if fail:
            raise ConnectionRefusedError("no engine process")
        return await LocalEngine.start(Engine.from_settings(settings), settings, metrics)

    return EngineSource(connect, listen_once_ready=True)


async def test_a_front_end_starts_serving_only_once_connected() -> None:
    gate = asyncio.Event()
    app = create_app(tiny_settings(), front_end(gate))
    lifespan = app.router.lifespan_context(app)
    starting = asyncio.create_task(lifespan.__aenter__())
    await asyncio.sleep(0.2)
    assert not starting.done() and app.state.service.status == "loading"
    gate.set()
    await asyncio.wait_for(starting, 30)
    try:
        assert app.state.service.status == "ready"  # the moment it could listen
        async with client(app) as c:
            assert (await c.get("/readyz")).json() == {"status": "ready"}
    finally:
        await lifespan.__aexit__(None, None, None)


async def test_a_front_end_without_its_engine_refuses_to_start() -> None:
    gate = asyncio.Event()
    gate.set()
    app = create_app(tiny_settings(), front_end(gate, fail=True))
    with pytest.raises(RuntimeError, match="the front-end failed to start"):
        async with app.router.lifespan_context(app):
            pass
    assert app.state.service.status == "failed"
