"""service/engine/handle.py: the engine seam. `LocalEngine` keeps the `EngineHandle` contract in
this process (the same contract tests/service/engine/test_remote.py holds `EngineClient` to), and
each `EngineSource` says how its process listens."""

from __future__ import annotations

import time

import pytest

from service.engine.handle import EngineHandle, LocalEngine, in_process
from service.engine.remote import engine_process
from service.errors import DeadlineExceeded
from service.metrics import Metrics
from tests.images import pixels
from tests.service.servers import tiny_settings


async def test_a_local_engine_warms_up_then_serves_drains_and_stops() -> None:
    settings = tiny_settings()
    handle: EngineHandle = await in_process().connect(settings, Metrics())
    assert isinstance(handle, LocalEngine) and handle.running
    assert handle.engine.buckets == [1, 2, 4, 8]  # every bucket warmed before it answers
    assert handle.card is handle.engine.card and handle.gpu_memory() == {}  # nothing to report on the CPU
    images = [pixels(i) for i in range(3)]
    results = await handle.submit(images, time.monotonic() + 30, layer=-1)
    assert len(results) == 3 and all(r.embedding.shape == (48,) and r.hidden is not None for r in results)
    with pytest.raises(DeadlineExceeded):
        await handle.submit(images, time.monotonic() - 1)
    assert await handle.drain(5.0)
    await handle.batcher.close()
    assert not handle.running


def test_a_front_end_listens_once_its_engine_answers_and_one_process_at_once() -> None:
    assert not in_process().listen_once_ready  # its probes answer "loading" meanwhile
    assert engine_process("/nonexistent/engine.sock").listen_once_ready
