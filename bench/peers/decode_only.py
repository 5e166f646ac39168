"""The floor for a Python front-end: a bare ASGI app under uvicorn that only decodes, resizes and
normalises the posted image (as bench.ceiling's in-process figure does) and answers a few bytes.
No framework, no batching, no model: what any Python server must spend on a request at least.

    python -m bench.peers.decode_only --port 8001 --processes 2

runs it in `--processes` processes, each with a SO_REUSEPORT socket of its own on the port, as
vit-serve's front-ends listen (one shared socket, as `uvicorn --workers` has, can leave the
kernel handing most connections to one process).
"""

from __future__ import annotations

import argparse
import signal
import subprocess  # nosec B404
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

from bench.workload import jpeg
from model.preprocess import PreprocessConfig
from model.tensors import load_image, normalize
from service.processes import reuseport_socket

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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.decode_only")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    if args.processes == 1:
        # One decode before listening: the first one pays for lazy initialisation (hundreds of ms),
        # which would otherwise fall on whichever request the kernel hands this process first.
        normalize(load_image(jpeg("224"), 224, CFG, draft=True)[None], CFG.mean, CFG.std)
        sock = reuseport_socket(args.host, args.port)
        sock.listen(2048)
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
        return
    one = [sys.executable, "-m", "bench.peers.decode_only", "--host", args.host, "--port", str(args.port)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that `finally` ends the children
    children = [subprocess.Popen(one) for _ in range(args.processes)]  # nosec B603
    try:
        for child in children:
            child.wait()
    finally:
        for child in children:
            child.terminate()
            child.wait()


if __name__ == "__main__":
    main()
