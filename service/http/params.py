"""Request parameters, declared once and parsed strictly: what a client may send in the query,
the JSON body and headers (docs/API.md, Sending images).

Each route's parameters are one pydantic model. It validates them (query values overridden by
JSON body fields of the same name, one 422 naming the first bad one), and it is what the OpenAPI
schema documents (`openapi_parameters`). Routes read the query themselves rather than through
FastAPI's parameter declarations: one declaration, and no per-request dependency solving.

Lax parsing turns `normalize=yes`, `top_k=1_0`, `"top_k": true` or a Unicode digit into values
the client may not have meant, so numbers and booleans are accepted in one spelling each: in the
query, booleans `true`/`false` and integers ASCII digits with an optional minus sign; in a JSON
body, JSON values of the declared type (pydantic's strict mode; a number without a fraction is
an integer, as JSON Schema has it); in headers, ASCII decimals.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.config import ViTConfig
from service.engine.card import ModelCard
from service.errors import InvalidParameter, invalid_parameter
from service.settings import Settings
from service.texts import MAX_TEXT_CHARS

_INTEGER = re.compile(r"-?[0-9]{1,18}")
# A positive decimal: a nonzero digit before the point, or after it (the OpenAPI schema says the same).
_SECONDS = re.compile(r"[0-9]{0,8}[1-9][0-9]{0,8}(\.[0-9]{1,9})?|[0-9]{1,9}\.[0-9]{0,8}[1-9][0-9]{0,8}")


def _integer(text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise ValueError("must be an integer written in ASCII digits")
    return int(text)


def _boolean(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError("must be true or false")
    return text == "true"


_FROM_QUERY: dict[str, Callable[[str], Any]] = {"integer": _integer, "boolean": _boolean}


def parse_count(text: str) -> int | None:
    """A non-negative integer header value (ASCII digits only), or None if it is not one."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def parse_seconds(name: str, text: str | None) -> float | None:
    """A header's positive number of seconds (ASCII decimal), None when absent; 422 otherwise."""
    if text is None:
        return None
    if not _SECONDS.fullmatch(text):
        raise InvalidParameter(f"{name} must be a positive number of seconds in ASCII digits, like 2 or 0.5")
    return float(text)


_STRICT = ConfigDict(extra="forbid", strict=True)
# Marks a part of the OpenAPI schema that only a model with a text tower accepts: the served
# schema leaves it out for any other (service/http/openapi.py).
TEXT_TOWER = "x-text-tower"


class ClassifyParams(BaseModel):
    model_config = _STRICT
    top_k: int | None = Field(
        None,
        ge=1,
        le=100_000,  # zero-shot: at most the labels (VIT_MAX_LABELS is at most this); a head: its classes
        description="predictions per image: 1 … classes (default: 5, or classes; zero-shot: every label)",
    )
    labels: list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]] | None = Field(
        None,
        min_length=1,
        description="zero-shot labels (a CLIP or SigLIP pair), scored as transformers' zero-shot-image-classification"
        " pipeline scores them; repeat the query parameter for each (at most VIT_MAX_LABELS)",
        json_schema_extra={TEXT_TOWER: True},
    )
    template: str | None = Field(
        None,
        max_length=MAX_TEXT_CHARS,
        pattern=r"^[^{}]*\{\}[^{}]*$",  # filled as the pipeline fills it (str.format): then a replacement
        description='the text each label is put in, at its one "{}" (default: "This is a photo of {}.")',
        json_schema_extra={TEXT_TOWER: True},
    )


class EmbeddingParams(BaseModel):
    model_config = _STRICT
    normalize: bool = Field(False, description="return y / ‖y‖₂ instead of y")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="floats, or base64 of the little-endian float32 bytes"
    )


class OpenAIEmbeddingParams(EmbeddingParams):
    """The fields of OpenAI's embeddings request besides `input` (`user` is accepted, unused)."""

    model: str
    dimensions: int | None = None
    user: str | None = None


class FeatureParams(BaseModel):
    model_config = _STRICT
    layer: int | Literal["final"] = Field(
        -1,
        description="transformers' hidden_states[layer]: 0 is the encoder's input, l block l's output, negatives"
        " count from the end (-2 for LLaVA); final: the final-normed tokens (transformers' last_hidden_state)",
    )
    tokens: Literal["all", "patch"] = Field(
        "all", description="all: the prefix tokens (class, registers or distillation), then the patches; patch: patches"
    )
    dtype: Literal["float32", "float16"] = Field("float32", description="the features' number format")


@functools.cache
def _json_types(model: type[BaseModel]) -> dict[str, list[str]]:
    """Each field's JSON types ("integer", "boolean", "string"), from the model's own schema."""
    types = {}
    for name, schema in model.model_json_schema()["properties"].items():
        options = [s.get("type") for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
        types[name] = options or ["string"]
    return types


class Query(Protocol):
    """A query string's parameters (starlette's QueryParams): the last value of a name, or all."""

    def get(self, key: str) -> str | None: ...

    def getlist(self, key: str) -> list[str]: ...


def from_query(model: type[BaseModel], query: Query) -> dict[str, Any]:
    """The query parameters `model` declares, as the JSON values they spell (others are ignored;
    a list is its name repeated); a spelling that is not one, or a value out of its bounds, is a
    422 naming it, before the body is read (even where a body field would override it: every
    value given is valid)."""
    values: dict[str, Any] = {}
    for name, kinds in _json_types(model).items():
        if kinds[0] == "array":
            if listed := query.getlist(name):
                values[name] = listed
            continue
        given = query.getlist(name)
        if len(given) > 1:  # which one was meant? (only a list is its name repeated)
            raise InvalidParameter(f"{name} is given {len(given)} times; give it once")
        text = query.get(name)
        if text is not None:
            try:
                values[name] = _FROM_QUERY.get(kinds[0], str)(text)
            except ValueError as exc:
                if "string" not in kinds:
                    raise InvalidParameter(f"{name}: {exc}") from None
                values[name] = text  # a field that also takes a word (layer=final): validated with the rest
    try:
        model.model_validate(values)
    except ValidationError as exc:
        raise invalid_parameter(exc.errors()) from None
    return values


def model_bounds(cfg: ViTConfig) -> dict[str, tuple[int, int]]:
    """The parameters whose bounds are the served model's, each (lowest, highest): `top_k` up to
    its classes, `layer` within its depth (`final` aside), `dimensions` its embedding size. The
    service checks them (`check_bounds`); the OpenAPI schema states them (service/http/openapi.py)."""
    bounds = {"layer": (-(cfg.depth + 1), cfg.depth), "dimensions": (cfg.embedding_dim, cfg.embedding_dim)}
    if cfg.num_classes:
        bounds["top_k"] = (1, cfg.num_classes)
    return bounds


_OUT_OF_BOUNDS = {
    "top_k": "top_k: must be at most {high}, the number of classes",
    "layer": "layer {value} is outside {low}..{high} (or 'final')",
    "dimensions": "dimensions: this model's embeddings have {high}",
}


def check_bounds(card: ModelCard, values: Mapping[str, Any]) -> None:
    """`values` within the served model's bounds (`model_bounds`); a 422 naming the first one out."""
    for name, (low, high) in model_bounds(card.cfg).items():
        value = values.get(name)
        if isinstance(value, int) and not low <= value <= high:
            raise InvalidParameter(_OUT_OF_BOUNDS[name].format(value=value, low=low, high=high))


def merge(model: type[BaseModel], query: dict[str, Any], body: dict[str, Any]) -> Any:
    """Query values (from `from_query`), overridden by JSON body fields; one 422 naming the
    first bad one. A JSON number without a fraction (3.0) is an integer, as JSON Schema has it."""
    types = _json_types(model)
    integral = {
        name: int(value)
        for name, value in body.items()
        if isinstance(value, float) and value.is_integer() and "integer" in types.get(name, [])
    }
    try:
        return model.model_validate({**query, **body, **integral})
    except ValidationError as exc:
        raise invalid_parameter(exc.errors()) from None


def openapi_parameters(model: type[BaseModel] | None) -> list[dict[str, Any]]:
    """The OpenAPI parameters of a route whose query `model` declares, and X-Request-Timeout."""
    parameters = []
    if model is not None:
        for name, schema in model.model_json_schema()["properties"].items():
            schema = {k: v for k, v in schema.items() if k not in ("title", "description")}
            description = model.model_fields[name].description
            parameters.append(
                {"name": name, "in": "query", "required": False, "schema": schema}
                | ({"description": description} if description else {})
            )
    parameters.append(
        {
            "name": "X-Request-Timeout",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": f"^(?:{_SECONDS.pattern})$"},  # JSON Schema: a search
            "description": "seconds (ASCII decimal); may only shorten the server's deadline",
        }
    )
    return parameters


def deadline_of(headers: Mapping[str, str], settings: Settings) -> float:
    """A request's deadline (monotonic): the server's timeout, shortened by X-Request-Timeout."""
    timeout = settings.request_timeout_s
    asked = parse_seconds("X-Request-Timeout", headers.get("x-request-timeout"))
    if asked is not None:
        timeout = min(timeout, asked)  # may only shorten the server's deadline
    return time.monotonic() + timeout
