"""`vit-serve search DIR --table NAME --image FILE` (or `--text "…"` for a CLIP or SigLIP pair): the
rows of a LanceDB table that `vit-serve embed --lancedb` filled, nearest to a query embedded by the
same model (the same settings choose it; the table refuses another), with their cosine similarity.
"""

from __future__ import annotations

import time
from pathlib import Path

from service.bulk.job import EmbedError, model_identity
from service.bulk.vectors import search
from service.decoding import DecodeFailed
from service.engine.card import ModelCard
from service.engine.device import Input
from service.engine.handle import in_process
from service.errors import ServiceError
from service.lifecycle import decode_pool
from service.metrics import Metrics
from service.settings import Settings
from service.texts import Texts


async def nearest(
    settings: Settings, lancedb: Path, table: str, image: Path | None, text: str | None, k: int
) -> list[tuple[str, float]]:
    """The `k` keys nearest to the image or the text, best first."""
    metrics = Metrics()
    engine = await in_process().connect(settings, metrics)
    try:
        card = engine.card
        query: Input
        if text is not None:
            texts = Texts.load(card, 0, metrics)
            if texts is None:
                raise EmbedError(f"--text: {card.model_id} has no text tower")
            query = (await texts.tokenize([text], "--text"))[0]
        elif image is not None:
            query = await _decoded(settings, engine.card, image, metrics)
        else:
            raise EmbedError("a query is an --image or a --text")
        result = (await engine.submit([query], time.monotonic() + settings.request_timeout_s))[0]
    except (ServiceError, OSError) as exc:
        raise EmbedError(f"the query could not be embedded: {exc}") from exc
    finally:
        await engine.drain(settings.shutdown_timeout_s)
    return search(lancedb, table, model_identity(card), result.embedding.tolist(), k)


async def _decoded(settings: Settings, card: ModelCard, image: Path, metrics: Metrics) -> Input:
    data = image.read_bytes()
    if len(data) > settings.max_body_bytes:
        raise EmbedError(f"--image: {image} is over {settings.max_body_bytes} bytes (VIT_MAX_BODY_BYTES)")
    pool = decode_pool(settings, card, settings.resolve(card.device_type), metrics)
    await pool.start()
    try:
        return (await pool.decode_all([data]))[0]
    except DecodeFailed as failure:
        raise EmbedError(f"--image: {image} could not be decoded: {failure.error}") from failure
    finally:
        pool.close()
