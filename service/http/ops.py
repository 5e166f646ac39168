"""Operations: the served model (/v1/models), liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import schemas
from service.engine.card import TextCard
from service.http.access import ERRORS, SECURED, admit, state_of
from service.pipeline import Serving

router = APIRouter()


@router.get("/v1/models", response_model=schemas.ModelsResponse, responses=ERRORS, openapi_extra=SECURED)
async def models(request: Request) -> dict[str, Any]:
    """The served model: its shape, device, dtype, checkpoint and batching."""
    async with admit(request) as serving:
        return {"data": [model_entry(serving)]}


def model_entry(serving: Serving) -> dict[str, Any]:
    """The served model as /v1/models (and Weaviate's /meta) describe it."""
    card = serving.card
    cfg = card.cfg
    return {
        "id": card.model_id,
        "family": cfg.family,
        "num_classes": cfg.num_classes,
        "embedding_dim": cfg.embedding_dim,
        "embedding": card.embedding_meaning,
        "hidden_size": cfg.embed_dim,
        "prefix_tokens": cfg.prefix_tokens,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "depth": cfg.depth,
        "heads": cfg.num_heads,
        "device": card.device,
        "dtype": card.dtype,
        "dtype_reason": card.dtype_reason,
        "checkpoint": {
            "format": card.checkpoint_format,
            "path": card.checkpoint_path,
            "sha256": card.checkpoint_sha256,
        },
        "compiled_batch_sizes": list(card.compiled_buckets),
        "max_batch_size": serving.resolved.max_batch_size,
        "max_wait_ms": serving.settings.max_wait_ms,
        "text": _text_entry(card.text),
    }


def _text_entry(text: TextCard | None) -> dict[str, Any] | None:
    if text is None:
        return None
    return {
        "tokenizer": text.tokenizer,
        "max_tokens": text.max_tokens,
        "padding": "max_length" if text.pad_to else "longest",
        "dim": text.dim,
        "similarity": text.similarity,
    }


@router.get("/healthz", response_model=schemas.Status)
async def healthz() -> dict[str, str]:
    """Liveness: the process answers HTTP. No model call."""
    return {"status": "alive"}


@router.get("/readyz", response_model=schemas.Status, responses={503: {"model": schemas.Status}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: weights loaded, warm-up done, batch loop running."""
    status = state_of(request).readiness
    return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format (docs/API.md, Metrics)."""
    state = state_of(request)
    if state.engine is not None:
        for kind, value in state.engine.gpu_memory().items():
            state.metrics.gpu_memory.labels(kind=kind).set(value)
    return Response(generate_latest(state.metrics.exposition), media_type=CONTENT_TYPE_LATEST)
