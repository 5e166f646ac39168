"""/v1 (docs/API.md): the three input forms, every row of the error table, parameters, API keys,
overload and deadlines, over real HTTP (uvicorn on 127.0.0.1) and, where cheap, over the ASGI
transport too."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.images import encode, gradient, photo, png_header_claiming
from tests.service.servers import controlled, serve, tiny_settings, until

JPEG = encode(photo(), "JPEG")
PNG = encode(gradient(), "PNG")


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}
    assert "Traceback" not in response.text and "/work" not in response.text
    return response.status_code, body["error"]["type"]


@pytest.fixture(params=["http", "asgi"])
async def client(request):
    async with serve(tiny_settings(), over=request.param) as (_, c):
        yield c


async def test_three_input_forms_give_identical_answers(client: httpx.AsyncClient) -> None:
    raw = await client.post("/v1/classify?top_k=3", content=JPEG, headers={"content-type": "image/jpeg"})
    multi = await client.post("/v1/classify?top_k=3", files=[("image", ("a.jpg", JPEG, "image/jpeg"))])
    js = await client.post("/v1/classify", json={"images": [base64.b64encode(JPEG).decode()], "top_k": 3})
    url = await client.post(
        "/v1/classify?top_k=3", json={"images": ["data:image/jpeg;base64," + base64.b64encode(JPEG).decode()]}
    )
    assert raw.status_code == 200
    assert raw.json() == multi.json() == js.json() == url.json()
    predictions = raw.json()["results"][0]["predictions"]
    assert len(predictions) == 3
    assert [p["score"] for p in predictions] == sorted((p["score"] for p in predictions), reverse=True)
    assert predictions[0]["label"] == str(predictions[0]["index"])


async def test_embeddings_forms_normalize_and_base64(client: httpx.AsyncClient) -> None:
    raw = (await client.post("/v1/embeddings", content=PNG, headers={"content-type": "image/png"})).json()
    multi = (await client.post("/v1/embeddings", files=[("image", ("a.png", PNG, "image/png"))])).json()
    assert raw == multi and raw["dim"] == 48 and len(raw["data"][0]["embedding"]) == 48
    y = np.array(raw["data"][0]["embedding"], dtype=np.float32)
    b64 = (
        await client.post(
            "/v1/embeddings?encoding_format=base64&normalize=true", content=PNG, headers={"content-type": "image/png"}
        )
    ).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, y / np.linalg.norm(y), rtol=1e-5, atol=1e-6)
    body_wins = (
        await client.post(
            "/v1/embeddings?normalize=false", json={"images": [base64.b64encode(PNG).decode()], "normalize": True}
        )
    ).json()
    assert abs(np.linalg.norm(body_wins["data"][0]["embedding"]) - 1) < 1e-5


async def test_several_images_answer_in_input_order(client: httpx.AsyncClient) -> None:
    images = [encode(gradient(20 + i, 30), "PNG") for i in range(5)]
    together = await client.post(
        "/v1/embeddings", files=[("image", (f"{i}.png", d, "image/png")) for i, d in enumerate(images)]
    )
    alone = [await client.post("/v1/embeddings", content=d, headers={"content-type": "image/png"}) for d in images]
    rows = together.json()["data"]
    assert [r["index"] for r in rows] == list(range(5))
    for row, single in zip(rows, alone, strict=True):
        np.testing.assert_allclose(row["embedding"], single.json()["data"][0]["embedding"], atol=1e-5)


def multipart(parts: list[bytes], boundary: str = "b0undary") -> tuple[bytes, dict[str, str]]:
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{i}.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + p
            + b"\r\n"
            for i, p in enumerate(parts)
        )
        + f"--{boundary}--\r\n".encode()
    )
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


ERROR_CASES = [
    # (name, request kwargs, status, type)
    ("empty body", {"content": b"", "headers": {"content-type": "image/png"}}, 400, "invalid_request"),
    ("bad json", {"content": b"{", "headers": {"content-type": "application/json"}}, 400, "invalid_request"),
    ("json without images", {"json": {"pictures": []}}, 400, "invalid_request"),
    ("json empty list", {"json": {"images": []}}, 400, "invalid_request"),
    ("bad base64", {"json": {"images": ["not base64!"]}}, 400, "invalid_request"),
    (
        "malformed multipart",
        {"content": b"--x\r\nnonsense", "headers": {"content-type": "multipart/form-data; boundary=x"}},
        400,
        "invalid_request",
    ),
    ("multipart without image part", {"files": [("file", ("a.png", PNG, "image/png"))]}, 400, "invalid_request"),
    ("not an image", {"content": b"hello", "headers": {"content-type": "image/png"}}, 400, "invalid_image"),
    ("truncated png", {"content": PNG[:60], "headers": {"content-type": "image/png"}}, 400, "invalid_image"),
    (
        "unsupported content type",
        {"content": b"x", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    (
        "image format outside allow-list",
        {"content": encode(Image.new("RGB", (8, 8)), "ICO"), "headers": {"content-type": "image/png"}},
        415,
        "unsupported_media_type",
    ),
    (
        "too many pixels",
        {"content": png_header_claiming(10_000, 10_000), "headers": {"content-type": "image/png"}},
        413,
        "payload_too_large",
    ),
]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "kind"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
async def test_error_table(client: httpx.AsyncClient, request_kwargs: dict, status: int, kind: str) -> None:
    response = await client.post("/v1/classify", **request_kwargs)
    assert error_of(response) == (status, kind)
    assert (await client.get("/readyz")).status_code == 200


async def test_bad_image_in_a_batch_names_its_index(client: httpx.AsyncClient) -> None:
    body, headers = multipart([PNG, PNG, b"garbage"])
    response = await client.post("/v1/classify", content=body, headers=headers)
    assert error_of(response) == (400, "invalid_image")
    assert "image 2" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("top_k=0", "/v1/classify"),
        ("top_k=11", "/v1/classify"),
        ("top_k=abc", "/v1/classify"),
        ("top_k=NaN", "/v1/classify"),
        ("encoding_format=hex", "/v1/embeddings"),
        ("normalize=maybe", "/v1/embeddings"),
    ],
)
async def test_invalid_parameters(client: httpx.AsyncClient, query: str, path: str) -> None:
    response = await client.post(f"{path}?{query}", content=PNG, headers={"content-type": "image/png"})
    assert error_of(response) == (422, "invalid_parameter")


async def test_invalid_body_parameter(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/classify", json={"images": [base64.b64encode(PNG).decode()], "top_k": "x"})
    assert error_of(response) == (422, "invalid_parameter")
    response = await client.post(
        "/v1/classify", content=b'{"images": [], "top_k": NaN}', headers={"content-type": "application/json"}
    )
    assert error_of(response) == (400, "invalid_request")  # NaN is not JSON


async def test_size_limits() -> None:
    async with serve(tiny_settings(max_body_bytes=4096, max_images_per_request=2)) as (_, c):
        big = await c.post("/v1/classify", content=b"\0" * 5000, headers={"content-type": "image/png"})
        assert error_of(big) == (413, "payload_too_large")
        body, headers = multipart([PNG, PNG, PNG])
        many = await c.post("/v1/classify", content=body, headers=headers)
        assert error_of(many) == (413, "payload_too_large")
        tiny_png = encode(Image.new("RGB", (2, 2)), "PNG")
        js = await c.post("/v1/classify", json={"images": [base64.b64encode(tiny_png).decode()] * 3})
        assert error_of(js) == (413, "payload_too_large")


async def test_warmup_and_every_batch_run_on_the_engines_thread() -> None:
    async with serve(tiny_settings(), controlled, over="asgi") as (app, c):
        response = await c.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
        assert response.status_code == 200
        engine = app.state.service.engine.engine
        assert engine.threads == {"vit-torch_0"} and len(engine.batch_sizes) == 5  # buckets 1..8, then one


async def test_overloaded_deadline_and_internal() -> None:
    settings = tiny_settings(max_batch_size=1, max_queue_size=2, max_images_per_request=2)
    async with serve(settings, controlled) as (app, c):
        engine, batcher = app.state.service.engine.engine, app.state.service.engine.batcher
        engine.gate.clear()
        post = {"content": PNG, "headers": {"content-type": "image/png"}}
        # Fill the pipeline one request at a time: one running (on the CPU the next batch is
        # formed when the device frees), two queued.
        held = []
        for in_flight, depth in [(1, 0), (1, 1), (1, 2)]:
            held.append(asyncio.create_task(c.post("/v1/classify", **post)))
            await until(lambda f=in_flight, d=depth: batcher.in_flight == f and batcher.queue_depth == d)
        burst = await asyncio.gather(*(c.post("/v1/classify", **post) for _ in range(5)))
        assert [error_of(r) for r in burst] == [(503, "overloaded")] * 5  # refused at once, none queued
        assert all(r.headers["retry-after"] == "1" for r in burst)
        engine.gate.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200] * 3

        engine.gate.clear()
        blocked = asyncio.create_task(c.post("/v1/classify", **post))
        await until(lambda: batcher.in_flight == 1)
        timed_out = await c.post(
            "/v1/classify", content=PNG, headers={"content-type": "image/png", "x-request-timeout": "0.2"}
        )
        assert error_of(timed_out) == (504, "deadline_exceeded")
        engine.gate.set()
        assert (await blocked).status_code == 200

        engine.fail = True
        failed = await c.post("/v1/classify", **post)
        assert error_of(failed) == (500, "internal")
        assert failed.json()["error"]["message"] == "inference failed"
        engine.fail = False
        assert (await c.post("/v1/classify", **post)).status_code == 200
        text = (await c.get("/metrics")).text
        assert 'vit_rejected_total{reason="queue_full"} 5.0' in text
        assert 'vit_rejected_total{reason="deadline"} 1.0' in text


async def test_request_timeout_header_may_only_shorten_the_deadline() -> None:
    async with serve(tiny_settings(request_timeout_s=0.3), controlled) as (app, c):
        engine = app.state.service.engine.engine
        engine.gate.clear()
        try:
            longer = await c.post(
                "/v1/classify", content=PNG, headers={"content-type": "image/png", "x-request-timeout": "30"}
            )
        finally:
            engine.gate.set()
        assert error_of(longer) == (504, "deadline_exceeded")  # the server's 0.3 s still applied


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert error_of(await client.get("/v1/nothing")) == (404, "not_found")
    assert error_of(await client.get("/v1/classify")) == (405, "method_not_allowed")


async def test_bad_request_timeout_header(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/classify", content=PNG, headers={"content-type": "image/png", "x-request-timeout": "-1"}
    )
    assert error_of(response) == (422, "invalid_parameter")
