"""service/schemas.py: the request bodies it declares accept what the service accepts and refuse
what it refuses, and the response models name exactly the fields the service answers with."""

from __future__ import annotations

import base64

import httpx
import jsonschema
import pytest

from service import schemas
from service.http.params import ClassifyParams, EmbeddingParams, OpenAIEmbeddingParams
from tests.images import encode, gradient
from tests.service.servers import serve, tiny_settings

PNG = encode(gradient(), "PNG")
B64 = base64.b64encode(PNG).decode()
OPENAI = {"input": B64, "model": "vit_test_tiny"}


def json_body(params, openai=None) -> dict:
    return schemas.image_body(params, openai)["requestBody"]["content"]["application/json"]["schema"]


def test_the_native_body_takes_images_and_the_parameters_only() -> None:
    body = json_body(ClassifyParams)
    jsonschema.validate({"images": [B64], "top_k": 3}, body)
    for refused in ({"images": []}, {"top_k": 3}, {"images": [B64], "colour": "red"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(refused, body)


def test_the_embeddings_body_is_native_or_openais() -> None:
    body = json_body(EmbeddingParams, OpenAIEmbeddingParams)
    jsonschema.validate({"images": [B64], "normalize": True}, body)
    jsonschema.validate({"input": B64, "model": "m", "encoding_format": "base64"}, body)
    jsonschema.validate({"input": [B64, B64], "model": "m", "dimensions": 48}, body)
    for refused in ({"input": B64}, {"images": [B64], "model": "m"}, {"input": B64, "model": "m", "images": [B64]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(refused, body)


def test_every_content_type_the_routes_read_is_declared() -> None:
    content = schemas.image_body(ClassifyParams)["requestBody"]["content"]
    assert set(content) == {
        "image/jpeg",
        "image/png",
        "application/octet-stream",
        "multipart/form-data",
        "application/json",
    }


async def test_the_response_models_name_the_fields_served() -> None:
    async with serve(tiny_settings(), over="asgi") as (_, c):
        post = {"content": PNG, "headers": {"content-type": "image/png"}}
        answers: list[tuple[type, httpx.Response]] = [
            (schemas.ClassifyResponse, await c.post("/v1/classify", **post)),
            (schemas.EmbeddingsResponse, await c.post("/v1/embeddings", **post)),
            (
                schemas.OpenAIEmbeddingsResponse,
                await c.post("/v1/embeddings", json=OPENAI),
            ),
            (schemas.FeaturesResponse, await c.post("/v1/features", **post)),
            (schemas.ModelsResponse, await c.get("/v1/models")),
            (schemas.ErrorResponse, await c.post("/v1/classify", content=b"", headers=post["headers"])),
        ]
    for model, answer in answers:
        body = answer.json()
        assert set(body) == set(model.model_fields), model.__name__
        model.model_validate(body)
    classify, models = answers[0][1].json(), answers[4][1].json()
    assert set(classify["results"][0]["predictions"][0]) == set(schemas.Prediction.model_fields)
    assert set(models["data"][0]) == set(schemas.ModelInfo.model_fields)
