"""Response shapes of SPEC §4, for the OpenAPI schema and the clients generated from it."""

from __future__ import annotations

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


class CheckpointInfo(BaseModel):
    format: str
    path: str | None
    sha256: str | None


class ModelInfo(BaseModel):
    id: str
    num_classes: int
    embedding_dim: int
    image_size: int
    patch_size: int
    depth: int
    heads: int
    device: str
    dtype: str
    checkpoint: CheckpointInfo
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


IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["image"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string"}, "description": "base64 or data URLs"},
                    },
                    "required": ["images"],
                }
            },
        },
    }
}
