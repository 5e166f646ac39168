"""/v1: top-k labels (a trained head's, or zero-shot labels' for a CLIP or SigLIP pair), embeddings
of images and texts (also in OpenAI's form), and hidden states, for images sent in any of three
forms (docs/API.md, Sending images)."""

from __future__ import annotations

import base64
import functools
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service import schemas
from service.engine import ItemResult, ModelCard
from service.engine.text_tower import TokenIds
from service.errors import InferenceFailed, InvalidParameter, InvalidRequest, PayloadTooLarge
from service.http.access import ERRORS, SECURED, admit, require_model
from service.http.inputs import client_gone, peer, read_images
from service.http.params import (
    ClassifyParams,
    EmbeddingParams,
    FeatureParams,
    OpenAIEmbeddingParams,
    check_bounds,
    deadline_of,
    from_query,
    merge,
    openapi_parameters,
)
from service.pipeline import Serving, compute, label_vectors, unit
from service.texts import DEFAULT_TEMPLATE, zero_shot_scores

router = APIRouter()


async def receive(
    request: Request,
    serving: Serving,
    endpoint: str,
    params_model: type[BaseModel],
    openai_model: type[BaseModel] | None = None,
) -> tuple[list[bytes | TokenIds], Any, float]:
    """The opening every /v1 route shares: the request's deadline and query (checked before the
    body is read), the body's images or texts (counted before anything is decoded), and the
    parameters (the query's, overridden by body fields) validated by `params_model`, or by
    `openai_model` for OpenAI's `input` form; only a route that gives one takes it, and texts
    (tokenized here: 422 for a model without a text tower)."""
    deadline = deadline_of(request.headers, serving.settings)
    query = from_query(params_model, request.query_params)
    check_bounds(serving.card, query)
    embeds = openai_model is not None
    parsed = await read_images(request, serving.settings, deadline, texts=embeds and serving.texts is not None)
    if (parsed.openai or parsed.texts) and not embeds:
        form = '"input" is the OpenAI embeddings form' if parsed.openai else '"texts" are embedded'
        raise InvalidRequest(f'{form}, at /v1/embeddings; {endpoint} takes "images"')
    model = openai_model if parsed.openai and openai_model is not None else params_model
    params = merge(model, query, parsed.params)
    check_bounds(serving.card, vars(params))
    texts = [item for item in parsed.inputs if isinstance(item, str)]
    ids = iter(await serving.require_texts("texts").tokenize(texts) if texts else [])
    return [next(ids) if isinstance(item, str) else item for item in parsed.inputs], params, deadline


def require_embedding(card: ModelCard) -> None:
    """422 for a model without a pooled embedding (a SigLIP tower without its head)."""
    if not card.cfg.embedding_dim:
        raise InvalidParameter("this model has no pooled embedding (a tower without its head): use /v1/features")


def _route(params: type[BaseModel], openai: type[BaseModel] | None = None) -> dict[str, Any]:
    """What an image route declares: its parameters, the body forms, errors and the bearer key."""
    body = schemas.image_body(params, openai)
    return {"responses": ERRORS, "openapi_extra": {"parameters": openapi_parameters(params), **body, **SECURED}}


@router.post("/v1/classify", response_model=schemas.ClassifyResponse, **_route(ClassifyParams))
async def classify(request: Request) -> JSONResponse:
    """Top-k labels for each image: the trained head's, or zero-shot `labels`' (a CLIP or SigLIP pair)."""
    async with admit(request) as serving:
        endpoint = "/v1/classify"
        images, params, deadline = await receive(request, serving, endpoint, ClassifyParams)
        labels = params.labels or serving.card.labels
        if not labels:
            raise InvalidParameter(
                "labels: this model has no classification head; send zero-shot labels (a CLIP or SigLIP pair)"
                " or use /v1/embeddings"
            )
        template = params.template or DEFAULT_TEMPLATE
        if params.labels:
            _check_zero_shot(serving, params.labels)
        k = params.top_k or (len(labels) if params.labels else min(5, len(labels)))
        results = await compute(serving, endpoint, images, deadline, None, client_gone(request), peer(request))
        if params.labels:
            gone = functools.partial(client_gone, request)
            vectors = await label_vectors(serving, endpoint, params.labels, template, deadline, gone)
            card = serving.require_texts().card
            scores = [zero_shot_scores(card, unit(result.embedding), vectors) for result in results]
        else:
            scores = [_probs(result) for result in results]
    out = []
    for probs in scores:
        indices = np.argsort(-probs, kind="stable")[:k]  # the highest first; ties by index
        out.append(
            {"predictions": [{"index": i, "label": labels[i], "score": float(probs[i])} for i in indices.tolist()]}
        )
    return JSONResponse({"model": serving.card.model_id, "results": out})


def _probs(result: ItemResult) -> np.ndarray:
    if result.probs is None:  # labels exist only for a model with a head
        raise InferenceFailed("the model returned no class scores")
    return result.probs


def _check_zero_shot(serving: Serving, labels: list[str]) -> None:
    """Before any image is decoded: a text tower, and at most VIT_MAX_LABELS labels."""
    serving.require_texts("labels")
    if len(labels) > serving.settings.max_labels:
        raise PayloadTooLarge(f"{len(labels)} labels; the limit is {serving.settings.max_labels} (VIT_MAX_LABELS)")


@router.post(
    "/v1/embeddings",
    response_model=schemas.EmbeddingsResponse | schemas.OpenAIEmbeddingsResponse,
    **_route(EmbeddingParams, OpenAIEmbeddingParams),
)
async def embeddings(request: Request) -> JSONResponse:
    """Each image's embedding, as the model's family defines it (y = LN(z_L⁰) for a ViT; see
    /v1/models); a body with `input` (OpenAI's embeddings request) gets OpenAI's response shape."""
    async with admit(request) as serving:
        endpoint = "/v1/embeddings"
        card = serving.card
        require_embedding(card)
        inputs, params, deadline = await receive(request, serving, endpoint, EmbeddingParams, OpenAIEmbeddingParams)
        openai = isinstance(params, OpenAIEmbeddingParams)
        if openai:
            require_model(card, params.model)
        results = await compute(serving, endpoint, inputs, deadline, None, client_gone(request), peer(request))
    vectors = []
    for result in results:
        y = unit(result.embedding) if params.normalize else result.embedding
        vectors.append(_b64(y, "<f4") if params.encoding_format == "base64" else y.tolist())
    # the tokens the towers read: a text's (special tokens included), an image's prefix and patches
    tokens = sum(len(item) if isinstance(item, tuple) else card.cfg.num_tokens for item in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    if openai:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "model": card.model_id,
                "usage": usage,
            }
        )
    data = [{"index": i, "embedding": v} for i, v in enumerate(vectors)]
    return JSONResponse({"model": card.model_id, "dim": card.cfg.embedding_dim, "data": data, "usage": usage})


@router.post("/v1/features", response_model=schemas.FeaturesResponse, **_route(FeatureParams))
async def features(request: Request) -> JSONResponse:
    """One layer's hidden states for each image, as LLaVA-style vision-language models read them."""
    async with admit(request) as serving:
        endpoint = "/v1/features"
        images, params, deadline = await receive(request, serving, endpoint, FeatureParams)
        results = await compute(serving, endpoint, images, deadline, params.layer, client_gone(request), peer(request))
    dtype_code = "<f2" if params.dtype == "float16" else "<f4"
    data = []
    for i, result in enumerate(results):
        if result.hidden is None:  # the batcher fills the layer each item asked for
            raise InferenceFailed("the model returned no hidden states")
        hidden = result.hidden
        if params.tokens == "patch":
            hidden = hidden[serving.card.cfg.prefix_tokens :]
        data.append({"index": i, "shape": list(hidden.shape), "features": _b64(hidden, dtype_code)})
    return JSONResponse(
        {
            "model": serving.card.model_id,
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
