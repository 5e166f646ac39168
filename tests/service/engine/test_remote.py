"""The engine across a process boundary: EngineClient and EngineServer over a real Unix socket
and a real memfd arena (both ends in this test's event loop), against the real tiny engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.engine import Batcher
from service.engine.handle import make_batcher
from service.engine.remote import EngineClient, EngineServer, engine_process
from service.errors import DeadlineExceeded, NotReady, Overloaded
from service.metrics import Metrics
from service.settings import Settings
from tests.families import save_pair
from tests.images import encode, gradient, normalised, pixels
from tests.service.servers import ControlledEngine, controlled, tiny_settings, until


@dataclass
class Remote:
    engine: ControlledEngine
    batcher: Batcher
    metrics: Metrics
    client: EngineClient
    path: str
    server: asyncio.Task[None]


@asynccontextmanager
async def remote(tmp_path: Path, arena_images: int = 64, **overrides: object) -> AsyncIterator[Remote]:
    """An engine served at a socket in `tmp_path`, and one front-end's client connected to it."""
    settings = tiny_settings(**overrides)
    engine = controlled(settings)
    metrics = Metrics()
    batcher = make_batcher(engine, settings, settings.resolve("cpu"), metrics)
    batcher.start()
    path = str(tmp_path / "engine.sock")
    server = asyncio.create_task(EngineServer(batcher, engine.card).serve(path))
    client = await connect(path, arena_images)
    try:
        yield Remote(engine, batcher, metrics, client, path, server)
    finally:
        engine.gate.set()
        await client.close()
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        await batcher.close()


async def connect(path: str, arena_images: int) -> EngineClient:
    for _ in range(500):
        try:
            return await EngineClient.connect(path, lambda card: EngineClient.arena_bytes(card, arena_images, 8))
        except (FileNotFoundError, ConnectionRefusedError):
            await asyncio.sleep(0.01)
    raise AssertionError("the engine did not listen")


def soon(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


async def test_results_equal_the_in_process_batchers_for_every_kind_of_request(tmp_path: Path) -> None:
    async with remote(tmp_path) as r:
        images = [pixels(i) for i in range(3)]
        values = normalised()  # a /v2 FP32 tensor, taken as it is
        for batch, layer in (([images[0]], None), (images, None), (images, -1), ([values, images[1]], 0)):
            here = await r.batcher.submit(batch, soon(), layer)
            there = await r.client.submit(batch, soon(), layer)
            for a, b in zip(here, there, strict=True):
                assert np.array_equal(a.probs, b.probs) and np.array_equal(a.embedding, b.embedding)
                assert (a.hidden is None and b.hidden is None) or np.array_equal(a.hidden, b.hidden)
        assert r.client.arena.free_bytes == r.client.arena.size  # every region given back


async def test_images_from_two_front_ends_share_one_forward_pass(tmp_path: Path) -> None:
    async with remote(tmp_path) as r:
        second = await connect(r.path, 64)
        r.engine.gate.clear()  # hold the first batch in the model; what follows queues behind it
        first = asyncio.create_task(r.client.submit([pixels(0)], soon()))
        await until(lambda: r.batcher.in_flight == 1)
        queued = [asyncio.create_task(c.submit([pixels(i)], soon())) for i, c in enumerate([r.client, second] * 2)]
        await until(lambda: r.batcher.queue_depth == 4)
        r.engine.gate.set()
        await asyncio.gather(first, *queued)
        assert r.engine.batch_sizes[-2:] == [1, 4]
        await second.close()


async def test_a_cancelled_request_leaves_the_queue_uncomputed_and_its_region_comes_back(tmp_path: Path) -> None:
    async with remote(tmp_path) as r:
        r.engine.gate.clear()
        blocker = asyncio.create_task(r.client.submit([pixels(0)], soon()))
        await until(lambda: r.batcher.in_flight == 1)
        leaving = asyncio.create_task(r.client.submit([pixels(1), pixels(2)], soon()))
        await until(lambda: r.batcher.queue_depth == 2)
        leaving.cancel()  # its client hung up
        await until(lambda: r.batcher.queue_depth == 0)
        r.engine.gate.set()
        await blocker
        assert r.engine.batch_sizes == [*r.engine.batch_sizes[:-1], 1]  # only the blocker was computed
        assert r.metrics.dropped._value.get() == 2
        await until(lambda: r.client.arena.free_bytes == r.client.arena.size)


async def test_the_deadline_is_kept_and_an_expired_request_is_never_computed(tmp_path: Path) -> None:
    async with remote(tmp_path) as r:
        r.engine.gate.clear()
        blocker = asyncio.create_task(r.client.submit([pixels(0)], soon()))
        await until(lambda: r.batcher.in_flight == 1)
        computed = len(r.engine.batch_sizes)
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await r.client.submit([pixels(1)], time.monotonic() + 0.2)
        assert 0.15 < time.monotonic() - start < 2
        r.engine.gate.set()
        await blocker
        await until(lambda: r.batcher.queue_depth == 0 and r.batcher.in_flight == 0)
        assert len(r.engine.batch_sizes) == computed + 1  # the blocker's batch only
        await until(lambda: r.client.arena.free_bytes == r.client.arena.size)


async def test_the_engines_refusals_reach_the_front_end_as_they_are(tmp_path: Path) -> None:
    async with remote(tmp_path, max_queue_size=64, max_images_per_request=64) as r:
        r.engine.gate.clear()
        blocker = asyncio.create_task(r.client.submit([pixels(0)], soon()))
        await until(lambda: r.batcher.in_flight == 1)
        filling = asyncio.create_task(r.client.submit([pixels(i) for i in range(60)], soon()))
        await until(lambda: r.batcher.queue_depth == 60)
        with pytest.raises(Overloaded, match="queue is full"):
            await r.client.submit([pixels(i) for i in range(5)], soon())
        r.engine.gate.set()
        await asyncio.gather(blocker, filling)


async def test_a_full_arena_refuses_at_once(tmp_path: Path) -> None:
    async with remote(tmp_path) as r:
        arena = r.client.arena
        held = arena.free_bytes - 3 * 32 * 32 // 2  # what other requests hold: less than an image is left
        arena.take(held)
        with pytest.raises(Overloaded, match="shared memory is full"):
            await r.client.submit([pixels(0)], soon())
        arena.give_back(0, held)
        assert len(await r.client.submit([pixels(0)], soon())) == 1


async def test_when_the_engine_goes_waiting_requests_get_503_and_the_client_stops_running(tmp_path: Path) -> None:
    async with remote(tmp_path) as r:
        r.engine.gate.clear()
        waiting = asyncio.create_task(r.client.submit([pixels(0)], soon()))
        await until(lambda: r.batcher.in_flight == 1)
        r.server.cancel()  # the engine's side closes every connection, as its process's death would
        with pytest.raises(NotReady, match="engine process stopped"):
            await waiting
        assert not r.client.running
        with pytest.raises(NotReady):
            await r.client.submit([pixels(1)], soon())


async def test_a_front_end_app_turns_unready_when_the_engine_goes(tmp_path: Path) -> None:
    """The whole front-end (create_app with an engine socket) over ASGI: it answers from the
    engine, and its readiness turns 503 the moment the engine's connection closes."""
    async with remote(tmp_path) as r:
        app = create_app(tiny_settings(), engine_process(r.path))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                await until(lambda: app.state.service.status == "ready")
                png = encode(gradient(40, 30), "PNG")
                answer = await http.post("/v1/embeddings", content=png, headers={"content-type": "image/png"})
                assert answer.status_code == 200
                assert (await http.get("/readyz")).json() == {"status": "ready"}
                r.server.cancel()
                await until(lambda: not app.state.service.engine.running)
                ready = await http.get("/readyz")
                assert (ready.status_code, ready.json()) == (503, {"status": "failed"})
                refused = await http.post("/v1/embeddings", content=png, headers={"content-type": "image/png"})
                assert (refused.status_code, refused.json()["error"]["type"]) == (503, "not_ready")


def test_settings_size_the_engine_and_the_decoders_by_the_workers() -> None:
    one, two = (Settings(_env_file=None, workers=n).resolve("cpu", cores=8) for n in (1, 2))
    assert (one.engine_threads, one.decode_processes) == (8, 8)
    assert (two.engine_threads, two.decode_processes) == (6, 4)
    small = Settings(_env_file=None, workers=2).resolve("cpu", cores=2)
    assert (small.engine_threads, small.decode_processes) == (1, 2)


async def test_texts_cross_as_token_ids_and_equal_the_in_process_results(tmp_path: Path) -> None:
    save_pair("clip", tmp_path / "clip")
    async with remote(tmp_path, checkpoint=str(tmp_path / "clip")) as r:
        texts = [(0, 5, 9, 1), (0, 7, 1), (0, *range(3, 30), 1)]  # two length buckets
        mixed = [texts[0], pixels(1), texts[1], texts[2]]
        here = await r.batcher.submit(mixed, soon())
        there = await r.client.submit(mixed, soon())
        for a, b in zip(here, there, strict=True):
            assert np.array_equal(a.embedding, b.embedding)
            assert a.probs is None and b.probs is None  # a CLIP pair has no head; a text never has scores
        assert r.client.arena.free_bytes == r.client.arena.size
