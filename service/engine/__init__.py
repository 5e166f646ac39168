"""The engine: the model on its device (`device`) and the micro-batcher that feeds it (`batcher`).

The request pipeline (service/pipeline.py) reaches the engine only through
`submit(images, deadline, layer) -> [ItemResult]`: uint8 pixels in, rows of one forward pass
out; `Batcher.submit` in one process, `remote.EngineClient.submit` (the same contract over shared
memory and a Unix socket) in a front-end of `VIT_WORKERS` > 1. Nothing on this side knows about
HTTP, and nothing on the other side knows about torch devices.
"""

from service.engine.batcher import Batcher, ItemResult
from service.engine.card import ModelCard
from service.engine.device import BatchOutput, Engine

__all__ = ["BatchOutput", "Batcher", "Engine", "ItemResult", "ModelCard"]
