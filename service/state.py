"""What the running service holds: settings, metrics, engine, batcher, lifecycle status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from service.batching import Batcher
from service.decoding import DecodePool
from service.engine import Engine
from service.metrics import Metrics
from service.settings import Settings

Status = Literal["loading", "ready", "draining", "failed"]


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    status: Status = "loading"
    engine: Engine | None = None
    batcher: Batcher | None = None
    decode_pool: DecodePool | None = None
    admitted: int = 0  # requests past the readiness check and not yet answered

    @property
    def readiness(self) -> Status:
        """`ready` only while the batch loop runs: a dead loop is never reported healthy."""
        if self.status == "ready" and (self.batcher is None or not self.batcher.running):
            return "failed"
        return self.status

    @property
    def max_batch_size(self) -> int:
        if self.settings.max_batch_size:
            return self.settings.max_batch_size
        return 256 if self.engine is not None and self.engine.device.type == "cuda" else 32

    @property
    def max_queue_size(self) -> int:
        return self.settings.max_queue_size or 16 * self.max_batch_size
