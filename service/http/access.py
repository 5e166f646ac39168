"""Who may use the model, and when: API keys, readiness, and the count of admitted requests
that draining waits for (docs/API.md, Sending images: request headers).

Routes call these themselves (`async with admit(request) as serving:`) rather than declaring
FastAPI dependencies: one line each, and no dependency solving per request.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request

from service import schemas
from service.engine import ModelCard
from service.errors import NotFound, NotReady, Unauthorized
from service.lifecycle import ServiceState
from service.pipeline import Serving


def error_responses(model: type[BaseModel], codes: tuple[int, ...]) -> dict[int | str, dict[str, Any]]:
    """The errors a router declares, in `model`'s shape, and the HTTP server's own 431 (in the
    native shape: it answers before any route, for a request head past its limits, such as a long
    query of labels)."""
    declared: dict[int | str, dict[str, Any]] = {code: {"model": model} for code in codes}
    return declared | {431: {"model": schemas.ErrorResponse}}


# what every model route declares in the OpenAPI schema: its error responses and the bearer key
ERRORS = error_responses(schemas.ErrorResponse, (400, 401, 404, 405, 408, 413, 415, 422, 500, 503, 504))
BEARER = {"bearer": {"type": "http", "scheme": "bearer", "description": "one of VIT_API_KEYS, when set"}}
SECURED: dict[str, Any] = {"security": [{"bearer": []}]}


def state_of(request: Request) -> ServiceState:
    return request.app.state.service  # type: ignore[no-any-return]


def check_api_key(state: ServiceState, request: Request) -> None:
    """Bearer keys, compared in constant time against every key; one answer whatever failed."""
    keys = state.settings.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.strip().encode(), key.encode())
    if scheme.lower() != "bearer" or not matched:
        raise Unauthorized()


@asynccontextmanager
async def admit(request: Request) -> AsyncIterator[Serving]:
    """A request for the model, admitted only with a valid key (when keys are set) and while
    ready, and counted until it is answered: draining waits for every admitted request, those
    still being decoded included."""
    state = state_of(request)
    check_api_key(state, request)
    status = state.readiness
    engine, pool, resolved = state.engine, state.decode_pool, state.resolved
    if status != "ready" or engine is None or pool is None or resolved is None:
        raise NotReady(f"the service is {status}")
    state.admitted += 1
    try:
        yield Serving(state.settings, resolved, state.metrics, engine, pool, state.texts)
    finally:
        state.admitted -= 1


def require_model(card: ModelCard, name: str) -> None:
    """404 unless `name` is the served model's id (OpenAI's `model`, /v2's model path)."""
    if name != card.model_id:
        raise NotFound(f"model {name!r} is not served here; this service serves {card.model_id!r}")
