"""Response shapes (docs/API.md, Endpoints), for the OpenAPI schema and the clients generated from it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    index: int
    label: str
    score: float = Field(description="softmax probability over all classes")


class ClassifyResult(BaseModel):
    predictions: list[Prediction]


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult] = Field(description="one per image, in input order")


class Embedding(BaseModel):
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class EmbeddingsResponse(BaseModel):
    model: str
    dim: int
    data: list[Embedding]


class OpenAIEmbedding(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int = Field(description="tokens the encoder read: images × (prefix tokens + patches)")
    total_tokens: int


class OpenAIEmbeddingsResponse(BaseModel):
    """OpenAI's embeddings response, for a request sent in OpenAI's form (with `input`)."""

    object: str = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: Usage


class Features(BaseModel):
    index: int
    shape: list[int] = Field(description="(tokens, D): tokens = prefix tokens + patches, or patches only")
    features: str = Field(description="base64 of the little-endian values, row-major")


class FeaturesResponse(BaseModel):
    model: str
    layer: int | str
    tokens: str
    dtype: str
    data: list[Features]


class CheckpointInfo(BaseModel):
    format: str
    path: str | None
    sha256: str | None


class ModelInfo(BaseModel):
    id: str
    family: str = Field(description="vit, clip, siglip, dinov2 or deit")
    num_classes: int
    embedding_dim: int = Field(description="the size of /v1/embeddings' vectors; 0: the model has none")
    embedding: str = Field(description="what /v1/embeddings returns for this family")
    hidden_size: int = Field(description="D: the size of each token in /v1/features")
    prefix_tokens: int = Field(description="tokens before the patches in /v1/features: class, registers, distillation")
    image_size: int = Field(description="the side images are resized and cropped to: the processor's, not the config's")
    patch_size: int
    depth: int
    heads: int
    device: str
    dtype: str
    dtype_reason: str = Field(description="why this dtype: VIT_DTYPE, or what auto found (CPU flags, start-up probe)")
    checkpoint: CheckpointInfo
    compiled_batch_sizes: list[int] = Field(
        description="the batch sizes torch.compile compiled at start (a batch is padded up to one); [] uncompiled"
    )
    max_batch_size: int
    max_wait_ms: float


class ModelsResponse(BaseModel):
    data: list[ModelInfo]


class Status(BaseModel):
    status: str


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class V2Error(BaseModel):
    """The Open Inference Protocol's error object."""

    error: str


# An image in JSON: OpenAPI's `byte` format (base64) of an image file; a data: URL is accepted too.
_IMAGE_STRING = {"type": "string", "format": "byte", "description": "an image file, base64-encoded, or a data: URL"}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def _fields(params: type[BaseModel]) -> dict[str, Any]:
    """A params model's fields as JSON body properties (the body may carry the query's parameters)."""
    properties = params.model_json_schema()["properties"]
    return {name: {k: v for k, v in schema.items() if k != "title"} for name, schema in properties.items()}


def image_body(params: type[BaseModel], openai: type[BaseModel] | None = None) -> dict[str, Any]:
    """The request body of a /v1 image route whose parameters `params` declares: a raw image, a
    multipart form of `image` parts, or JSON `images` with the parameters as fields (nothing
    else: unknown fields are refused); with `openai`, also OpenAI's embeddings request. The
    counts (VIT_MAX_IMAGES_PER_REQUEST) are set per service, by service/http/openapi.py."""
    images = {"type": "array", "items": _IMAGE_STRING, "minItems": 1}
    native = {
        "type": "object",
        "properties": {"images": images} | _fields(params),
        "required": ["images"],
        "additionalProperties": False,
    }
    json_schema: dict[str, Any] = native
    if openai is not None:
        single = _IMAGE_STRING | {"description": "one image: base64 or a data: URL"}
        inputs = {"anyOf": [single, {"type": "array", "items": _IMAGE_STRING, "minItems": 1}]}
        form = {
            "type": "object",
            "properties": {"input": inputs} | _fields(openai),
            "required": ["input", "model"],
            "additionalProperties": False,
        }
        json_schema = {"oneOf": [native, form]}
    multipart = {
        "type": "object",
        "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}},
        "required": ["image"],
    }
    content = {
        "image/jpeg": _BINARY,
        "image/png": _BINARY,
        "application/octet-stream": _BINARY,
        "multipart/form-data": {"schema": multipart},
        "application/json": {"schema": json_schema},
    }
    return {"requestBody": {"required": True, "content": content}}
