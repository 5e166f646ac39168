"""What the running service holds, and its life: load, warm up, start, turn ready; drain; stop.

`ServiceState` is the one mutable object behind the routes: its status (loading, ready,
draining, failed), the engine (an `EngineHandle`), decode processes and tokenizer once started, the
resolved settings, and the count of admitted requests that draining waits for.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass, field
from typing import Literal

from service.decoding import DecodePool
from service.engine.card import ModelCard
from service.engine.handle import EngineHandle, EngineSource
from service.metrics import Metrics
from service.settings import Resolved, Settings
from service.texts import Texts

log = logging.getLogger("service")

Status = Literal["loading", "ready", "draining", "failed"]


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    status: Status = "loading"
    resolved: Resolved | None = None  # once the engine knows its device
    engine: EngineHandle | None = None  # in this process or in an engine process: never asked which
    decode_pool: DecodePool | None = None
    texts: Texts | None = None  # the text tower's tokenizer and label cache, where the model has one
    admitted: int = 0  # requests past the readiness check and not yet answered

    @property
    def card(self) -> ModelCard | None:
        """What the routes know of the model, once the engine is there."""
        return self.engine.card if self.engine is not None else None

    @property
    def readiness(self) -> Status:
        """`ready` only while the engine runs: a dead batch loop or engine process is never
        reported healthy."""
        if self.status == "ready" and (self.engine is None or not self.engine.running):
            return "failed"
        return self.status


async def start(state: ServiceState, source: EngineSource) -> None:
    """Reach the engine (load and warm it up, or connect to the engine process), start the
    decode processes, then turn ready; any failure turns `failed`."""
    try:
        settings = state.settings
        engine = state.engine = await source.connect(settings, state.metrics)
        resolved = state.resolved = settings.resolve(engine.card.device_type)
        state.texts = await asyncio.to_thread(Texts.load, engine.card, settings.label_cache_size, state.metrics)
        await _start_decoding(state, engine.card, resolved)
        _turn_ready(state, engine.card, resolved)
    except Exception:
        state.status = "failed"
        log.exception("start-up failed")


async def _start_decoding(state: ServiceState, card: ModelCard, resolved: Resolved) -> None:
    pool = state.decode_pool = decode_pool(state.settings, card, resolved, state.metrics)
    await pool.start()


def decode_pool(settings: Settings, card: ModelCard, resolved: Resolved, metrics: Metrics) -> DecodePool:
    """The decode processes for `card`'s model, bounded by these settings (not yet started)."""
    return DecodePool(
        resolved.decode_processes,
        card.image_size,
        card.preprocess,
        settings.max_image_pixels,
        settings.decode_timeout_s,
        settings.decode_memory_bytes,
        draft=settings.jpeg_draft,
        observe=metrics.preprocess_duration.observe,
        restarted=metrics.decode_restarts.inc,
    )


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
    if state.engine is not None and state.engine.running:
        finished = await state.engine.drain(max(0.0, deadline - loop.time())) and not state.admitted
        log.info("drained the queue" if finished else "shutdown timeout: unfinished requests were answered 503")


async def stop(state: ServiceState, loader: asyncio.Task[None]) -> None:
    """Stop loading if still loading, drain, and end the decode processes."""
    loader.cancel()
    await asyncio.gather(loader, return_exceptions=True)
    await drain(state)
    if state.decode_pool is not None:
        state.decode_pool.close()
