"""Weaviate's inference contract under /weaviate, so that its modules use vit-serve unchanged:
img2vec-neural (`IMAGE_INFERENCE_API=http://vit-serve:8000/weaviate`: `/vectors`) and multi2vec-clip
(`CLIP_INFERENCE_API=…/weaviate`: `/vectorize`, texts too for a CLIP or SigLIP pair), with the readiness probes
and `/meta` their containers answer. Vectors are the model's embeddings, L2-normalised, as the
reference containers return them, computed in the shared batches; errors are `{"error": message}`
with a 4xx (docs/API.md, Weaviate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service import schemas
from service.engine.text_tower import TokenIds
from service.errors import NotReady
from service.http.access import SECURED, admit, error_responses, state_of
from service.http.inputs import (
    M,
    check_image_count,
    client_gone,
    decode_base64,
    load_model,
    parse_off_loop,
    peer,
    read_body,
)
from service.http.ops import model_entry
from service.http.params import TEXT_TOWER, deadline_of
from service.http.v1 import require_embedding
from service.pipeline import Serving, compute, unit
from service.texts import MAX_TEXT_CHARS

router = APIRouter(
    prefix="/weaviate",
    tags=["Weaviate modules"],
    responses=error_responses(schemas.V2Error, (400, 401, 408, 413, 415, 422, 500, 503, 504)),
)

_IMAGE = Field(json_schema_extra={"format": "byte"})  # a base64 image file, as the modules send it
_STRICT = ConfigDict(extra="forbid", strict=True)


def _body(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON request body a route reads itself (bounded, off the loop when large)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


class VectorsRequest(BaseModel):
    model_config = _STRICT
    id: str = ""
    image: Annotated[str, _IMAGE]


class VectorsResponse(BaseModel):
    id: str
    vector: list[float]
    dim: int


class VectorizeRequest(BaseModel):
    model_config = _STRICT
    # Go's nil slice is null; without a text tower, none may be sent
    texts: list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]] | None = Field(
        None, json_schema_extra={TEXT_TOWER: "empty"}
    )
    images: list[Annotated[str, _IMAGE]] | None = None


class VectorizeResponse(BaseModel):
    textVectors: list[list[float]]  # the contract's names
    imageVectors: list[list[float]]


@router.get("/.well-known/live", status_code=204, response_class=Response)
async def live() -> Response:
    """The process answers: 204, as the modules' own containers answer."""
    return Response(status_code=204)


@router.get("/.well-known/ready", status_code=204, response_class=Response)
async def ready(request: Request) -> Response:
    """204 once the model is loaded and warm (the modules wait for it at start-up), else 503."""
    status = state_of(request).readiness
    if status != "ready":
        raise NotReady(f"the service is {status}")
    return Response(status_code=204)


@router.get("/meta", openapi_extra=SECURED)
async def meta(request: Request) -> dict[str, Any]:
    """The served model, as /v1/models describes it."""
    async with admit(request) as serving:
        return {"model": model_entry(serving)}


@router.post("/vectors", response_model=VectorsResponse, openapi_extra=SECURED | _body(VectorsRequest))
async def vectors(request: Request) -> dict[str, Any]:
    """img2vec-neural: one image's vector."""
    async with admit(request) as serving:
        deadline = deadline_of(request.headers, serving.settings)
        body = await _read(request, serving, deadline, VectorsRequest)
        data = decode_base64(body.image, 0, "image")
        unit = await _vectors(request, serving, "/weaviate/vectors", [data], deadline)
    return {"id": body.id, "vector": unit[0], "dim": len(unit[0])}


@router.post("/vectorize", response_model=VectorizeResponse, openapi_extra=SECURED | _body(VectorizeRequest))
async def vectorize(request: Request) -> dict[str, Any]:
    """multi2vec-clip: the texts' and the images' vectors (texts need a CLIP or SigLIP pair: 422)."""
    async with admit(request) as serving:
        deadline = deadline_of(request.headers, serving.settings)
        body = await _read(request, serving, deadline, VectorizeRequest)
        texts, images = body.texts or [], body.images or []
        check_image_count(len(texts) + len(images), serving.settings.max_images_per_request)
        ids = await serving.require_texts("texts").tokenize(texts) if texts else []
        data = [decode_base64(image, i) for i, image in enumerate(images)]
        inputs: list[bytes | TokenIds] = [*ids, *data]
        vectors = await _vectors(request, serving, "/weaviate/vectorize", inputs, deadline) if inputs else []
    return {"textVectors": vectors[: len(ids)], "imageVectors": vectors[len(ids) :]}


async def _read(request: Request, serving: Serving, deadline: float, model: type[M]) -> M:
    raw = await read_body(request, serving.settings.max_body_bytes, deadline)
    return await parse_off_loop(lambda: load_model(model, raw, serving.settings.max_json_values), len(raw))


async def _vectors(
    request: Request, serving: Serving, endpoint: str, images: Sequence[bytes | TokenIds], deadline: float
) -> list[list[float]]:
    """The images' (and texts') embeddings, each scaled to unit length."""
    require_embedding(serving.card)
    results = await compute(serving, endpoint, images, deadline, None, client_gone(request), peer(request))
    return [unit(result.embedding).tolist() for result in results]
