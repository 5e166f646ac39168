"""Strict parameters (service/http/params.py): one spelling per boolean and integer, in the query, the
body and headers alike; and the OpenAPI schema says so."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from service.http.params import parse_count
from tests.images import encode, gradient
from tests.service.servers import serve, tiny_settings

PNG = encode(gradient(), "PNG")
B64 = base64.b64encode(PNG).decode()
RAW = {"content": PNG, "headers": {"content-type": "image/png"}}


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with serve(tiny_settings(), over="asgi") as (_, c):
        yield c


@pytest.mark.parametrize(
    "query",
    ["normalize=yes", "normalize=1", "normalize=True", "normalize=on", "normalize="],
)
async def test_a_boolean_query_is_true_or_false_only(client: httpx.AsyncClient, query: str) -> None:
    response = await client.post(f"/v1/embeddings?{query}", **RAW)
    assert response.status_code == 422 and response.json()["error"]["type"] == "invalid_parameter"


async def test_a_parameter_given_twice_is_refused_as_ambiguous(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/classify?top_k=1&top_k=3", **RAW)
    assert response.status_code == 422 and response.json()["error"]["message"] == "top_k is given 2 times; give it once"


@pytest.mark.parametrize("query", ["top_k=1_0", "top_k=%C2%B2", "top_k=%D9%A3", "top_k=3.0", "top_k=+3", "top_k=true"])
async def test_an_integer_query_is_ascii_digits_only(client: httpx.AsyncClient, query: str) -> None:
    response = await client.post(f"/v1/classify?{query}", **RAW)
    assert response.status_code == 422 and response.json()["error"]["type"] == "invalid_parameter"


@pytest.mark.parametrize(
    "field",
    [{"top_k": True}, {"top_k": 3.5}, {"top_k": "3"}, {"top_k": 2**70}],
    ids=["bool", "fraction", "string", "huge"],
)
async def test_a_json_integer_is_a_json_integer(client: httpx.AsyncClient, field: dict) -> None:
    response = await client.post("/v1/classify", json={"images": [B64], **field})
    assert response.status_code == 422 and response.json()["error"]["type"] == "invalid_parameter"


async def test_a_json_number_without_a_fraction_is_an_integer_as_json_schema_says(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/classify", json={"images": [B64], "top_k": 3.0})
    assert len(response.json()["results"][0]["predictions"]) == 3


@pytest.mark.parametrize("value", ["true", 1, None], ids=["string", "int", "null"])
async def test_a_json_boolean_is_a_json_boolean(client: httpx.AsyncClient, value: object) -> None:
    response = await client.post("/v1/embeddings", json={"images": [B64], "normalize": value})
    assert response.status_code == 422 and response.json()["error"]["type"] == "invalid_parameter"


async def test_the_one_spelling_is_accepted(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/classify?top_k=3", **RAW)).json()["results"][0]["predictions"][2]
    assert (await client.post("/v1/embeddings?normalize=true", **RAW)).status_code == 200
    assert (await client.post("/v1/embeddings", json={"images": [B64], "normalize": False})).status_code == 200
    assert (await client.post("/v1/features?layer=-2", **RAW)).status_code == 200


@pytest.mark.parametrize("value", ["1_0", "nan", "inf", "1e3", " 2", "0x10", "0", "0.000", "-1"])
async def test_the_timeout_header_is_an_ascii_decimal(client: httpx.AsyncClient, value: str) -> None:
    response = await client.post(
        "/v1/classify", content=PNG, headers={"content-type": "image/png", "x-request-timeout": value}
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": [{"name": "image", "shape": [True], "datatype": "BYTES", "data": [B64]}]},
        {"inputs": [{"name": "image", "shape": [1.0], "datatype": "BYTES", "data": [B64]}]},
        {
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64]}],
            "parameters": {"binary_data_output": "false"},
        },
        {
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64]}],
            "outputs": [{"name": "embedding", "parameters": {"binary_data": 1}}],
        },
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": True}}]},
    ],
    ids=["bool-shape", "float-shape", "string-flag", "int-flag", "bool-size"],
)
async def test_v2_numbers_and_flags_are_strict(client: httpx.AsyncClient, body: dict) -> None:
    response = await client.post("/v2/models/vit_test_tiny/infer", json=body)
    assert response.status_code == 400 and isinstance(response.json()["error"], str)


async def test_header_counts_are_ascii_digits() -> None:
    assert parse_count("123") == 123
    assert [parse_count(text) for text in ("\u00b2", "\u0663", "-1", "1_0", "", "9" * 19)] == [None] * 6


async def test_the_schema_types_the_strict_parameters(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    parameters = {p["name"]: p["schema"] for p in schema["paths"]["/v1/embeddings"]["post"]["parameters"]}
    assert parameters["normalize"]["type"] == "boolean" and parameters["encoding_format"]["enum"] == ["float", "base64"]
    parameters = {p["name"]: p["schema"] for p in schema["paths"]["/v1/classify"]["post"]["parameters"]}
    assert parameters["top_k"]["anyOf"][0]["type"] == "integer"
