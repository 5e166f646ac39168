"""`create_app(settings, source)`: the FastAPI app, put together from service/http/ and service/lifecycle.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service import __version__, lifecycle
from service.engine.handle import EngineSource
from service.http import ops, v1, v2, weaviate
from service.http.error_handlers import install_error_handlers
from service.http.middleware import RequestContext
from service.http.openapi import openapi
from service.lifecycle import ServiceState
from service.settings import Settings


def create_app(settings: Settings, source: EngineSource) -> FastAPI:
    """The service for `settings`, reaching its engine as `source` says (the process layout's
    choice: service/engine/handle.py)."""
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(lifecycle.start(state, source))
        if source.listen_once_ready:  # uvicorn listens once the lifespan has started
            await loader
            if state.status != "ready":
                raise RuntimeError("the front-end failed to start")
        try:
            yield
        finally:
            await lifecycle.stop(state, loader)

    # FastAPI's /docs loads Swagger UI's JavaScript and CSS from a CDN, a blank page on a machine
    # without internet: fastapi-offline's app serves the same page from files it ships (Swagger UI
    # 5, which renders FastAPI's OpenAPI 3.1) under /static-offline-docs. No /redoc: ReDoc still
    # fetches its badge from cdn.redoc.ly, and one offline page is enough.
    app = FastAPIOffline(
        title="vit-serve",
        version=__version__,
        summary="Vision Transformer labels and embeddings, micro-batched.",
        lifespan=lifespan,
        redoc_url=None,
        swagger_ui_parameters={"validatorUrl": None},  # Swagger UI would ask validator.swagger.io
    )
    app.state.service = state
    for module in (v1, ops, v2, weaviate):
        app.include_router(module.router)
    install_error_handlers(app, state.metrics)
    app.add_middleware(RequestContext, metrics=state.metrics)
    app.openapi = lambda: openapi(app, settings, state.card)  # type: ignore[method-assign]
    return app
