"""Weaviate's inference contract (service/http/weaviate.py), with the checks of the reference
multi2vec-clip container's smoke test and of the img2vec-neural module's client: 204 probes, a
JSON object from /meta, unit vectors of the model's dimension, errors as {"error": message}."""

from __future__ import annotations

import base64
import threading

import httpx
import numpy as np
import pytest

from service.engine import Engine
from tests.images import encode, gradient, photo
from tests.service.servers import serve, tiny_settings

IMAGES = [base64.b64encode(encode(gradient(), "PNG")).decode(), base64.b64encode(encode(photo(), "JPEG")).decode()]


@pytest.fixture(params=["http", "asgi"])
async def client(request):
    async with serve(tiny_settings(max_images_per_request=4), over=request.param) as (_, c):
        yield c


def error(response: httpx.Response) -> int:
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return response.status_code


async def test_the_probes_and_meta_answer_as_the_modules_expect(client: httpx.AsyncClient) -> None:
    for probe in ("live", "ready"):
        response = await client.get(f"/weaviate/.well-known/{probe}")
        assert response.status_code == 204 and response.content == b""
    meta = await client.get("/weaviate/meta")
    assert meta.status_code == 200 and meta.json()["model"]["id"] == "vit_test_tiny"


async def test_vectors_are_the_unit_embeddings_of_v1(client: httpx.AsyncClient) -> None:
    native = (await client.post("/v1/embeddings", json={"images": IMAGES, "normalize": True})).json()["data"]
    expected = np.array([row["embedding"] for row in native])
    one = (await client.post("/weaviate/vectors", json={"id": "img-1", "image": IMAGES[1]})).json()
    assert one["id"] == "img-1" and one["dim"] == len(one["vector"]) == 48
    np.testing.assert_allclose(one["vector"], expected[1], rtol=1e-5, atol=1e-6)
    both = await client.post("/weaviate/vectorize", json={"texts": None, "images": IMAGES})
    assert both.status_code == 200 and both.json()["textVectors"] == []
    vectors = np.array(both.json()["imageVectors"])
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/weaviate/vectorize", {"texts": ["This is plane"], "images": IMAGES[:1]}, 422),  # no text tower
        ("/weaviate/vectors", {"id": "x", "image": "not base64!"}, 400),
        ("/weaviate/vectors", {"id": "x", "image": base64.b64encode(b"not an image").decode()}, 400),
        ("/weaviate/vectors", {"id": "x"}, 400),
        ("/weaviate/vectors", {"id": "x", "image": IMAGES[0], "extra": 1}, 400),
        ("/weaviate/vectorize", {"images": IMAGES * 3}, 413),  # over VIT_MAX_IMAGES_PER_REQUEST (4)
    ],
)
async def test_errors_are_an_error_string_with_a_4xx(
    client: httpx.AsyncClient, path: str, body: dict, status: int
) -> None:
    assert error(await client.post(path, json=body)) == status
    assert (await client.post("/weaviate/vectors", json={"id": "x", "image": IMAGES[0]})).status_code == 200


async def test_not_ready_while_loading() -> None:
    release = threading.Event()

    def slow_load(settings):
        release.wait(30)
        return Engine.from_settings(settings)

    async with serve(tiny_settings(), slow_load, over="asgi", wait_ready=False) as (_, c):
        assert (await c.get("/weaviate/.well-known/live")).status_code == 204
        assert error(await c.get("/weaviate/.well-known/ready")) == 503
        release.set()


async def test_with_api_keys_the_model_routes_need_one_and_the_probes_do_not() -> None:
    async with serve(tiny_settings(api_keys="k1"), over="asgi") as (_, c):
        assert error(await c.post("/weaviate/vectors", json={"id": "x", "image": IMAGES[0]})) == 401
        assert error(await c.get("/weaviate/meta")) == 401
        assert (await c.get("/weaviate/.well-known/ready")).status_code == 204
        keyed = await c.post(
            "/weaviate/vectors", json={"id": "x", "image": IMAGES[0]}, headers={"authorization": "Bearer k1"}
        )
        assert keyed.status_code == 200
