"""What routes declare they need: the service's state, a ready service (`Ready`), an API key
(`Authorized`), the X-Request-Timeout header, and the served model's name.

Every dependency is `async`: FastAPI runs a plain `def` dependency on a worker thread, a hop
per request.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from service import schemas
from service.engine import Engine
from service.errors import NotFound, NotReady, Unauthorized
from service.lifecycle import ServiceState
from service.params import HeaderSeconds
from service.pipeline import Serving


async def get_state(request: Request) -> ServiceState:
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


async def require_ready(state: State) -> AsyncIterator[Serving]:
    """Admit a request only while ready, and count it until it is answered: draining waits
    for every admitted request, those still being decoded included."""
    status = state.readiness
    engine, batcher, pool, resolved = state.engine, state.batcher, state.decode_pool, state.resolved
    if status != "ready" or engine is None or batcher is None or pool is None or resolved is None:
        raise NotReady(f"the service is {status}")
    state.admitted += 1
    try:
        yield Serving(state.settings, resolved, state.metrics, engine, batcher, pool)
    finally:
        state.admitted -= 1


Ready = Annotated[Serving, Depends(require_ready)]
Authorized = [Depends(require_api_key)]

TimeoutHeader = Annotated[
    HeaderSeconds | None, Header(alias="X-Request-Timeout", description="seconds (ASCII decimal); only shortens")
]

# the error responses every route may give, with docs/API.md's error body
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse} for code in (400, 401, 404, 408, 413, 415, 422, 500, 503, 504)
}


def require_model(engine: Engine, name: str) -> None:
    """404 unless `name` is the served model's id (OpenAI's `model`, /v2's model path)."""
    if name != engine.model_id:
        raise NotFound(f"model {name!r} is not served here; this service serves {engine.model_id!r}")
