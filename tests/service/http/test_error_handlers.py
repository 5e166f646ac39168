"""service/http/error_handlers.py: every error becomes docs/API.md's body (the Open Inference
Protocol's under /v2), with its status and headers, counted by its reason; nothing unexpected
leaks a traceback."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import generate_latest

from service.errors import Overloaded, ServiceError, Unauthorized
from service.http.error_handlers import error_response, install_error_handlers
from service.metrics import Metrics


def app_raising() -> tuple[FastAPI, Metrics]:
    app, metrics = FastAPI(), Metrics()

    @app.get("/v1/full")
    async def full() -> None:
        raise Overloaded("the queue is full")

    @app.get("/v2/full")
    async def full_v2() -> None:
        raise Overloaded("the queue is full")

    @app.get("/v1/number")
    async def number(n: int) -> int:
        return n

    @app.get("/v1/bug")
    async def bug() -> None:
        raise KeyError("a bug of ours, at /work/service/x.py")

    install_error_handlers(app, metrics)
    return app, metrics


@pytest.fixture
async def client():
    app, metrics = app_raising()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c, metrics


def rejected(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("vit_rejected_total", {"reason": reason}) or 0.0


async def test_a_service_error_has_its_status_body_and_headers(client) -> None:
    c, metrics = client
    r = await c.get("/v1/full")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json() == {"error": {"type": "overloaded", "message": "the queue is full"}}
    v2 = await c.get("/v2/full")
    assert (v2.status_code, v2.json()) == (503, {"error": "the queue is full"})
    assert rejected(metrics, "queue_full") == 2


async def test_validation_404_and_405_are_service_errors(client) -> None:
    c, metrics = client
    bad = await c.get("/v1/number", params={"n": "seven"})
    assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_parameter"
    assert "n" in bad.json()["error"]["message"]
    missing = await c.get("/v1/nothing")
    assert (missing.status_code, missing.json()["error"]) == (
        404,
        {"type": "not_found", "message": "no route /v1/nothing"},
    )
    wrong = await c.post("/v1/full")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
    assert wrong.json()["error"]["type"] == "method_not_allowed"
    assert [rejected(metrics, r) for r in ("invalid_parameter", "not_found", "method_not_allowed")] == [1, 1, 1]


async def test_an_unexpected_error_is_a_500_without_its_traceback(client, caplog) -> None:
    c, metrics = client
    with caplog.at_level(logging.ERROR, logger="service"):
        r = await c.get("/v1/bug")
    assert r.status_code == 500
    assert r.json() == {"error": {"type": "internal", "message": "internal error; see the server log"}}
    assert "KeyError" in caplog.text  # the server's log has it, the client does not
    assert rejected(metrics, "internal") == 1
    assert "vit_rejected_total" in generate_latest(metrics.registry).decode()


def test_error_response_carries_the_errors_own_headers() -> None:
    response = error_response(Unauthorized(), "/v1/classify")
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert error_response(ServiceError("x"), "/v2/models/m/infer").body == b'{"error":"x"}'
