"""The engine across a process boundary (VIT_WORKERS > 1): `EngineClient` in each front-end,
`EngineServer` in the engine process (`serve_engine`: its life once the model is loaded), over a
Unix socket.

`EngineClient.submit(images, deadline, layer)` keeps `Batcher.submit`'s contract, so the
request pipeline cannot tell the two apart: one result per image, computed in the batches the
engine forms from every front-end's images; Overloaded, DeadlineExceeded, NotReady and
InferenceFailed raised as the engine's batcher raised them; and cancelling the call (the client
left) cancels the request in the engine, whose images then leave the queue uncomputed.

Pixels and results never cross the socket: they lie in the front-end's `Arena` (shared
memory), and the socket carries only small JSON messages (a text's token ids travel in them):

    front-end -> engine   ["submit", id, [[offset, kind] | [offset, "t", ids], …], deadline, layer]
                          ["cancel", id]
    engine -> front-end   ["done", id, null | [error class, message]]

one `done` for every `submit`, cancelled or not, after which the engine no longer touches the
request's region, so only then is it given back. Deadlines are CLOCK_MONOTONIC readings, which
every process on the host shares.

Connecting: the engine listens only once its model is warm, and sends its `ModelCard` first;
the front-end then makes its arena and passes the memfd over the socket (SCM_RIGHTS) with the
arena's size, as 8 bytes. If the socket closes, the engine process has gone: every waiting
request is answered 503, and `running` turns false, which turns readiness 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from model.config import Layer
from service.engine.arena import Arena, aligned
from service.engine.batcher import Batcher, Item, ItemResult
from service.engine.card import ModelCard
from service.engine.device import Engine, Input
from service.engine.handle import EngineHandle, EngineSource, LocalEngine
from service.errors import DeadlineExceeded, NotReady, Overloaded, ServiceError, from_wire, to_wire
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

_FLOAT = np.dtype("<f4")
_HELLO = 8  # bytes: the arena's size, sent with its memfd


class _Link(asyncio.Protocol):
    """Messages over a stream socket: each a 4-byte length, then JSON."""

    def __init__(self, on_message: Callable[[list[Any]], None], on_lost: Callable[[], None]) -> None:
        self._on_message, self._on_lost = on_message, on_lost
        self._inbox = bytearray()
        self._outbox: list[bytes] = []  # written together once this turn of the loop is done
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self._inbox += data
        while len(self._inbox) >= 4:
            size = int.from_bytes(self._inbox[:4], "little")
            if len(self._inbox) < 4 + size:
                return
            message = json.loads(self._inbox[4 : 4 + size])
            del self._inbox[: 4 + size]
            self._on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()

    def send(self, message: list[Any]) -> None:
        """Queue `message`; what is sent in one turn of the event loop (a batch's answers, a
        burst of requests) goes in one write: one system call, one wake-up of the other side."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(_frame(json.dumps(message, separators=(",", ":")).encode()))

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._outbox))
        self._outbox.clear()

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "little") + payload


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """Where an image's results lie in its slice of the arena: class probabilities, then the
    embedding, then (for /v1/features) the hidden states of the layer asked for, as float32."""

    classes: int
    dim: int  # the embedding's size (0 for a model without one)
    tokens: int
    width: int  # a hidden state's size, D

    @classmethod
    def of(cls, card: ModelCard) -> Layout:
        return cls(card.cfg.num_classes, card.cfg.embedding_dim, card.cfg.num_tokens, card.cfg.embed_dim)

    def result_bytes(self, layer: Layer | None) -> int:
        return _FLOAT.itemsize * (self.classes + self.dim + (self.tokens * self.width if layer is not None else 0))

    def write(self, arena: Arena, offset: int, result: ItemResult) -> None:
        if result.probs is not None:
            arena.array(offset, _FLOAT, (self.classes,))[...] = result.probs
        offset += _FLOAT.itemsize * self.classes
        arena.array(offset, _FLOAT, (self.dim,))[...] = result.embedding
        if result.hidden is not None:
            offset += _FLOAT.itemsize * self.dim
            arena.array(offset, _FLOAT, (self.tokens, self.width))[...] = result.hidden

    def read(self, arena: Arena, offset: int, layer: Layer | None, text: bool = False) -> ItemResult:
        """A copy of the results at `offset` (one copy, then views of it): the region is given
        back right after. A text's has no class probabilities."""
        block = arena.array(offset, _FLOAT, (self.result_bytes(layer) // 4,)).copy()
        probs = block[: self.classes] if self.classes and not text else None
        embedding = block[self.classes : self.classes + self.dim]
        hidden = block[self.classes + self.dim :].reshape(self.tokens, self.width) if layer is not None else None
        return ItemResult(probs, embedding, hidden)


# "u": uint8 pixels laid out (S, S, 3), as decoded; "f": a float32 (3, S, S) tensor sent to /v2;
# "t": a text's token ids, which travel in the message
def _kind(item: Input) -> str:
    if isinstance(item, tuple):
        return "t"
    return "u" if item.dtype == np.uint8 else "f"


def _nbytes(item: Input) -> int:
    """The arena bytes an input's pixels take (a text's ids travel in the message)."""
    return 0 if isinstance(item, tuple) else item.nbytes


def _pixels(arena: Arena, offset: int, kind: str, size: int) -> np.ndarray:
    if kind == "u":
        return arena.array(offset, np.uint8, (size, size, 3))
    return arena.array(offset, _FLOAT, (3, size, size))


# ----------------------------------------------------------------------- front-end side


@dataclass(eq=False)
class _Pending:
    future: asyncio.Future[list[Any] | None]  # the engine's outcome: None, or [error class, message]
    offset: int  # the request's region of the arena
    size: int


class EngineClient:
    """A front-end's connection to the engine process: an `EngineHandle` (service/engine/handle.py).

    Who gives a request's region of the arena back, once: the engine owns it from `submit` until
    its `done` arrives; then `_on_message` gives it back, unless results wait there for a caller
    still waiting, which reads them and gives it back itself (also if it is cancelled between
    the two)."""

    def __init__(self, card: ModelCard, arena: Arena) -> None:
        self.card, self.arena = card, arena
        self.layout = Layout.of(card)
        self._link = _Link(self._on_message, self._on_lost)
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count()

    @classmethod
    async def connect(cls, path: str, arena_bytes: Callable[[ModelCard], int]) -> EngineClient:
        """Connect to the engine listening at `path` (ConnectionError or FileNotFoundError while
        it is not yet listening); the arena is made `arena_bytes(card)` large."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, path)
            card = ModelCard.from_json((await _receive_frame(loop, sock)).decode())
            size = arena_bytes(card)
            client = cls(card, Arena(size))
            socket.send_fds(sock, [size.to_bytes(_HELLO, "little")], [client.arena.fd])
            await loop.create_unix_connection(lambda: client._link, sock=sock)
        except BaseException:
            sock.close()
            raise
        return client

    @staticmethod
    def arena_bytes(card: ModelCard, queue_images: int, request_images: int) -> int:
        """Room for a whole engine queue of decoded images, and for two of the largest requests
        (/v2 float32 tensors, or /v1/features results) besides: beyond what is touched, the
        pages cost nothing."""
        layout, pixels = Layout.of(card), 3 * card.image_size**2
        usual = aligned(max(pixels, layout.result_bytes(None)))
        largest = aligned(max(_FLOAT.itemsize * pixels, layout.result_bytes(0)))
        return queue_images * usual + 2 * request_images * largest

    @property
    def running(self) -> bool:
        """False once the engine process has gone (or the connection was closed)."""
        return self._link.open

    def gpu_memory(self) -> dict[str, int]:
        """Nothing: the engine process sets the group's GPU memory gauges itself."""
        return {}

    @property
    def device_decoder(self) -> None:
        """None: the GPU is the engine process's, and pixels reach it decoded."""
        return None

    async def submit(self, images: Sequence[Input], deadline: float, layer: Layer | None = None) -> list[ItemResult]:
        """As Batcher.submit: the inputs' results, computed by the engine process."""
        if not self.running:
            raise NotReady("the engine process is not running")
        now = time.monotonic()
        if deadline <= now:
            raise DeadlineExceeded("the request's deadline passed before it was queued")
        result_bytes = self.layout.result_bytes(layer)
        kinds = [_kind(image) for image in images]
        sizes = [aligned(max(_nbytes(image), result_bytes)) for image in images]
        total = sum(sizes)
        start = self.arena.take(total)
        if start is None:
            raise Overloaded("this front-end's shared memory is full; retry shortly")
        offsets = list(itertools.accumulate(sizes[:-1], initial=start))
        items: list[list[Any]] = []
        for image, offset, kind in zip(images, offsets, kinds, strict=True):
            if isinstance(image, tuple):
                items.append([offset, kind, image])
                continue
            _pixels(self.arena, offset, kind, self.card.image_size)[...] = image  # as it lies: one copy
            items.append([offset, kind])
        loop = asyncio.get_running_loop()
        request_id = next(self._ids)
        future: asyncio.Future[list[Any] | None] = loop.create_future()
        self._pending[request_id] = _Pending(future, start, total)
        self._link.send(["submit", request_id, items, deadline, layer])
        # The deadline as one timer rather than a timeout scope: it answers 504 and cancels the
        # request in the engine, which gives the region back with its answer.
        timer = loop.call_at(loop.time() + (deadline - now), self._expire, request_id)
        try:
            outcome = await future
        except asyncio.CancelledError:  # the client left; `future` is cancelled with this call
            if future.cancelled():  # still in the engine: cancel it there
                self._link.send(["cancel", request_id])
            elif future.result() is None:  # answered, not yet read: nobody else gives the region back
                self.arena.give_back(start, total)
            raise
        finally:
            timer.cancel()
        if outcome is not None:
            raise from_wire(outcome)
        try:
            texts = [kind == "t" for kind in kinds]
            return [self.layout.read(self.arena, at, layer, text) for at, text in zip(offsets, texts, strict=True)]
        finally:
            self.arena.give_back(start, total)

    def _expire(self, request_id: int) -> None:
        pending = self._pending.get(request_id)
        if pending is not None and not pending.future.done():
            pending.future.set_result(to_wire(DeadlineExceeded("the request was not computed within its deadline")))
            self._link.send(["cancel", request_id])

    def _on_message(self, message: list[Any]) -> None:
        """The engine's answer: its region comes back now unless results wait there to be read."""
        _, request_id, outcome = message
        pending = self._pending.pop(request_id)
        abandoned = pending.future.done()  # cancelled, or answered 504 by the timer
        if abandoned or outcome is not None:
            self.arena.give_back(pending.offset, pending.size)
        if not abandoned:
            pending.future.set_result(outcome)

    def _on_lost(self) -> None:
        if self._pending:
            log.error("the engine process closed its connection: %d requests answered 503", len(self._pending))
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_result(to_wire(NotReady("the engine process stopped")))
        self._pending.clear()

    async def drain(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) for every request sent to be answered, then disconnect."""
        deadline = time.monotonic() + timeout_s
        while self._pending and self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        finished = not self._pending
        await self.close()
        return finished

    async def close(self) -> None:
        if self._link.transport is not None:
            self._link.transport.close()
        self.arena.close()


def engine_process(path: str) -> EngineSource:
    """The engine in the group's engine process, listening at `path`: connect once it listens
    (it does once its model is warm), with an arena for this front-end's share of its queue."""

    async def connect(settings: Settings, metrics: Metrics) -> EngineHandle:
        def arena_bytes(card: ModelCard) -> int:
            resolved = settings.resolve(card.device_type)
            return EngineClient.arena_bytes(card, resolved.max_queue_size, settings.max_images_per_request)

        if settings.gpu_decode:
            log.warning("VIT_GPU_DECODE: decoding on the CPU, as the model is in an engine process (VIT_WORKERS > 1)")
        while True:
            try:
                return await EngineClient.connect(path, arena_bytes)
            except (FileNotFoundError, ConnectionRefusedError):  # the engine is still loading
                await asyncio.sleep(0.1)

    return EngineSource(connect, listen_once_ready=True)


async def _receive_frame(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    data = bytearray()
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "little"):
        chunk = await loop.sock_recv(sock, 1 << 16)
        if not chunk:
            raise ConnectionError("the engine closed the connection")
        data += chunk
    return bytes(data[4:])


# -------------------------------------------------------------------------- engine side


def serve_engine(engine: Engine, settings: Settings, path: str) -> int:
    """The engine process's life once its model is loaded: warm up, serve the front-ends at
    `path` until SIGTERM (0) or the batch loop dies (1)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # uvloop, as the front-ends' uvicorn
        return runner.run(_serve_engine(engine, settings, path))


async def _serve_engine(engine: Engine, settings: Settings, path: str) -> int:
    metrics = Metrics()
    local = await LocalEngine.start(engine, settings, metrics)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    gc.freeze()  # as in service/lifecycle.py
    serving = asyncio.create_task(EngineServer(local.batcher, engine.card).serve(path))
    log.info(
        "engine ready: %s on %s (%s), %d torch threads",
        engine.model_id,
        engine.device,
        engine.dtype_name,
        torch.get_num_threads(),
    )
    while not stop.is_set() and local.running and not serving.done():
        for kind, value in local.gpu_memory().items():
            metrics.gpu_memory.labels(kind=kind).set(value)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    status = 0 if stop.is_set() else 1
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    await local.batcher.close()
    return status


class EngineServer:
    """In the engine process: each front-end's requests, submitted to the one batcher."""

    def __init__(self, batcher: Batcher[Any], card: ModelCard) -> None:
        self.batcher, self.card = batcher, card
        self.layout = Layout.of(card)
        self._connections: set[_FrontEnd] = set()

    async def serve(self, path: str) -> None:
        """Accept front-ends at `path` until cancelled."""
        loop = asyncio.get_running_loop()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(128)
        listener.setblocking(False)
        accepting: set[asyncio.Task[None]] = set()
        try:
            while True:
                sock, _ = await loop.sock_accept(listener)
                task = loop.create_task(self._accept(sock))
                accepting.add(task)
                task.add_done_callback(accepting.discard)
        finally:
            listener.close()
            for connection in list(self._connections):
                connection.close()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(sock, _frame(self.card.to_json().encode()))
            sock.setblocking(True)
            sock.settimeout(30)
            hello, fds, _, _ = await asyncio.to_thread(socket.recv_fds, sock, _HELLO, 1)
            sock.setblocking(False)
            if len(hello) != _HELLO or len(fds) != 1:
                raise ConnectionError("a front-end connected without its arena")
            arena = Arena(int.from_bytes(hello, "little"), fds[0])
        except (OSError, ConnectionError) as exc:
            log.warning("a front-end failed to connect: %s", exc)
            sock.close()
            return
        connection = _FrontEnd(self, arena)
        self._connections.add(connection)
        await loop.create_unix_connection(lambda: connection.link, sock=sock)
        log.info("a front-end connected (%d now)", len(self._connections))


class _FrontEnd:
    """One front-end's connection in the engine process, and its requests in the batcher.

    Requests are queued with `Batcher.enqueue` and answered from their items' done-callbacks:
    no task, no timer per request (the front-end keeps the deadline, and the batcher answers
    an item still queued past it)."""

    def __init__(self, server: EngineServer, arena: Arena) -> None:
        self.server, self.arena = server, arena
        self.link = _Link(self._on_message, self._on_lost)
        self._requests: dict[int, _Request] = {}

    def _on_message(self, message: list[Any]) -> None:
        if message[0] == "submit":
            _, request_id, items, deadline, layer = message
            self._submit(request_id, items, deadline, layer)
        elif message[0] == "cancel":
            request = self._requests.get(message[1])
            if request is not None:
                self.server.batcher.forget(request.queued)  # each item's callback then finishes it

    def _submit(self, request_id: int, items: list[list[Any]], deadline: float, layer: Layer | None) -> None:
        size = self.server.card.image_size
        images: list[Input] = [
            tuple(item[2]) if item[1] == "t" else _pixels(self.arena, item[0], item[1], size)  # pixels in place
            for item in items
        ]
        try:
            queued = self.server.batcher.enqueue(images, deadline, layer)
        except ServiceError as exc:
            self.link.send(["done", request_id, to_wire(exc)])
            return
        request = self._requests[request_id] = _Request(self, request_id, [item[0] for item in items], queued)
        for item in queued:
            item.future.add_done_callback(request.item_done)

    def finish(self, request: _Request) -> None:
        """Every item is done: write the results, or pass on the first failure."""
        del self._requests[request.request_id]
        outcome = request.failure
        if outcome is None:
            try:
                for offset, item in zip(request.offsets, request.queued, strict=True):
                    self.server.layout.write(self.arena, offset, item.future.result())
            except Exception as exc:
                log.exception("writing results for a front-end failed")
                outcome = to_wire(exc)
        self.link.send(["done", request.request_id, outcome])

    def _on_lost(self) -> None:
        """The front-end has gone: its requests leave the queue."""
        for request in list(self._requests.values()):
            self.server.batcher.forget(request.queued)
        self.server._connections.discard(self)
        with contextlib.suppress(OSError):
            self.arena.close()

    def close(self) -> None:
        if self.link.transport is not None:
            self.link.transport.close()


@dataclass(eq=False)
class _Request:
    """A request in the engine: its items, how many are still running, its first failure."""

    front_end: _FrontEnd
    request_id: int
    offsets: list[int]
    queued: list[Item]
    failure: list[str] | None = None

    def __post_init__(self) -> None:
        self.running = len(self.queued)

    def item_done(self, future: asyncio.Future[ItemResult]) -> None:
        self.running -= 1
        error = None if future.cancelled() else future.exception()  # retrieved, every one
        if self.failure is None and (future.cancelled() or error is not None):
            self.failure = to_wire(error or asyncio.CancelledError())
            self.front_end.server.batcher.forget(self.queued)  # the rest would be computed in vain
        if self.running == 0:
            self.front_end.finish(self)
