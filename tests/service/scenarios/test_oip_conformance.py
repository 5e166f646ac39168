"""The running service against the Open Inference Protocol's REST specification
(kserve/open-inference-protocol: specification/protocol/open_inference_rest.yaml, its JSON
schemas, and inference_rest.md, which adds the ready answers and what the yaml leaves optional).

`SCHEMAS` restates the specification's objects as JSON Schema, field by field (checked against
the yaml at commit 18d5991e9e45d291f53103cc79e13ecc6212ffae); Triton's binary tensor data extension,
which the service implements, replaces a tensor's `data` by `parameters.binary_data_size`. Every
/v2 operation of the specification is called, unversioned and with /versions/1, and its answer
checked; then what a schema cannot say: every listed version answers, the listed inputs are
enough to be served, nested and flat tensor data answer the same, and binary data both ways
answers as JSON does.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import numpy as np
import pytest

from tests.images import encode, gradient
from tests.service.servers import live_server, tiny_settings

MODEL = "vit_test_tiny"
PNG = base64.b64encode(encode(gradient(), "PNG")).decode()


def _object(required: tuple[str, ...], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required)}


_STRING, _OBJECT = {"type": "string"}, {"type": "object"}
_INTEGERS = {"type": "array", "items": {"type": "integer"}}
_TENSOR_DATA = {"$ref": "#/$defs/tensor_data"}
_DEFS = {
    "tensor_data": {
        "type": "array",
        "items": {"anyOf": [_TENSOR_DATA, {"type": "number"}, {"type": "string"}, {"type": "boolean"}]},
    },
    "metadata_tensor": _object(("name", "datatype", "shape"), name=_STRING, datatype=_STRING, shape=_INTEGERS),
    "tensor": _object(
        ("name", "shape", "datatype", "data"),
        name=_STRING,
        shape=_INTEGERS,
        datatype=_STRING,
        parameters=_OBJECT,
        data=_TENSOR_DATA,
    ),
    "request_output": _object(("name",), name=_STRING, parameters=_OBJECT),
}
_TENSORS = {"type": "array", "items": {"$ref": "#/$defs/tensor"}}
SCHEMAS = {
    "metadata_server_response": _object(
        ("name", "version", "extensions"), name=_STRING, version=_STRING, extensions={"type": "array", "items": _STRING}
    ),
    "metadata_model_response": _object(
        ("name", "platform", "inputs", "outputs"),
        name=_STRING,
        versions={"type": "array", "items": _STRING},
        platform=_STRING,
        inputs={"type": "array", "items": {"$ref": "#/$defs/metadata_tensor"}},
        outputs={"type": "array", "items": {"$ref": "#/$defs/metadata_tensor"}},
    ),
    "ready_model_response": _object(("name", "ready"), name=_STRING, ready={"type": "boolean"}),
    "inference_request": _object(
        ("inputs",),
        id=_STRING,
        parameters=_OBJECT,
        inputs=_TENSORS,
        outputs={"type": "array", "items": {"$ref": "#/$defs/request_output"}},
    ),
    "inference_response": _object(
        ("model_name", "outputs"),
        model_name=_STRING,
        model_version=_STRING,
        id=_STRING,
        parameters=_OBJECT,
        outputs=_TENSORS,
    ),
    "error_response": _object(("error",), error=_STRING),
}
# Triton's binary data extension: a tensor sent as binary has binary_data_size instead of data.
_BINARY_TENSOR = _object(
    ("name", "shape", "datatype", "parameters"),
    name=_STRING,
    shape=_INTEGERS,
    datatype=_STRING,
    parameters=_object(("binary_data_size",), binary_data_size={"type": "integer", "minimum": 0}),
)


def conforms(instance: object, name: str, binary: bool = False) -> None:
    """Raise unless `instance` is the specification's object `name` (binary: with the extension)."""
    defs = _DEFS | {"tensor": {"anyOf": [_DEFS["tensor"], _BINARY_TENSOR]}} if binary else _DEFS
    jsonschema.validate(instance, SCHEMAS[name] | {"$defs": defs})


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with live_server(tiny_settings()) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        yield c


MODEL_PATHS = [f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/versions/1"]


def image_request(**extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [PNG]}], **extra}


def test_server_metadata_and_health(client: httpx.Client) -> None:
    for path in ("/v2", "/v2/"):
        response = client.get(path)
        assert response.status_code == 200
        conforms(response.json(), "metadata_server_response")
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("path", MODEL_PATHS)
def test_model_ready_metadata_and_inference(client: httpx.Client, path: str) -> None:
    ready = client.get(f"{path}/ready")
    assert ready.status_code == 200
    conforms(ready.json(), "ready_model_response")
    assert ready.json() == {"name": MODEL, "ready": True}
    metadata = client.get(path)
    assert metadata.status_code == 200
    conforms(metadata.json(), "metadata_model_response")
    request = image_request(id="42", outputs=[{"name": "embedding"}])
    conforms(request, "inference_request")
    answer = client.post(f"{path}/infer", json=request)
    assert answer.status_code == 200
    conforms(answer.json(), "inference_response")
    assert answer.json()["id"] == "42" and [o["name"] for o in answer.json()["outputs"]] == ["embedding"]


@pytest.mark.parametrize("path", MODEL_PATHS)
def test_errors_are_the_specifications_error_object(client: httpx.Client, path: str) -> None:
    for response in (
        client.post(f"{path}/infer", json={"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]}),
        client.post(f"{path}/infer", content=b"{", headers={"content-type": "application/json"}),
        client.get(path.replace(MODEL, "other")),
        client.post(path.replace(MODEL, "other") + "/infer", json=image_request()),
    ):
        assert 400 <= response.status_code < 500
        conforms(response.json(), "error_response")


def test_every_listed_version_answers_on_every_versioned_path(client: httpx.Client) -> None:
    versions = client.get(f"/v2/models/{MODEL}").json()["versions"]
    assert versions
    for version in versions:
        base = f"/v2/models/{MODEL}/versions/{version}"
        assert client.get(base).status_code == 200 and client.get(f"{base}/ready").status_code == 200
        answer = client.post(f"{base}/infer", json=image_request())
        assert answer.status_code == 200 and answer.json()["model_version"] == version


def _example(tensor: dict[str, Any]) -> dict[str, Any]:
    """A request input for a metadata tensor, batch 1, as a generic client fills one (an image
    file where the datatype is BYTES: only real images decode)."""
    shape = [1 if d == -1 else d for d in tensor["shape"]]
    count = int(np.prod(shape))
    data: list[Any] = [PNG] * count if tensor["datatype"] == "BYTES" else [0] * count
    return {"name": tensor["name"], "shape": shape, "datatype": tensor["datatype"], "data": data}


def test_a_request_of_exactly_the_listed_inputs_is_served_with_the_listed_outputs(client: httpx.Client) -> None:
    metadata = client.get(f"/v2/models/{MODEL}").json()
    request = {"inputs": [_example(tensor) for tensor in metadata["inputs"]]}
    conforms(request, "inference_request")
    answer = client.post(f"/v2/models/{MODEL}/infer", json=request)
    assert answer.status_code == 200, answer.text
    listed = {t["name"]: (t["datatype"], [1 if d == -1 else d for d in t["shape"]]) for t in metadata["outputs"]}
    assert {o["name"]: (o["datatype"], o["shape"]) for o in answer.json()["outputs"]} == listed


def test_nested_and_flat_tensor_data_answer_the_same(client: httpx.Client) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32)).astype(np.uint8)
    answers = []
    for data in (pixels.tolist(), pixels.ravel().tolist()):
        tensor = {"name": "pixels", "shape": [2, 3, 32, 32], "datatype": "UINT8", "data": data}
        answer = client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [tensor]})
        assert answer.status_code == 200
        answers.append(answer.json())
    assert answers[0] == answers[1]


def test_binary_tensor_data_both_ways_answers_as_json(client: httpx.Client) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (1, 3, 32, 32)).astype(np.uint8)
    as_json = client.post(
        f"/v2/models/{MODEL}/infer",
        json={"inputs": [{"name": "pixels", "shape": [1, 3, 32, 32], "datatype": "UINT8", "data": pixels.tolist()}]},
    ).json()
    tensor = {"name": "pixels", "shape": [1, 3, 32, 32], "datatype": "UINT8"}
    header = {
        "inputs": [tensor | {"parameters": {"binary_data_size": pixels.nbytes}}],
        "parameters": {"binary_data_output": True},
    }
    conforms(header, "inference_request", binary=True)
    head = json.dumps(header).encode()
    answer = client.post(
        f"/v2/models/{MODEL}/infer",
        content=head + pixels.tobytes(),
        headers={"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))},
    )
    assert answer.status_code == 200
    length = int(answer.headers["inference-header-content-length"])
    body = json.loads(answer.content[:length])
    conforms(body, "inference_response", binary=True)
    offset = length
    for output, expected in zip(body["outputs"], as_json["outputs"], strict=True):
        size = output["parameters"]["binary_data_size"]
        values = np.frombuffer(answer.content[offset : offset + size], dtype="<f4")
        offset += size
        assert output["name"] == expected["name"] and output["shape"] == expected["shape"]
        np.testing.assert_array_equal(values, np.array(expected["data"], dtype=np.float32))
    assert offset == len(answer.content)
