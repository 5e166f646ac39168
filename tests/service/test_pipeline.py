"""service/pipeline.py, without HTTP: images as bytes or pixels, a deadline and a "the client
has gone" signal in, one result per image out, through the real decode processes and engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from service import lifecycle
from service.engine.handle import LocalEngine, in_process
from service.errors import ClientDisconnected, InvalidImage
from service.lifecycle import ServiceState
from service.pipeline import Serving, compute
from tests.images import encode, gradient, pixels
from tests.service.servers import tiny_settings

PNG = encode(gradient(), "PNG")


async def never() -> None:
    await asyncio.Event().wait()


@pytest.fixture
async def serving() -> AsyncIterator[Serving]:
    state = ServiceState(tiny_settings())
    await lifecycle.start(state, in_process())
    assert state.engine is not None and state.resolved is not None and state.decode_pool is not None
    yield Serving(state.settings, state.resolved, state.metrics, state.engine, state.decode_pool, state.texts)
    state.decode_pool.close()
    assert isinstance(state.engine, LocalEngine)
    await state.engine.batcher.close()


def images_counted(serving: Serving, endpoint: str) -> float:
    return serving.metrics.images.labels(endpoint=endpoint)._value.get()


async def test_bytes_and_pixels_come_back_as_one_result_each_in_order(serving: Serving) -> None:
    results = await compute(serving, "/test", [PNG, pixels(), PNG], time.monotonic() + 30, None, never())
    assert len(results) == 3 and all(r.probs is not None and r.hidden is None for r in results)
    np.testing.assert_allclose(results[0].embedding, results[2].embedding)  # the same file, the same answer
    assert not np.array_equal(results[0].embedding, results[1].embedding)
    assert images_counted(serving, "/test") == 3
    hidden = await compute(serving, "/test", [pixels()], time.monotonic() + 30, -2, never())
    assert hidden[0].hidden is not None and hidden[0].hidden.shape == (17, 48)


async def test_a_client_that_leaves_abandons_its_request(serving: Serving) -> None:
    gone = asyncio.Event()
    work = asyncio.create_task(compute(serving, "/test", [PNG] * 8, time.monotonic() + 30, None, gone.wait()))
    gone.set()
    with pytest.raises(ClientDisconnected):
        await work
    assert images_counted(serving, "/test") == 0
    assert isinstance(serving.engine, LocalEngine) and serving.engine.batcher.queue_depth == 0


async def test_the_first_bad_image_fails_the_request_naming_it(serving: Serving) -> None:
    with pytest.raises(InvalidImage, match="image 1"):
        await compute(serving, "/test", [PNG, b"not an image"], time.monotonic() + 30, None, never())


async def test_a_bad_image_is_named_by_its_index_in_the_request_among_pixels(serving: Serving) -> None:
    with pytest.raises(InvalidImage, match=r"^image 2: "):
        await compute(serving, "/test", [pixels(), PNG, b"not an image"], time.monotonic() + 30, None, never())
