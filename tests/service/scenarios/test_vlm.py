"""For vision-language pipelines: OpenAI-style embeddings (with the `openai` client itself, over
real HTTP) and /v1/features, the hidden states of a chosen layer, through the shared batches."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import openai
import pytest
import torch

from model.preprocess import decode_image
from service.engine import Engine
from tests.images import encode, gradient, photo
from tests.service.servers import controlled, live_server, serve, tiny_settings, until

PNG = encode(gradient(), "PNG")
JPEG = encode(photo(), "JPEG")
DATA_URLS = ["data:image/png;base64," + base64.b64encode(PNG).decode(), base64.b64encode(JPEG).decode()]


async def test_the_openai_client_works_unchanged() -> None:
    with live_server(tiny_settings(api_keys=["sk-local"])) as (url, _):
        native = httpx.post(
            f"{url}/v1/embeddings", json={"images": DATA_URLS}, headers={"authorization": "Bearer sk-local"}
        )
        expected = np.array([d["embedding"] for d in native.json()["data"]], dtype=np.float32)
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-local", max_retries=0) as client:
            default = await client.embeddings.create(model="vit_test_tiny", input=DATA_URLS)  # asks for base64
            floats = await client.embeddings.create(model="vit_test_tiny", input=DATA_URLS, encoding_format="float")
            one = await client.embeddings.create(model="vit_test_tiny", input=DATA_URLS[0])
            with pytest.raises(openai.NotFoundError):
                await client.embeddings.create(model="text-embedding-3-small", input=DATA_URLS)
            with pytest.raises(openai.UnprocessableEntityError):
                await client.embeddings.create(model="vit_test_tiny", input=DATA_URLS, dimensions=8)
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError):
                await client.embeddings.create(model="vit_test_tiny", input=DATA_URLS)
    for answer in (default, floats):
        assert answer.object == "list" and answer.model == "vit_test_tiny"
        assert [d.index for d in answer.data] == [0, 1] and all(d.object == "embedding" for d in answer.data)
        np.testing.assert_allclose(np.array([d.embedding for d in answer.data]), expected, rtol=1e-6)
        assert answer.usage.prompt_tokens == answer.usage.total_tokens == 2 * 17  # 16 patches + [class], per image
    np.testing.assert_allclose(one.data[0].embedding, expected[0], rtol=1e-6)


async def test_openai_form_is_only_for_embeddings() -> None:
    async with serve(tiny_settings(), over="asgi") as (_, c):
        body = {"model": "vit_test_tiny", "input": DATA_URLS}
        assert (await c.post("/v1/classify", json=body)).json()["error"]["type"] == "invalid_request"
        assert (await c.post("/v1/features", json=body)).json()["error"]["type"] == "invalid_request"
        normalised = (await c.post("/v1/embeddings", json=body | {"normalize": True})).json()
        norms = [np.linalg.norm(d["embedding"]) for d in normalised["data"]]
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def _decode(item: dict, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(item["features"]), dtype="<f2" if dtype == "float16" else "<f4").reshape(
        item["shape"]
    )


@pytest.mark.parametrize(
    ("layer", "tokens", "dtype"), [(-1, "all", "float32"), (-2, "patch", "float16"), (0, "all", "float16")]
)
async def test_features_are_the_models_hidden_states(layer: int, tokens: str, dtype: str) -> None:
    settings = tiny_settings()
    async with serve(settings, over="asgi") as (app, c):
        response = await c.post(f"/v1/features?layer={layer}&tokens={tokens}&dtype={dtype}", json={"images": DATA_URLS})
        engine: Engine = app.state.service.engine.engine
    assert response.status_code == 200
    body = response.json()
    assert (body["layer"], body["tokens"], body["dtype"], body["model"]) == (layer, tokens, dtype, "vit_test_tiny")
    with torch.inference_mode():
        # decoded as the server decodes (VIT_JPEG_DRAFT: the JPEG at a quarter of its size)
        pixels = engine.stage([decode_image(data, 32, engine.preprocess, draft=True) for data in (PNG, JPEG)])
        expected = engine.model(pixels, [layer]).hidden_states[layer].numpy()
    if tokens == "patch":
        expected = expected[:, 1:]
    for i, item in enumerate(body["data"]):
        assert item["index"] == i and item["shape"] == [17 if tokens == "all" else 16, 48]
        tolerance = 2e-3 if dtype == "float16" else 1e-5
        np.testing.assert_allclose(_decode(item, dtype), expected[i], rtol=tolerance, atol=tolerance)


async def test_features_and_labels_share_one_forward_pass() -> None:
    async with serve(tiny_settings(), controlled, over="asgi") as (app, c):
        engine, batcher = app.state.service.engine.engine, app.state.service.engine.batcher
        warmup = len(engine.batch_sizes)
        engine.gate.clear()
        blocker = asyncio.create_task(c.post("/v1/embeddings", content=PNG, headers={"content-type": "image/png"}))
        await until(lambda: batcher.in_flight == 1)
        labels = asyncio.create_task(c.post("/v1/classify", content=PNG, headers={"content-type": "image/png"}))
        feats = asyncio.create_task(c.post("/v1/features?layer=-2", content=PNG, headers={"content-type": "image/png"}))
        await until(lambda: batcher.queue_depth == 2)
        engine.gate.set()
        answers = await asyncio.gather(blocker, labels, feats)
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert engine.batch_sizes[warmup:] == [1, 2]  # the label and the feature request in one batch
        assert answers[2].json()["data"][0]["shape"] == [17, 48]


@pytest.mark.parametrize(
    "params",
    [{"layer": 3}, {"layer": -4}, {"layer": "x"}, {"tokens": "cls"}, {"dtype": "bfloat16"}, {"pooling": "mean"}],
)
async def test_bad_feature_parameters_are_422(params: dict) -> None:
    async with serve(tiny_settings(), over="asgi") as (_, c):
        response = await c.post("/v1/features", json={"images": DATA_URLS} | params)  # body fields, as queries allow
        assert response.status_code == 422 and response.json()["error"]["type"] == "invalid_parameter"
        if "pooling" not in params:
            query = await c.post("/v1/features", params=params, content=PNG, headers={"content-type": "image/png"})
            assert query.status_code == 422
