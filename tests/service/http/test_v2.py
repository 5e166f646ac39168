"""Open Inference Protocol v2: the protocol's documented JSON shapes, the versioned paths, the
three input tensors giving the same answers as /v1, and errors as `{"error": message}`. The
specification's schemas: tests/service/scenarios/test_oip_conformance.py."""

from __future__ import annotations

import base64
import json
import threading

import httpx
import numpy as np
import pytest

from model.tensors import load_image, normalize
from service.engine import Engine
from tests.images import encode, gradient, photo
from tests.service.servers import live_server, serve, tiny_settings

PNG = encode(gradient(), "PNG")
JPEG = encode(photo(), "JPEG")
B64 = [base64.b64encode(PNG).decode(), "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()]
INFER = "/v2/models/vit_test_tiny/infer"


@pytest.fixture(params=["http", "asgi"])
async def client(request):
    async with serve(tiny_settings(), over=request.param) as (_, c):
        yield c


def v2_error(response: httpx.Response) -> int:
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return response.status_code


async def test_server_and_model_metadata_and_health(client: httpx.AsyncClient) -> None:
    server = (await client.get("/v2")).json()
    assert server == {"name": "vit-serve", "version": server["version"], "extensions": ["binary_tensor_data"]}
    assert (await client.get("/v2/health/live")).status_code == 200
    assert (await client.get("/v2/health/ready")).status_code == 200
    assert (await client.get("/v2/models/vit_test_tiny/ready")).status_code == 200
    meta = (await client.get("/v2/models/vit_test_tiny")).json()
    assert meta["name"] == "vit_test_tiny" and meta["platform"] == "pytorch"
    [image] = meta["inputs"]  # what a client must send: one image tensor, or one of its alternatives
    assert image == {
        "name": "image",
        "datatype": "BYTES",
        "shape": [-1],
        "parameters": {
            "alternatives": [
                {"name": "pixels", "datatype": "UINT8", "shape": [-1, 3, 32, 32]},
                {"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 32, 32]},
            ]
        },
    }
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "embedding", "datatype": "FP32", "shape": [-1, 48]},
    ]
    assert (await client.get("/v2/models/vit_test_tiny/ready")).json() == {"name": "vit_test_tiny", "ready": True}


@pytest.mark.parametrize("path", ["", "/ready"])
async def test_the_served_version_answers_as_the_unversioned_path_and_another_404s(
    client: httpx.AsyncClient, path: str
) -> None:
    unversioned = await client.get(f"/v2/models/vit_test_tiny{path}")
    versioned = await client.get(f"/v2/models/vit_test_tiny/versions/1{path}")
    assert versioned.status_code == unversioned.status_code == 200 and versioned.json() == unversioned.json()
    assert v2_error(await client.get(f"/v2/models/vit_test_tiny/versions/2{path}")) == 404
    assert v2_error(await client.get(f"/v2/models/other/versions/1{path}")) == 404
    request = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64[0]]}]}
    answer = await client.post("/v2/models/vit_test_tiny/versions/1/infer", json=request)
    assert answer.status_code == 200 and answer.json() == (await client.post(INFER, json=request)).json()
    assert answer.json()["model_version"] == "1"
    assert v2_error(await client.post("/v2/models/vit_test_tiny/versions/7/infer", json=request)) == 404


async def test_bytes_input_gives_the_v1_answers(client: httpx.AsyncClient) -> None:
    request = {"id": "req-7", "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": B64}]}
    response = await client.post(INFER, json=request)
    assert response.status_code == 200
    body = response.json()
    assert body["model_name"] == "vit_test_tiny" and body["id"] == "req-7"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 10] and outputs["embedding"]["shape"] == [2, 48]
    assert all(o["datatype"] == "FP32" and set(o) == {"name", "datatype", "shape", "data"} for o in body["outputs"])
    probs = np.array(outputs["probabilities"]["data"]).reshape(2, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    v1 = (await client.post("/v1/embeddings", json={"images": B64})).json()
    expected = np.array([d["embedding"] for d in v1["data"]])
    np.testing.assert_allclose(np.array(outputs["embedding"]["data"]).reshape(2, 48), expected, rtol=1e-5, atol=1e-6)
    top = (await client.post("/v1/classify?top_k=1", json={"images": B64})).json()
    assert [r["predictions"][0]["index"] for r in top["results"]] == probs.argmax(axis=1).tolist()


async def test_pixel_tensors_give_the_same_embedding_as_the_image_file(client: httpx.AsyncClient) -> None:
    settings = tiny_settings()
    engine = Engine.from_settings(settings)
    pixels = load_image(PNG, 32, engine.preprocess)  # uint8 (3, 32, 32), as the server decodes it
    normalised = normalize(pixels[None], engine.preprocess.mean, engine.preprocess.std)
    file_answer = await client.post(
        INFER,
        json={
            "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": [[B64[0]]]}],
            "outputs": [{"name": "embedding"}],
        },
    )
    uint8 = await client.post(
        INFER,
        json={
            "inputs": [{"name": "pixels", "shape": [1, 3, 32, 32], "datatype": "UINT8", "data": pixels.tolist()}],
            "outputs": [{"name": "embedding"}],
        },
    )
    fp32 = await client.post(
        INFER,
        json={
            "inputs": [
                {
                    "name": "pixel_values",
                    "shape": [1, 3, 32, 32],
                    "datatype": "FP32",
                    "data": normalised.flatten().tolist(),  # flat, row-major: as the protocol allows
                }
            ],
            "outputs": [{"name": "embedding"}],
        },
    )
    answers = [r.json()["outputs"] for r in (file_answer, uint8, fp32)]
    assert all(len(a) == 1 and a[0]["name"] == "embedding" for a in answers)
    np.testing.assert_allclose(answers[1][0]["data"], answers[0][0]["data"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(answers[2][0]["data"], answers[0][0]["data"], rtol=1e-5, atol=1e-6)


def _tensor(**overrides) -> dict:
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64[0]]} | overrides]}


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v2/models/other/infer", _tensor(), 404),
        (INFER, _tensor(name="input-0"), 400),  # a BYTES input is named "image"
        (INFER, _tensor(shape=[2]), 400),  # shape and data disagree
        (INFER, _tensor(datatype="INT64"), 400),
        (INFER, _tensor(data=["not base64!"]), 400),
        (INFER, _tensor(data=[base64.b64encode(b"not an image").decode()]), 400),
        (INFER, {"inputs": []}, 400),
        (INFER, _tensor() | {"outputs": [{"name": "logits"}]}, 400),
        (INFER, {"inputs": [{"name": "pixels", "shape": [1, 3, 8, 8], "datatype": "UINT8", "data": [0] * 192}]}, 400),
        (
            INFER,
            {"inputs": [{"name": "pixels", "shape": [1, 3, 32, 32], "datatype": "UINT8", "data": [300] * 3072}]},
            400,
        ),
        (
            INFER,
            {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": ["x"] * 3072}]},
            400,
        ),
        (INFER, _tensor(shape=[9], data=[B64[0]] * 9), 413),  # over the per-request image limit (8 here)
    ],
)
async def test_errors_are_the_protocols_error_object(path: str, body: dict, status: int) -> None:
    async with serve(tiny_settings(max_images_per_request=8), over="asgi") as (_, c):
        assert v2_error(await c.post(path, json=body)) == status
        assert v2_error(await c.get("/v2/models/other")) == 404
        assert v2_error(await c.post(INFER, content=b"{", headers={"content-type": "application/json"})) == 400
        assert (await c.post(INFER, json=_tensor())).status_code == 200  # and the service goes on


async def test_readiness_is_red_while_loading() -> None:
    release = threading.Event()

    def slow_load(settings):
        release.wait(30)
        return Engine.from_settings(settings)

    async with serve(tiny_settings(), slow_load, over="asgi", wait_ready=False) as (_, c):
        assert (await c.get("/v2/health/live")).status_code == 200
        assert (await c.get("/v2/health/ready")).status_code == 503
        assert v2_error(await c.post(INFER, json=_tensor())) == 503
        release.set()


def test_tritonclient_works_unchanged_with_binary_tensors() -> None:
    import tritonclient.http as triton

    with live_server(tiny_settings()) as (url, _):
        native = httpx.post(f"{url}/v1/embeddings", json={"images": B64}).json()
        expected = np.array([d["embedding"] for d in native["data"]], dtype=np.float32)
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        try:
            assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("vit_test_tiny")
            assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
            images = triton.InferInput("image", [2], "BYTES")
            images.set_data_from_numpy(np.array([PNG, JPEG], dtype=np.object_))  # binary_data=True: the default
            binary = client.infer("vit_test_tiny", [images], outputs=[triton.InferRequestedOutput("embedding")])
            np.testing.assert_allclose(binary.as_numpy("embedding"), expected, rtol=1e-5, atol=1e-6)
            pixels = triton.InferInput("pixels", [1, 3, 32, 32], "UINT8")
            engine = Engine.from_settings(tiny_settings())
            pixels.set_data_from_numpy(load_image(PNG, 32, engine.preprocess)[None].numpy(), binary_data=True)
            as_json = triton.InferRequestedOutput("probabilities", binary_data=False)
            answer = client.infer(
                "vit_test_tiny", [pixels], outputs=[as_json, triton.InferRequestedOutput("embedding")]
            )
            np.testing.assert_allclose(answer.as_numpy("embedding")[0], expected[0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(answer.as_numpy("probabilities").sum(), 1.0, rtol=1e-5)
        finally:
            client.close()


async def test_binary_framing_errors_are_400() -> None:
    header = json.dumps(
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 10}}]}
    ).encode()
    framed = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))}
    async with serve(tiny_settings(), over="asgi") as (_, c):
        for body, headers in [
            (header + b"\x05\x00\x00\x00abc", framed),  # 7 bytes where 10 are declared
            (header + b"\x09\x00\x00\x00abcdef", framed),  # an element longer than the data
            (header, {**framed, "inference-header-content-length": str(len(header) + 5)}),
            (header + bytes(10), {"content-type": "application/json"}),  # no header length: not JSON
        ]:
            assert v2_error(await c.post(INFER, content=body, headers=headers)) == 400
