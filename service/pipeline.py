"""The request pipeline every model route runs: decode or tokenize, submit, await, within a deadline.

Routes (service/http/) read a request into images or texts, parameters and a deadline, and write
results as a response; everything between is here, once, knowing nothing of HTTP: decoding in
the decode processes (or on the GPU: VIT_GPU_DECODE), tokenizing (service/texts.py), queueing for
the shared batches, and abandoning all of it when the client leaves.
The engine is reached only through `EngineHandle.submit` (service/engine/handle.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.config import Layer
from model.preprocess import ImageTooLarge, UnsupportedImageFormat
from service.decoding import DecodeFailed, DecodePool
from service.engine import ItemResult, ModelCard
from service.engine.device import Image, Input
from service.engine.handle import EngineHandle
from service.engine.text_tower import TokenIds
from service.errors import (
    ClientDisconnected,
    InvalidImage,
    InvalidParameter,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from service.metrics import Metrics
from service.settings import Resolved, Settings
from service.texts import Texts


@dataclass(frozen=True)
class Serving:
    """The parts of a ready service, every one present: what a request is served with."""

    settings: Settings
    resolved: Resolved
    metrics: Metrics
    engine: EngineHandle
    decode_pool: DecodePool
    texts: Texts | None  # the text tower's tokenizer and label cache, where the model has one

    @property
    def card(self) -> ModelCard:
        return self.engine.card

    def require_texts(self, what: str = "texts") -> Texts:
        """The text side, or 422: `what` needs a CLIP or SigLIP pair's text tower."""
        if self.texts is None:
            raise InvalidParameter(
                f"{what}: this model has no text tower (texts need a full CLIP or SigLIP checkpoint with its tokenizer)"
            )
        return self.texts


async def compute(
    serving: Serving,
    endpoint: str,
    images: Sequence[bytes | np.ndarray | TokenIds],
    deadline: float,
    layer: Layer | None,
    client_gone: Coroutine[Any, Any, None],
    client: str = "",
) -> list[ItemResult]:
    """Decode the images given as bytes, queue them (and texts, as token ids) all for the shared
    batches, and wait, until `deadline`. `client_gone` returns when the client leaves, which
    abandons the request: images not yet decoded are never decoded, queued ones never computed.
    `client` (its address) takes turns with other clients for the decode processes."""
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
    texts = sum(isinstance(item, tuple) for item in images)
    if texts:
        serving.metrics.texts.labels(endpoint=endpoint).inc(texts)
    if len(results) > texts:
        serving.metrics.images.labels(endpoint=endpoint).inc(len(results) - texts)
    return results


async def _decode_and_submit(
    serving: Serving, images: Sequence[bytes | np.ndarray | TokenIds], deadline: float, layer: Layer | None, client: str
) -> list[ItemResult]:
    encoded = {index: image for index, image in enumerate(images) if isinstance(image, bytes)}
    decoded = await decode(serving, encoded, client) if encoded else {}
    inputs: list[Input] = [decoded[index] if isinstance(image, bytes) else image for index, image in enumerate(images)]
    return await serving.engine.submit(inputs, deadline, layer)


async def label_vectors(
    serving: Serving,
    endpoint: str,
    labels: Sequence[str],
    template: str,
    deadline: float,
    client_gone: Callable[[], Coroutine[Any, Any, None]],
) -> np.ndarray:
    """The labels' unit text embeddings, (L, D), for zero-shot scores: from the label cache, and
    the rest (each once) embedded in the shared batches, at most VIT_MAX_IMAGES_PER_REQUEST at a
    time, so that no label list is too long for the queue."""
    texts = serving.require_texts("labels")
    model = serving.card.model_id
    found = {label: vector for label in labels if (vector := texts.cache.get((model, template, label))) is not None}
    missing = list(dict.fromkeys(label for label in labels if label not in found))
    ids = await texts.tokenize([template.replace("{}", label) for label in missing], "labels")
    step = serving.settings.max_images_per_request
    for start in range(0, len(ids), step):
        results = await compute(serving, endpoint, ids[start : start + step], deadline, None, client_gone())
        for label, result in zip(missing[start : start + step], results, strict=True):
            found[label] = unit(result.embedding)
            texts.cache.put((model, template, label), found[label])
    return np.stack([found[label] for label in labels])


def unit(y: np.ndarray) -> np.ndarray:
    """`y` scaled to length 1 (a zero vector stays zero)."""
    return y / max(float(np.linalg.norm(y)), 1e-12)  # type: ignore[no-any-return]


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
