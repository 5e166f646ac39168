"""Operations routes (docs/API.md, Endpoints): /v1/models, liveness, readiness and /metrics."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from service.engine import Engine
from tests.images import encode, gradient
from tests.service.http.test_v1 import error_of
from tests.service.servers import serve, tiny_settings

PNG = encode(gradient(), "PNG")


@pytest.fixture(params=["http", "asgi"])
async def client(request):
    async with serve(tiny_settings(), over=request.param) as (_, c):
        yield c


async def test_models_health_and_metrics(client: httpx.AsyncClient) -> None:
    model = (await client.get("/v1/models")).json()["data"][0]
    assert model["id"] == "vit_test_tiny" and model["checkpoint"]["format"] == "random"
    assert model["num_classes"] == 10 and model["embedding_dim"] == 48 and model["max_batch_size"] == 8
    assert (await client.get("/healthz")).json() == {"status": "alive"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    await client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
    await client.post("/v1/classify", content=b"", headers={"content-type": "image/png"})
    text = (await client.get("/metrics")).text
    for line in [
        'vit_requests_total{endpoint="/v1/classify",status="200"} 1.0',
        'vit_requests_total{endpoint="/v1/classify",status="400"} 1.0',
        'vit_images_total{endpoint="/v1/classify"} 1.0',
        'vit_rejected_total{reason="invalid_input"} 1.0',
        "vit_queue_depth 0.0",
        'vit_model_info{device="cpu",dtype="float32",model="vit_test_tiny"} 1.0',
    ]:
        assert line in text
    for name in [
        "vit_request_duration_seconds_bucket",
        "vit_queue_wait_seconds_count",
        "vit_batch_size_bucket",
        "vit_inference_duration_seconds_count",
        "vit_preprocess_duration_seconds_count",
    ]:
        assert name in text


async def test_readiness_before_and_after_warm_up() -> None:
    release = threading.Event()

    def slow_load(settings):
        release.wait(30)
        return Engine.from_settings(settings)

    async with serve(tiny_settings(), slow_load, wait_ready=False) as (_, c):
        assert (await c.get("/readyz")).status_code == 503
        assert (await c.get("/readyz")).json() == {"status": "loading"}
        assert (await c.get("/healthz")).status_code == 200
        early = await c.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
        assert error_of(early) == (503, "not_ready")
        release.set()
        for _ in range(200):
            if (await c.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert (await c.get("/readyz")).json() == {"status": "ready"}
