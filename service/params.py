"""Request parameters, parsed strictly: what a client may send in the query, headers and body.

Lax parsing turns `normalize=yes`, `top_k=1_0`, `"top_k": true` or a Unicode digit into
values the client may not have meant, so numbers and booleans are accepted in one spelling
each: booleans `true`/`false`, integers ASCII digits with an optional minus sign, seconds ASCII
decimals. Body fields must be JSON values of the declared type (pydantic's strict mode).
Query parameters, overridden by body fields of the same name, are validated as one model
that names the first bad one in a 422.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from service.errors import invalid_parameter

_INTEGER = re.compile(r"-?[0-9]{1,18}")
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


def _integer(value: object) -> object:
    if isinstance(value, str):
        if not _INTEGER.fullmatch(value):
            raise ValueError("must be an integer written in ASCII digits")
        return int(value)
    return value


def _boolean(value: object) -> object:
    if isinstance(value, str):
        if value not in ("true", "false"):
            raise ValueError("must be true or false")
        return value == "true"
    return value


def _seconds(value: object) -> object:
    if isinstance(value, str):
        if not _SECONDS.fullmatch(value):
            raise ValueError("must be a number of seconds in ASCII digits, like 2 or 0.5")
        return float(value)
    return value


def parse_count(text: str) -> int | None:
    """A non-negative integer header value (ASCII digits only), or None if it is not one."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


QueryInt = Annotated[int, BeforeValidator(_integer)]
QueryBool = Annotated[bool, BeforeValidator(_boolean)]
HeaderSeconds = Annotated[float, BeforeValidator(_seconds)]

_STRICT = ConfigDict(extra="forbid", strict=True)


@functools.cache
def classify_params(num_classes: int) -> type[BaseModel]:
    """top_k bounded by this model's number of classes (built once per head size)."""
    return create_model(
        "ClassifyParams", __config__=_STRICT, top_k=(int, Field(min(5, num_classes), ge=1, le=num_classes))
    )


class EmbeddingParams(BaseModel):
    model_config = _STRICT
    normalize: bool = False
    encoding_format: Literal["float", "base64"] = "float"


class OpenAIEmbeddingParams(EmbeddingParams):
    """The fields of OpenAI's embeddings request besides `input` (`user` is accepted, unused)."""

    model: str
    dimensions: int | None = None
    user: str | None = None


class FeatureParams(BaseModel):
    model_config = _STRICT
    layer: int = -1
    tokens: Literal["all", "patch"] = "all"
    dtype: Literal["float32", "float16"] = "float32"


def merge(model: type[BaseModel], query: dict[str, Any], body: dict[str, Any]) -> Any:
    """Query parameters, overridden by JSON body fields; one 422 naming the first bad one."""
    try:
        return model.model_validate({**{k: v for k, v in query.items() if v is not None}, **body})
    except ValidationError as exc:
        raise invalid_parameter(exc.errors()) from None
