"""The floor for a Python front-end: a bare ASGI app under uvicorn that only decodes, resizes and
normalises the posted image (as bench.ceiling's in-process figure does) and answers a few bytes.
No framework, no batching, no model: what any Python server must spend on a request at least.

uvicorn bench.peers.decode_only:app
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from model.preprocess import PreprocessConfig, load_image, normalize

CFG = PreprocessConfig()  # squash, bilinear: the server's preprocessing for a preset
Message = MutableMapping[str, Any]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    chunks, more = [], True
    while more:  # joined once at the end: adding chunks up would copy a large body over and over
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["method"] == "POST":  # a GET answers at once: the benchmark's readiness probe
        normalize(load_image(b"".join(chunks), 224, CFG, draft=True)[None], CFG.mean, CFG.std)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})
