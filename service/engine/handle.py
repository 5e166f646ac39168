"""The engine as the rest of the service sees it: one interface, two implementations.

`EngineHandle` is everything the app, its start-up, the pipeline and `/metrics` may ask of the
engine: its model card, whether it runs, `submit(images, deadline, layer)`, `drain` and its GPU
memory. `LocalEngine` is the model and its batcher in this process; `remote.EngineClient` is a
front-end's connection to an engine process (VIT_WORKERS > 1), with the same contract. The
process layout (service/processes.py) chooses one, once, as an `EngineSource`; nothing else
knows which it holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from model.config import Layer
from service.engine.batcher import Batcher, ItemResult
from service.engine.card import ModelCard
from service.engine.device import Engine, Input
from service.engine.device_decode import DeviceDecoder
from service.metrics import Metrics
from service.settings import Resolved, Settings


class EngineHandle(Protocol):
    @property
    def card(self) -> ModelCard:
        """The served model, as routes know it."""
        ...

    @property
    def running(self) -> bool:
        """False once the engine can no longer compute (its batch loop or its process died)."""
        ...

    async def submit(self, images: Sequence[Input], deadline: float, layer: Layer | None = None) -> list[ItemResult]:
        """One result per input (an image, or a text's token ids: see `card.text`), from the
        shared batches; Overloaded, DeadlineExceeded, NotReady or InferenceFailed otherwise.
        Cancelling the call takes the inputs out of the queue."""
        ...

    async def drain(self, timeout_s: float) -> bool:
        """Answer everything submitted (at most `timeout_s`), then stop; True if all was answered."""
        ...

    def gpu_memory(self) -> dict[str, int]:
        """Bytes allocated and reserved on the GPU, for /metrics; empty where this process does
        not hold the model (an engine process reports its own)."""
        ...

    @property
    def device_decoder(self) -> DeviceDecoder | None:
        """Decodes plain JPEGs on the model's GPU (VIT_GPU_DECODE), where this process holds it."""
        ...


@dataclass
class LocalEngine:
    """The model in this process, behind the batcher that feeds it."""

    engine: Engine
    batcher: Batcher[torch.Tensor]
    device_decoder: DeviceDecoder | None = None

    @classmethod
    async def start(cls, engine: Engine, settings: Settings, metrics: Metrics) -> LocalEngine:
        """Run every batch-size bucket once (compiling each, on a compiled engine), then start
        the batcher."""
        resolved = settings.resolve(engine.device.type)
        await asyncio.to_thread(engine.warmup, resolved.max_batch_size)
        batcher = make_batcher(engine, settings, resolved, metrics)
        batcher.start()
        return cls(engine, batcher)

    @property
    def card(self) -> ModelCard:
        return self.engine.card

    @property
    def running(self) -> bool:
        return self.batcher.running

    async def submit(self, images: Sequence[Input], deadline: float, layer: Layer | None = None) -> list[ItemResult]:
        return await self.batcher.submit(images, deadline, layer)

    async def drain(self, timeout_s: float) -> bool:
        answered = await self.batcher.drain(timeout_s)
        if self.device_decoder is not None:
            self.device_decoder.close()
        return answered

    def gpu_memory(self) -> dict[str, int]:
        return self.engine.gpu_memory()


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
        key=engine.batch_key,
    )


@dataclass(frozen=True)
class EngineSource:
    """How this process reaches its engine: chosen once, by the process layout."""

    connect: Callable[[Settings, Metrics], Awaitable[EngineHandle]]
    # A front-end of a group listens only once connected, so that the kernel never hands its
    # share of connections (SO_REUSEPORT) to one that would answer 503. One process listens at
    # once, so that its probes answer "loading" while the model loads.
    listen_once_ready: bool


def in_process(factory: Callable[[Settings], Engine] = Engine.from_settings) -> EngineSource:
    """The engine in this process: `factory` loads the model (in a thread), then it warms up."""

    async def connect(settings: Settings, metrics: Metrics) -> EngineHandle:
        engine = await asyncio.to_thread(factory, settings)
        local = await LocalEngine.start(engine, settings, metrics)
        if settings.gpu_decode:  # only here: an engine process receives pixels, decoded
            local.device_decoder = DeviceDecoder.create(
                engine.device, engine.card.image_size, engine.preprocess, settings.max_image_pixels
            )
        return local

    return EngineSource(connect, listen_once_ready=False)
