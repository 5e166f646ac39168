"""The HTTP API of SPEC §4 (classify, embeddings, models, health, metrics), OpenAI's embeddings
form, and /v1/features."""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model.preprocess import ImageTooLarge, UnsupportedImageFormat
from service import schemas
from service.batching import Batcher, ItemResult
from service.decoding import DecodeFailed, DecodePool
from service.engine import Engine
from service.errors import (
    ClientDisconnected,
    InferenceFailed,
    InvalidImage,
    InvalidParameter,
    InvalidRequest,
    NotFound,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
)
from service.inputs import ParsedInput, parse_images
from service.metrics import Metrics
from service.params import (
    EmbeddingParams,
    FeatureParams,
    HeaderSeconds,
    OpenAIEmbeddingParams,
    QueryBool,
    QueryInt,
    classify_params,
    merge,
)
from service.settings import Settings
from service.state import ServiceState

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse} for code in (400, 401, 404, 408, 413, 415, 422, 500, 503, 504)
}

router = APIRouter()


async def get_state(request: Request) -> ServiceState:
    """Async, like every dependency here: FastAPI runs a plain `def` dependency on a worker
    thread, a hop per request."""
    return request.app.state.service  # type: ignore[no-any-return]


State = Annotated[ServiceState, Depends(get_state)]


async def require_api_key(state: State, authorization: Annotated[str | None, Header()] = None) -> None:
    """Bearer keys, compared in constant time against every key; one answer whatever failed."""
    keys = state.settings.api_keys
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.strip().encode(), key.encode())
    if scheme.lower() != "bearer" or not matched:
        raise Unauthorized()


@dataclass(frozen=True)
class Serving:
    """The parts of a ready service, every one present: what the model routes work with."""

    settings: Settings
    metrics: Metrics
    engine: Engine
    batcher: Batcher
    decode_pool: DecodePool
    max_batch_size: int


async def require_ready(state: State) -> AsyncIterator[Serving]:
    """Admit a request only while ready, and count it until it is answered: draining waits
    for every admitted request, those still being decoded included."""
    status = state.readiness
    engine, batcher, pool = state.engine, state.batcher, state.decode_pool
    if status != "ready" or engine is None or batcher is None or pool is None:
        raise NotReady(f"the service is {status}")
    state.admitted += 1
    try:
        yield Serving(state.settings, state.metrics, engine, batcher, pool, state.max_batch_size)
    finally:
        state.admitted -= 1


Ready = Annotated[Serving, Depends(require_ready)]
Authorized = [Depends(require_api_key)]


def require_model(engine: Engine, name: str) -> None:
    """404 unless `name` is the served model's id (OpenAI's `model`, /v2's model path)."""
    if name != engine.model_id:
        raise NotFound(f"model {name!r} is not served here; this service serves {engine.model_id!r}")


def deadline_of(settings: Settings, timeout_header: float | None) -> float:
    """The request's deadline (monotonic): the server's timeout, shortened by X-Request-Timeout."""
    timeout = settings.request_timeout_s
    if timeout_header is not None:
        if not 0 < timeout_header < float("inf"):
            raise InvalidParameter("X-Request-Timeout must be a positive number of seconds")
        timeout = min(timeout, timeout_header)  # may only shorten the server's deadline
    return time.monotonic() + timeout


async def _read(request: Request, state: Serving, timeout_header: float | None) -> tuple[ParsedInput, float]:
    """The deadline, then the body's images and parameters (checked before anything is decoded)."""
    deadline = deadline_of(state.settings, timeout_header)
    settings = state.settings
    parsed = await parse_images(
        request, settings.max_body_bytes, settings.max_images_per_request, settings.max_json_values, deadline
    )
    return parsed, deadline


async def compute(
    request: Request,
    state: Serving,
    endpoint: str,
    images: Sequence[bytes | torch.Tensor],
    deadline: float,
    layer: int | None = None,
) -> list[ItemResult]:
    """Decode the images given as bytes, queue them all for the shared batches, and wait. A
    client that leaves abandons its request: images not yet decoded are never decoded, queued
    ones never computed."""
    work = asyncio.ensure_future(_decode_and_submit(state, images, deadline, layer))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not work.done():
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        raise ClientDisconnected("the client closed the connection")
    results = work.result()
    state.metrics.images.labels(endpoint=endpoint).inc(len(results))
    return results


async def _decode_and_submit(
    state: Serving, images: Sequence[bytes | torch.Tensor], deadline: float, layer: int | None
) -> list[ItemResult]:
    encoded = [image for image in images if isinstance(image, bytes)]
    decoded = iter(await decode_all(state, encoded) if encoded else [])
    tensors = [next(decoded) if isinstance(image, bytes) else image for image in images]
    return await state.batcher.submit(tensors, deadline, layer)


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def decode_all(state: Serving, images: list[bytes]) -> list[torch.Tensor]:
    """Decode a request's images in the decode processes: uint8 (3, S, S) each. The first bad
    one fails the request, naming its index."""
    try:
        arrays = await state.decode_pool.decode_all(images)
    except DecodeFailed as failure:
        error: type[ServiceError] = InvalidImage
        if isinstance(failure.error, ImageTooLarge):
            error = PayloadTooLarge
        elif isinstance(failure.error, UnsupportedImageFormat):
            error = UnsupportedMediaType
        raise error(str(failure)) from None
    return [torch.from_numpy(array).permute(2, 0, 1) for array in arrays]


def _native_form(parsed: ParsedInput, endpoint: str) -> None:
    if parsed.openai:
        raise InvalidRequest(f'"input" is the OpenAI embeddings form, for /v1/embeddings; {endpoint} takes "images"')


TimeoutHeader = Annotated[
    HeaderSeconds | None, Header(alias="X-Request-Timeout", description="seconds (ASCII decimal); only shortens")
]
# what the image routes declare: their error responses, the three body forms, API keys
IMAGE_ROUTE: dict[str, Any] = {"responses": ERRORS, "openapi_extra": schemas.IMAGE_BODY, "dependencies": Authorized}
EMBEDDINGS_ROUTE = IMAGE_ROUTE | {"openapi_extra": schemas.EMBEDDINGS_BODY}


@router.post("/v1/classify", response_model=schemas.ClassifyResponse, **IMAGE_ROUTE)
async def classify(
    request: Request,
    state: Ready,
    top_k: Annotated[QueryInt | None, Query(ge=1, description="predictions per image (1 … classes, default 5)")] = None,
    x_request_timeout: TimeoutHeader = None,
) -> JSONResponse:
    """Top-k labels for each image."""
    labels = state.engine.labels
    if not labels:
        raise InvalidParameter("this model has no classification head; use /v1/embeddings")
    parsed, deadline = await _read(request, state, x_request_timeout)
    _native_form(parsed, "/v1/classify")
    k = merge(classify_params(len(labels)), {"top_k": top_k}, parsed.params).top_k
    results = await compute(request, state, "/v1/classify", parsed.images, deadline)
    out = []
    for result in results:
        if result.probs is None:  # labels exist only for a model with a head
            raise InferenceFailed("the model returned no class scores")
        scores, indices = result.probs.topk(k)
        out.append(
            {
                "predictions": [
                    {"index": i, "label": labels[i], "score": s}
                    for s, i in zip(scores.tolist(), indices.tolist(), strict=True)
                ]
            }
        )
    return JSONResponse({"model": state.engine.model_id, "results": out})


@router.post(
    "/v1/embeddings", response_model=schemas.EmbeddingsResponse | schemas.OpenAIEmbeddingsResponse, **EMBEDDINGS_ROUTE
)
async def embeddings(
    request: Request,
    state: Ready,
    normalize: Annotated[QueryBool | None, Query(description="return y / ‖y‖₂: true or false (default)")] = None,
    encoding_format: Annotated[str | None, Query(description="float (default) or base64")] = None,
    x_request_timeout: TimeoutHeader = None,
) -> JSONResponse:
    """The [class]-token embedding y = LN(z_L⁰) of each image; a body with `input` (OpenAI's
    embeddings request) gets OpenAI's response shape."""
    parsed, deadline = await _read(request, state, x_request_timeout)
    query = {"normalize": normalize, "encoding_format": encoding_format}
    params = merge(OpenAIEmbeddingParams if parsed.openai else EmbeddingParams, query, parsed.params)
    engine = state.engine
    if parsed.openai:
        require_model(engine, params.model)
        if params.dimensions is not None and params.dimensions != engine.model.cfg.embed_dim:
            raise InvalidParameter(f"dimensions: this model's embeddings have {engine.model.cfg.embed_dim}")
    results = await compute(request, state, "/v1/embeddings", parsed.images, deadline)
    vectors = []
    for result in results:
        y = result.embedding.numpy()
        if params.normalize:
            y = y / max(float(np.linalg.norm(y)), 1e-12)
        vectors.append(_b64(y, "<f4") if params.encoding_format == "base64" else y.tolist())
    if parsed.openai:
        tokens = len(results) * (engine.model.cfg.num_patches + 1)  # the tokens the encoder read
        return JSONResponse(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "model": engine.model_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
    data = [{"index": i, "embedding": v} for i, v in enumerate(vectors)]
    return JSONResponse({"model": engine.model_id, "dim": engine.model.cfg.embed_dim, "data": data})


@router.post("/v1/features", response_model=schemas.FeaturesResponse, **IMAGE_ROUTE)
async def features(
    request: Request,
    state: Ready,
    layer: Annotated[QueryInt | None, Query(description="hidden state z_l: 0 … L, or from the end (-1 = z_L)")] = None,
    tokens: Annotated[str | None, Query(description="all (default: [class] and patches) or patch")] = None,
    dtype: Annotated[str | None, Query(description="float32 (default) or float16")] = None,
    x_request_timeout: TimeoutHeader = None,
) -> JSONResponse:
    """One layer's hidden states for each image, as LLaVA-style vision-language models read them."""
    parsed, deadline = await _read(request, state, x_request_timeout)
    _native_form(parsed, "/v1/features")
    params = merge(FeatureParams, {"layer": layer, "tokens": tokens, "dtype": dtype}, parsed.params)
    try:
        state.engine.model.layer_index(params.layer)  # the model's own bounds: 0 … L, or -(L+1) … -1
    except ValueError as exc:
        raise InvalidParameter(str(exc)) from None  # "layer 3 is outside -3..2"
    results = await compute(request, state, "/v1/features", parsed.images, deadline, params.layer)
    dtype_code = "<f2" if params.dtype == "float16" else "<f4"
    data = []
    for i, result in enumerate(results):
        if result.hidden is None:  # the batcher fills the layer each item asked for
            raise InferenceFailed("the model returned no hidden states")
        hidden = result.hidden.numpy()
        if params.tokens == "patch":
            hidden = hidden[1:]
        data.append({"index": i, "shape": list(hidden.shape), "features": _b64(hidden, dtype_code)})
    return JSONResponse(
        {
            "model": state.engine.model_id,
            "layer": params.layer,
            "tokens": params.tokens,
            "dtype": params.dtype,
            "data": data,
        }
    )


def _b64(array: np.ndarray, dtype_code: str) -> str:
    """Little-endian bytes of `array` in `dtype_code`, base64: converted by numpy, so no torch
    thread team is ever started outside the engine's thread."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype_code).tobytes()).decode("ascii")


@router.get("/v1/models", response_model=schemas.ModelsResponse, dependencies=Authorized)
async def models(state: Ready) -> dict[str, Any]:
    engine = state.engine
    cfg, ckpt = engine.model.cfg, engine.checkpoint
    return {
        "data": [
            {
                "id": engine.model_id,
                "num_classes": cfg.num_classes,
                "embedding_dim": cfg.embed_dim,
                "image_size": cfg.image_size,
                "patch_size": cfg.patch_size,
                "depth": cfg.depth,
                "heads": cfg.num_heads,
                "device": str(engine.device),
                "dtype": engine.dtype_name,
                "checkpoint": {
                    "format": ckpt.format,
                    "path": str(ckpt.path) if ckpt.path else None,
                    "sha256": ckpt.sha256,
                },
                "max_batch_size": state.max_batch_size,
                "max_wait_ms": state.settings.max_wait_ms,
            }
        ]
    }


@router.get("/healthz", response_model=schemas.Status)
async def healthz() -> dict[str, str]:
    """Liveness: the process answers HTTP. No model call."""
    return {"status": "alive"}


@router.get("/readyz", response_model=schemas.Status, responses={503: {"model": schemas.Status}})
async def readyz(state: State) -> JSONResponse:
    """Readiness: weights loaded, warm-up done, batch loop running."""
    status = state.readiness
    return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)


@router.get("/metrics", response_class=Response)
async def metrics(state: State) -> Response:
    if state.engine is not None:
        for kind, value in state.engine.gpu_memory().items():
            state.metrics.gpu_memory.labels(kind=kind).set(value)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
