"""The request pipeline every image route runs: deadline, read, decode, submit, await.

Routes (service/http/) turn a request into images and parameters and results into a response;
everything between is here, once: the request's deadline, reading the body within it, decoding
in the decode processes, queueing for the shared batches, and abandoning all of it when the
client leaves. The engine is reached only through `EngineHandle.submit` (service/engine/handle.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from starlette.requests import Request

from model.config import Layer
from model.preprocess import ImageTooLarge, UnsupportedImageFormat
from service.decoding import DecodeFailed, DecodePool
from service.engine import ItemResult, ModelCard
from service.engine.handle import EngineHandle
from service.errors import (
    ClientDisconnected,
    InvalidImage,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from service.inputs import ParsedInput, parse_images
from service.metrics import Metrics
from service.params import parse_seconds
from service.settings import Resolved, Settings


@dataclass(frozen=True)
class Serving:
    """The parts of a ready service, every one present: what a request is served with."""

    settings: Settings
    resolved: Resolved
    metrics: Metrics
    engine: EngineHandle
    decode_pool: DecodePool

    @property
    def card(self) -> ModelCard:
        return self.engine.card


def deadline_of(request: Request, settings: Settings) -> float:
    """The request's deadline (monotonic): the server's timeout, shortened by X-Request-Timeout."""
    timeout = settings.request_timeout_s
    asked = parse_seconds("X-Request-Timeout", request.headers.get("x-request-timeout"))
    if asked is not None:
        timeout = min(timeout, asked)  # may only shorten the server's deadline
    return time.monotonic() + timeout


async def read_images(request: Request, serving: Serving, deadline: float) -> ParsedInput:
    """The body's images and parameters, in any of /v1's three forms, counted before anything
    is decoded."""
    settings = serving.settings
    return await parse_images(
        request, settings.max_body_bytes, settings.max_images_per_request, settings.max_json_values, deadline
    )


async def compute(
    request: Request,
    serving: Serving,
    endpoint: str,
    images: Sequence[bytes | torch.Tensor],
    deadline: float,
    layer: Layer | None = None,
) -> list[ItemResult]:
    """Decode the images given as bytes, queue them all for the shared batches, and wait. A
    client that leaves abandons its request: images not yet decoded are never decoded, queued
    ones never computed."""
    work = asyncio.ensure_future(_decode_and_submit(serving, images, deadline, layer))
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
    serving.metrics.images.labels(endpoint=endpoint).inc(len(results))
    return results


async def _decode_and_submit(
    serving: Serving, images: Sequence[bytes | torch.Tensor], deadline: float, layer: Layer | None
) -> list[ItemResult]:
    encoded = [image for image in images if isinstance(image, bytes)]
    decoded = iter(await decode(serving.decode_pool, encoded) if encoded else [])
    tensors = [next(decoded) if isinstance(image, bytes) else image for image in images]
    return await serving.engine.submit(tensors, deadline, layer)


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def decode(pool: DecodePool, images: list[bytes]) -> list[torch.Tensor]:
    """A request's images as uint8 (3, S, S) pixels, decoded in the decode processes. The first
    bad one fails the request, naming its index: 400, or 413 past a limit, 415 for a format that
    is not accepted."""
    try:
        arrays = await pool.decode_all(images)
    except DecodeFailed as failure:
        error: type[ServiceError] = InvalidImage
        if isinstance(failure.error, ImageTooLarge):
            error = PayloadTooLarge
        elif isinstance(failure.error, UnsupportedImageFormat):
            error = UnsupportedMediaType
        raise error(str(failure)) from None
    return [torch.from_numpy(array).permute(2, 0, 1) for array in arrays]
