"""`vit-serve search DIR --table NAME --image FILE` (or `--text "…"` for a CLIP or SigLIP pair): the
rows of a LanceDB table that `vit-serve embed --lancedb` filled, nearest to a query embedded by the
same model (the same settings choose it; the table refuses another), with their cosine similarity.
The query is embedded as `vit-serve embed` embeds an image (service/bulk/job.py's `Embedder`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from service.bulk.job import Embedder, EmbedError, model_identity
from service.bulk.sources import Item, in_file
from service.bulk.vectors import search
from service.errors import ServiceError
from service.metrics import Metrics
from service.settings import Settings
from service.texts import Texts


async def nearest(
    settings: Settings, lancedb: Path, table: str, image: Path | None, text: str | None, k: int
) -> list[tuple[str, float]]:
    """The `k` keys nearest to the image or the text, best first."""
    embedder = await Embedder.start(settings)
    try:
        card = embedder.engine.card
        if text is not None:
            vector = await _text(embedder, text)
        elif image is not None:
            vector = await _image(embedder, in_file(image, settings.max_body_bytes))
        else:
            raise EmbedError("a query is an --image or a --text")
    finally:
        await embedder.close()
    return search(lancedb, table, model_identity(card), vector.tolist(), k)


async def _image(embedder: Embedder, item: Item) -> np.ndarray:
    """The image's embedding: read, decoded and embedded as `vit-serve embed` does it."""
    [row] = await embedder.rows([item])
    if row.embedding is None:
        raise EmbedError(f"--image: {item.key}: {row.error}")
    return row.embedding


async def _text(embedder: Embedder, text: str) -> np.ndarray:
    """The text's embedding by the pair's text tower."""
    card = embedder.engine.card
    texts = Texts.load(card, 0, Metrics())
    if texts is None:
        raise EmbedError(f"--text: {card.model_id} has no text tower")
    ids = (await texts.tokenize([text], "--text"))[0]
    try:
        deadline = time.monotonic() + embedder.settings.request_timeout_s
        return (await embedder.engine.submit([ids], deadline))[0].embedding
    except ServiceError as exc:
        raise EmbedError(f"--text could not be embedded: {exc}") from exc
