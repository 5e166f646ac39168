"""What the running service holds, and its life: load, warm up, start, turn ready; drain; stop.

`ServiceState` is the one mutable object behind the routes: its status (loading, ready,
draining, failed), the engine, batcher and decode processes once started, the resolved
settings, and the count of admitted requests that draining waits for.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from service.decoding import DecodePool
from service.engine import Batcher, Engine, ModelCard
from service.engine.remote import EngineClient
from service.metrics import Metrics
from service.settings import Resolved, Settings

log = logging.getLogger("service")

Status = Literal["loading", "ready", "draining", "failed"]


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    status: Status = "loading"
    resolved: Resolved | None = None  # once the engine knows its device
    engine: Engine | None = None  # in this process; with VIT_WORKERS > 1 it runs in the engine process
    card: ModelCard | None = None  # what the routes know of the model, from either
    batcher: Batcher | EngineClient | None = None  # the engine's own, or the connection to it
    decode_pool: DecodePool | None = None
    admitted: int = 0  # requests past the readiness check and not yet answered

    @property
    def readiness(self) -> Status:
        """`ready` only while the batch loop runs: a dead loop is never reported healthy."""
        if self.status == "ready" and (self.batcher is None or not self.batcher.running):
            return "failed"
        return self.status


async def start(state: ServiceState, engine_factory: Callable[[Settings], Engine]) -> None:
    """Load and warm up the model in this process, start its batcher and the decode processes,
    then turn ready; any failure turns `failed`."""
    try:
        settings = state.settings
        engine = await asyncio.to_thread(engine_factory, settings)
        state.engine, state.card = engine, engine.card
        state.batcher, resolved = await warm_up(engine, settings, state.metrics)
        state.resolved = resolved
        await _start_decoding(state, engine.card, resolved)
        _turn_ready(state, engine.card, resolved)
    except Exception:
        state.status = "failed"
        log.exception("start-up failed")


async def start_front_end(state: ServiceState, engine_socket: str) -> None:
    """A front-end (VIT_WORKERS > 1): connect to the engine process at `engine_socket` (loading
    until it listens, which it does once its model is warm), start the decode processes, then
    turn ready; any failure turns `failed`."""
    try:
        settings = state.settings
        client = await _connect(settings, engine_socket)
        state.card, state.batcher = client.card, client
        resolved = state.resolved = settings.resolve(client.card.device_type)
        await _start_decoding(state, client.card, resolved)
        _turn_ready(state, client.card, resolved)
    except Exception:
        state.status = "failed"
        log.exception("start-up failed")


async def _connect(settings: Settings, path: str) -> EngineClient:
    def arena_bytes(card: ModelCard) -> int:
        resolved = settings.resolve(card.device_type)
        return EngineClient.arena_bytes(card, resolved.max_queue_size, settings.max_images_per_request)

    while True:
        try:
            return await EngineClient.connect(path, arena_bytes)
        except (FileNotFoundError, ConnectionRefusedError):  # the engine is still loading
            await asyncio.sleep(0.1)


async def warm_up(engine: Engine, settings: Settings, metrics: Metrics) -> tuple[Batcher[torch.Tensor], Resolved]:
    """Run every batch-size bucket once (compiling each, on a compiled engine), then start the
    batcher that feeds `engine`: in this process, or in the engine process (VIT_WORKERS > 1)."""
    resolved = settings.resolve(engine.device.type)
    await asyncio.to_thread(engine.warmup, resolved.max_batch_size)
    batcher = make_batcher(engine, settings, resolved, metrics)
    batcher.start()
    return batcher, resolved


def make_batcher(engine: Engine, settings: Settings, resolved: Resolved, metrics: Metrics) -> Batcher[torch.Tensor]:
    """The batcher that feeds `engine`, in whichever process holds it."""
    return Batcher(
        engine.stage,
        engine.forward,
        max_batch_size=resolved.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue_size=resolved.max_queue_size,
        metrics=metrics,
        max_in_flight=2 if engine.pipelined else 1,
        compute_thread=engine.torch_thread,
    )


async def _start_decoding(state: ServiceState, card: ModelCard, resolved: Resolved) -> None:
    settings = state.settings
    pool = DecodePool(
        resolved.decode_processes,
        card.image_size,
        card.preprocess,
        settings.max_image_pixels,
        settings.decode_timeout_s,
        settings.decode_memory_bytes,
        draft=settings.jpeg_draft,
        observe=state.metrics.preprocess_duration.observe,
        restarted=state.metrics.decode_restarts.inc,
    )
    state.decode_pool = pool
    await pool.start()


def _turn_ready(state: ServiceState, card: ModelCard, resolved: Resolved) -> None:
    state.metrics.model_info.labels(model=card.model_id, device=card.device, dtype=card.dtype).set(1)
    # Everything made so far (torch, the model, the app) lives as long as the process: kept out
    # of the collector, a full collection no longer walks it, which stalled the event loop now and
    # then under load and set its p99 (docs/BENCHMARKS.md).
    gc.freeze()
    state.status = "ready"
    log.info("ready: %s on %s (%s), batches up to %d", card.model_id, card.device, card.dtype, resolved.max_batch_size)


async def drain(state: ServiceState) -> None:
    """Turn `draining` (readiness 503, new requests 503 not_ready), then answer every admitted
    request, those still being decoded included, for at most VIT_SHUTDOWN_TIMEOUT_S; what is
    left after that gets 503. Safe to call twice."""
    state.status = "draining"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + state.settings.shutdown_timeout_s
    while state.admitted and loop.time() < deadline:
        await asyncio.sleep(0.005)
    if state.batcher is not None and state.batcher.running:
        finished = await state.batcher.drain(max(0.0, deadline - loop.time())) and not state.admitted
        log.info("drained the queue" if finished else "shutdown timeout: unfinished requests were answered 503")


async def stop(state: ServiceState, loader: asyncio.Task[None]) -> None:
    """Stop loading if still loading, drain, and end the decode processes."""
    loader.cancel()
    await asyncio.gather(loader, return_exceptions=True)
    await drain(state)
    if state.decode_pool is not None:
        state.decode_pool.close()
