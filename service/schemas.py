"""Response shapes (docs/API.md, Endpoints), for the OpenAPI schema and the clients generated from it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.texts import MAX_TEXT_CHARS


class Prediction(BaseModel):
    index: int = Field(description="the class's index, or the label's in the request's `labels`")
    label: str
    score: float = Field(
        description="softmax probability over all classes; zero-shot: over the labels (CLIP), or each label's"
        " sigmoid (SigLIP)"
    )


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
    usage: Usage


class OpenAIEmbedding(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int = Field(
        description="tokens the towers read: a text's (special tokens included), an image's prefix tokens and patches"
    )
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


class TextTowerInfo(BaseModel):
    tokenizer: str = Field(description="the checkpoint directory's tokenizer file: tokenizer.json or spiece.model")
    max_tokens: int = Field(description="a text is truncated to this many tokens, special tokens included")
    padding: str = Field(description="'longest' (CLIP, causal) or 'max_length' (SigLIP reads its padding)")
    dim: int = Field(description="the size of a text's embedding: the image embedding's")
    similarity: str = Field(description="zero-shot scores: softmax over the labels (CLIP) or a sigmoid of each")


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
    text: TextTowerInfo | None = Field(description="the pair's text tower (texts, zero-shot labels); null: none")


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
# A text for a CLIP or SigLIP pair's text tower, marked as service/http/params.py's TEXT_TOWER
# marks what the served schema keeps only for such a model (service/http/openapi.py).
_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS, "description": "a text", "x-text-tower": True}


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
    if openai is not None:  # the embeddings route: texts too, for a model with a text tower
        texts = {
            "type": "object",
            "properties": {"texts": {"type": "array", "items": _TEXT, "minItems": 1}} | _fields(params),
            "required": ["texts"],
            "additionalProperties": False,
            "x-text-tower": True,
        }
        # OpenAI's `input`: images as data: URLs, or, where the model has no text tower, base64
        item = {"anyOf": [_IMAGE_STRING, _TEXT]}
        inputs = {"anyOf": [item, {"type": "array", "items": item, "minItems": 1}]}
        form = {
            "type": "object",
            "properties": {"input": inputs} | _fields(openai),
            "required": ["input", "model"],
            "additionalProperties": False,
        }
        json_schema = {"oneOf": [native, texts, form]}
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
