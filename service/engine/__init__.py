"""The engine: the model on its device (`device`) and the micro-batcher that feeds it (`batcher`).

The rest of the service reaches the engine only through an `EngineHandle` (handle.py):
`submit(images, deadline, layer) -> [ItemResult]`, uint8 pixels in, rows of one forward pass out.
`LocalEngine` holds the model in this process; `remote.EngineClient` reaches it in the engine
process of `VIT_WORKERS` > 1 (remote.py: the wire, the client, the server and the engine
process's main loop). Nothing here knows about HTTP, and nothing outside knows which it holds.
"""

from service.engine.batcher import Batcher, ItemResult
from service.engine.card import ModelCard
from service.engine.device import BatchOutput, Engine

__all__ = ["BatchOutput", "Batcher", "Engine", "ItemResult", "ModelCard"]
