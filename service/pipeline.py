"""The request pipeline every image route runs: decode, submit, await, within a deadline.

Routes (service/http/) read a request into images, parameters and a deadline, and write results
as a response; everything between is here, once, knowing nothing of HTTP: decoding in the
decode processes (or on the GPU: VIT_GPU_DECODE), queueing for the shared batches, and abandoning
both when the client leaves.
The engine is reached only through `EngineHandle.submit` (service/engine/handle.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.config import Layer
from model.preprocess import ImageTooLarge, UnsupportedImageFormat
from service.decoding import DecodeFailed, DecodePool
from service.engine import ItemResult, ModelCard
from service.engine.device import Image
from service.engine.handle import EngineHandle
from service.errors import (
    ClientDisconnected,
    InvalidImage,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from service.metrics import Metrics
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


async def compute(
    serving: Serving,
    endpoint: str,
    images: Sequence[bytes | np.ndarray],
    deadline: float,
    layer: Layer | None,
    client_gone: Coroutine[Any, Any, None],
    client: str = "",
) -> list[ItemResult]:
    """Decode the images given as bytes, queue them all for the shared batches, and wait, until
    `deadline`. `client_gone` returns when the client leaves, which abandons the request: images
    not yet decoded are never decoded, queued ones never computed. `client` (its address) takes
    turns with other clients for the decode processes."""
    work = asyncio.ensure_future(_decode_and_submit(serving, images, deadline, layer, client))
    gone = asyncio.ensure_future(client_gone)
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
    serving: Serving, images: Sequence[bytes | np.ndarray], deadline: float, layer: Layer | None, client: str
) -> list[ItemResult]:
    encoded = {index: image for index, image in enumerate(images) if isinstance(image, bytes)}
    decoded = await decode(serving, encoded, client) if encoded else {}
    arrays = [decoded[index] if isinstance(image, bytes) else image for index, image in enumerate(images)]
    return await serving.engine.submit(arrays, deadline, layer)


async def decode(serving: Serving, encoded: dict[int, bytes], client: str = "") -> dict[int, Image]:
    """A request's images (by their index in it) as uint8 (S, S, 3) pixels: plain JPEGs on the GPU
    where VIT_GPU_DECODE decodes them, everything else in the decode processes. The first bad one
    fails the request, naming its index: 400, or 413 past a limit, 415 for a format that is not
    accepted."""
    indices = list(encoded)
    decoded: dict[int, Image] = {}
    try:
        if (decoder := serving.engine.device_decoder) is not None:
            on_device = await decoder.decode(list(encoded.values()))
            decoded = {index: pixels for index, pixels in zip(indices, on_device, strict=True) if pixels is not None}
            indices = [index for index in indices if index not in decoded]
        if indices:
            pixels = await serving.decode_pool.decode_all([encoded[index] for index in indices], client)
            decoded |= dict(zip(indices, pixels, strict=True))
    except DecodeFailed as failure:
        error: type[ServiceError] = InvalidImage
        if isinstance(failure.error, ImageTooLarge):
            error = PayloadTooLarge
        elif isinstance(failure.error, UnsupportedImageFormat):
            error = UnsupportedMediaType
        raise error(f"image {indices[failure.index]}: {failure.error}") from None
    return decoded
