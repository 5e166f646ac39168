"""service/http/openapi.py: the schema states this service's limits: the image counts of its
settings, the model's bounds once it is loaded (and is kept only then), no security without
keys. (The schema against the service's answers: tests/service/scenarios/test_fuzz.py; with
keys: tests/service/http/test_access.py.)"""

from __future__ import annotations

import dataclasses
from typing import Any

from service.app import create_app
from service.engine import Engine
from service.engine.card import TextCard
from service.engine.handle import in_process
from service.http.openapi import openapi
from tests.service.servers import tiny_settings

SETTINGS = tiny_settings(max_images_per_request=7)
CARD = Engine.from_settings(SETTINGS).card  # vit_test_tiny: 10 classes, depth 2, embeddings of 48


def schema(card: Any = CARD) -> dict[str, Any]:
    return openapi(create_app(SETTINGS, in_process()), SETTINGS, card)


def query(schema: dict[str, Any], path: str) -> dict[str, Any]:
    parameters = schema["paths"][path]["post"]["parameters"]
    return {p["name"]: p["schema"] for p in parameters if p["in"] == "query"}


def integer(field: dict[str, Any]) -> dict[str, Any]:
    return next(branch for branch in field.get("anyOf", [field]) if branch.get("type") == "integer")


def test_image_counts_are_the_settings() -> None:
    content = schema()["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]
    native, openai = content["application/json"]["schema"]["oneOf"]
    assert native["properties"]["images"]["maxItems"] == 7
    assert openai["properties"]["input"]["anyOf"][1]["maxItems"] == 7
    assert content["multipart/form-data"]["schema"]["properties"]["image"]["maxItems"] == 7


def test_the_models_bounds_once_it_is_loaded() -> None:
    loaded = schema()
    assert integer(query(loaded, "/v1/classify")["top_k"]) == {"type": "integer", "minimum": 1, "maximum": 10}
    layer = integer(query(loaded, "/v1/features")["layer"])
    assert (layer["minimum"], layer["maximum"]) == (-3, 2)
    openai = loaded["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    dimensions = integer(openai["oneOf"][1]["properties"]["dimensions"])
    assert (dimensions["minimum"], dimensions["maximum"]) == (48, 48)


def test_while_loading_the_schema_has_no_model_bounds_and_is_not_kept() -> None:
    app = create_app(SETTINGS, in_process())
    loading = openapi(app, SETTINGS, None)
    assert integer(query(loading, "/v1/classify")["top_k"])["maximum"] == 100_000  # not yet its 10 classes
    assert app.openapi_schema is None
    loaded = openapi(app, SETTINGS, CARD)
    assert app.openapi_schema is loaded and openapi(app, SETTINGS, None) is loaded


def test_without_keys_no_operation_asks_for_one() -> None:
    served = schema()
    assert "securitySchemes" not in served.get("components", {})
    assert all("security" not in op for methods in served["paths"].values() for op in methods.values())


def test_texts_and_labels_are_in_the_schema_only_for_a_model_with_a_text_tower() -> None:
    vision = schema()
    assert {"labels", "template"}.isdisjoint(query(vision, "/v1/classify"))
    forms = vision["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert [sorted(form["required"]) for form in forms] == [["images"], ["input", "model"]]
    assert "'x-text-tower': True" not in str(vision)
    texts = vision["paths"]["/weaviate/vectorize"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert texts["properties"]["texts"]["anyOf"][0]["maxItems"] == 0  # Weaviate sends it: null or empty
    text = TextCard("tokenizer.json", 77, None, 48, "softmax", 100.0, 0.0)
    paired = openapi(create_app(SETTINGS, in_process()), SETTINGS, dataclasses.replace(CARD, text=text))
    labels = query(paired, "/v1/classify")["labels"]["anyOf"][0]
    assert labels["maxItems"] == SETTINGS.max_labels and labels["items"]["minLength"] == 1
    forms = paired["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert forms[1]["properties"]["texts"]["maxItems"] == 7
