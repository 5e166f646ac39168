"""/openapi.json that tells the truth: what this service, with these settings and this model,
accepts, so that a client generated from it, or a fuzzer, never meets a refusal the schema
did not announce (docs/API.md, OpenAPI). What only a text tower takes (texts, zero-shot labels:
marked TEXT_TOWER) is left out for a model without one.

FastAPI's schema knows the routes; the rest is known only here: the bearer scheme when
VIT_API_KEYS is set (keys are checked in service/http/access.py, not by a FastAPI dependency
that would declare it), the image counts of VIT_MAX_IMAGES_PER_REQUEST, and, once the model is
loaded, its bounds (`model_bounds` in service/http/params.py: `top_k` up to its classes, `layer`
within its depth, OpenAI's `dimensions` equal to its embedding size), the table the service
checks requests against too. Until then the schema is served without the model's bounds and not
kept, so that the first request after loading gets the full one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.engine import ModelCard
from service.http.access import BEARER
from service.http.params import TEXT_TOWER, model_bounds
from service.settings import Settings


def openapi(app: FastAPI, settings: Settings, card: ModelCard | None) -> dict[str, Any]:
    """The schema of `app` for `settings` and the served model (`card`, None while loading)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    if settings.api_keys:
        schema.setdefault("components", {})["securitySchemes"] = BEARER
    else:
        for operation in _operations(schema):
            operation.pop("security", None)
    for operation in _operations(schema):
        query = {p["name"]: p["schema"] for p in operation.get("parameters", []) if p["in"] == "query"}
        for fields in _body_fields(operation):
            for name in ("images", "input", "image", "texts"):
                _bound(fields.get(name), "array", maxItems=settings.max_images_per_request)
        for fields in [query, *_body_fields(operation)]:
            _bound(fields.get("labels"), "array", maxItems=settings.max_labels)
        if card is not None and card.text is None:
            _drop_text_parts(operation)
        if card is not None:
            _bound_to_model(operation, card)
    if card is not None:
        app.openapi_schema = schema
    return schema


def _bound_to_model(operation: dict[str, Any], card: ModelCard) -> None:
    fields = [{p["name"]: p["schema"] for p in operation.get("parameters", []) if p["in"] == "query"}]
    for properties in [*fields, *_body_fields(operation)]:
        for name, (low, high) in model_bounds(card.cfg).items():
            _bound(properties.get(name), "integer", minimum=low, maximum=high)


def _drop_text_parts(node: Any) -> None:
    """Remove, everywhere under `node`, each schema, property or parameter marked TEXT_TOWER; one
    marked "empty" (a field a client always sends, as Weaviate's `texts`) may hold no item."""

    def marked(value: Any) -> bool:
        if isinstance(value, dict) and value.get(TEXT_TOWER) == "empty":
            _bound(value, "array", maxItems=0)
            return False
        return isinstance(value, dict) and bool(value.get(TEXT_TOWER) or value.get("schema", {}).get(TEXT_TOWER))

    if isinstance(node, dict):
        for key in [key for key, value in node.items() if marked(value)]:
            del node[key]
        children = list(node.values())
    elif isinstance(node, list):
        node[:] = [value for value in node if not marked(value)]
        children = node
    else:
        return
    for child in children:
        _drop_text_parts(child)


def _operations(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for methods in schema["paths"].values():
        yield from methods.values()


def _body_fields(operation: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The properties of each JSON and multipart body form of `operation`."""
    for media in operation.get("requestBody", {}).get("content", {}).values():
        body = media.get("schema", {})
        for form in body.get("oneOf", [body]):
            if "properties" in form:
                yield form["properties"]


def _bound(schema: dict[str, Any] | None, kind: str, **bounds: int) -> None:
    """Add `bounds` to `schema`, or to its branch of type `kind` (a field that may also be null,
    a word, or, for OpenAI's `input`, a single string)."""
    if schema is None:
        return
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == kind:
            branch.update(bounds)
