"""Image decoding in worker processes, every decode bounded in time and memory.

Decoding is the one step whose cost a client controls, and a thread cannot be stopped: a few
KB can be crafted to take seconds in a decoder, and Pillow's RLE BMP decoder runs in Python,
holding the GIL. So images are decoded in `VIT_DECODE_PROCESSES` processes of their own
(`python -m service.decoding`: Pillow and numpy, no torch). A decode that passes
`VIT_DECODE_TIMEOUT_S` has its process killed and replaced; each process runs under an
address-space limit of `VIT_DECODE_MEMORY_BYTES` above its own start-up size, so a memory
bomb fails its own decode (MemoryError, then 413) instead of the host.

Bytes go to a process through a pipe (framed by `multiprocessing.connection`); its pixels come
back through a buffer the two share (a memfd, mapped by both), and a one-byte answer on a second
pipe says they are there. The event loop reads answers as they arrive (`add_reader`, on a
non-blocking pipe), so no thread is spent waiting, and the pixels cross with a single copy.
Decodes are admitted by their cost, read from the headers first (service/decode_cost.py): cheap
images go first and have a process of their own that expensive ones never take, so they never
wait behind them; within each kind, clients take turns (round robin by address), so one client's
burst does not queue anyone else's behind it; every decode is killed at a multiple of its expected
time; and one request holds at most all but one process, so a request full of time bombs leaves a
process for everyone else. docs/RELIABILITY.md, "Decoding is admitted by its cost".
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import json
import logging
import math
import mmap
import os
import resource
import subprocess  # nosec B404
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection

import numpy as np

from model.preprocess import ImageError, ImageTooLarge, PreprocessConfig, UnsupportedImageFormat, decode_image
from service import decode_cost

log = logging.getLogger(__name__)

_READY, _PIXELS = b"R", b"P"
# The one-byte answer for each kind of refusal, most specific first: the process writes it, the
# service raises the same kind again.
_REFUSALS: tuple[tuple[bytes, type[ImageError]], ...] = (
    (b"L", ImageTooLarge),
    (b"F", UnsupportedImageFormat),
    (b"E", ImageError),
)
# The job pipe holds this much (Linux's default ceiling for an unprivileged process, asked for
# with F_SETPIPE_SZ; 64 KiB where refused): a body that fits is written at once, since a worker is
# sent an image only when idle with its pipe empty; a larger one would block until the worker has
# read most of it, so it is written from a thread instead of the event loop.
_PIPE_BYTES = 1 << 20
# Clients whose last turn is remembered when none of their decodes waits (see _Turns).
_REMEMBERED_CLIENTS = 4096


class DecodeFailed(Exception):
    """Image `index` of a request could not be decoded; `error` says why."""

    def __init__(self, index: int, error: ImageError) -> None:
        super().__init__(f"image {index}: {error}")
        self.index, self.error = index, error


class DecodePool:
    """`await decode_all(images)` -> one uint8 (S, S, 3) array per image, decoded in processes."""

    def __init__(
        self,
        processes: int,
        image_size: int,
        preprocess: PreprocessConfig,
        max_pixels: int,
        timeout_s: float,
        memory_bytes: int,
        draft: bool = False,
        observe: Callable[[float], object] = lambda seconds: None,
        restarted: Callable[[], object] = lambda: None,
    ) -> None:
        """`draft`: see model.preprocess.decode_image. `observe` gets the seconds each successful
        decode took, from dispatch to pixels; `restarted` is called for each process killed (past
        its timeout) or dead, and replaced."""
        self.processes, self.timeout_s, self._observe, self._restarted = processes, timeout_s, observe, restarted
        self.max_pixels = max_pixels
        self.per_request = max(1, processes - 1)
        self.expensive_slots = max(1, processes - 1)  # with two or more, one process is kept for cheap images
        self.shape = (image_size, image_size, 3)
        self._config = json.dumps(
            {
                "size": image_size,
                "preprocess": preprocess.to_dict(),
                "max_pixels": max_pixels,
                "memory": memory_bytes,
                "draft": draft,
            }
        )
        self._idle: list[_Worker] = []
        self._waiting = {False: _Turns(), True: _Turns()}  # cheap and expensive decodes
        self._expensive_running = 0
        self._workers: set[_Worker] = set()
        self._closed = False

    async def start(self, timeout_s: float = 120.0) -> None:
        """Start every process and wait until each has imported what it needs."""
        for _ in range(self.processes):
            self._spawn()
        async with asyncio.timeout(timeout_s):
            while len(self._idle) < self.processes:
                await asyncio.sleep(0.01)
                if any(w.process.poll() is not None for w in self._workers):
                    raise RuntimeError("a decode process exited at start-up")

    def close(self) -> None:
        """Kill every process: a decode still running is cut short (its request is answered)."""
        self._closed = True
        for worker in list(self._workers):
            worker.kill(ImageError("the service is shutting down"))

    async def decode_all(self, images: Sequence[bytes], client: str = "") -> list[np.ndarray]:
        """Decode a request's images, at most `per_request` at a time; the first failure (as
        DecodeFailed) abandons the rest: images not yet started are never decoded. `client` (its
        address) takes turns with other clients for expensive decodes."""
        if len(images) == 1:  # the usual request: no tasks to run side by side
            try:
                return [await self.decode(images[0], client)]
            except ImageError as exc:
                raise DecodeFailed(0, exc) from None
        slots = asyncio.Semaphore(self.per_request)

        async def one(index: int, data: bytes) -> np.ndarray:
            async with slots:
                try:
                    return await self.decode(data, client)
                except ImageError as exc:
                    raise DecodeFailed(index, exc) from None

        tasks = [asyncio.ensure_future(one(i, data)) for i, data in enumerate(images)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            return [t.result() for t in tasks]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def decode(self, data: bytes, client: str = "") -> np.ndarray:
        """One image; ImageError (or a subclass) if it is bad, too large or too slow to decode.
        Cancelling this leaves a started decode to finish (or time out) on its own."""
        expected = decode_cost.expected_seconds(data, self.max_pixels)
        worker = await self._acquire(expected > decode_cost.CHEAP_S, client)
        start = time.perf_counter()
        job = await worker.run(data, decode_cost.deadline_s(expected, self.timeout_s))
        pixels = await asyncio.shield(job)
        self._observe(time.perf_counter() - start)
        return pixels

    async def _acquire(self, expensive: bool, client: str) -> _Worker:
        """An idle process, when this decode's turn comes (see `_next`)."""
        turn: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._waiting[expensive].add(client, turn)
        self._dispatch()
        try:
            return await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed a process as it was cancelled: give it back
                self._ready(turn.result())
            raise

    def _dispatch(self) -> None:
        """Hand idle processes to the decodes whose turn it is."""
        while self._idle and (found := self._next()) is not None:
            turn, worker = found[0], self._idle.pop()
            worker.expensive = found[1]
            self._expensive_running += worker.expensive
            turn.set_result(worker)

    def _next(self) -> tuple[asyncio.Future[_Worker], bool] | None:
        """The next decode to start, and whether it is expensive: a cheap one if any waits, else
        an expensive one while fewer than `expensive_slots` run; of those, the next client's (_Turns)."""
        if (turn := self._waiting[False].take()) is not None:
            return turn, False
        if self._expensive_running < self.expensive_slots and (turn := self._waiting[True].take()) is not None:
            return turn, True
        return None

    def _spawn(self) -> None:
        if not self._closed:
            self._workers.add(_Worker(self))

    def _ready(self, worker: _Worker) -> None:
        """`worker` is idle: started, done with an image, or handed back unused."""
        self._release(worker)
        self._idle.append(worker)
        self._dispatch()

    def _gone(self, worker: _Worker) -> None:
        self._release(worker)
        self._workers.discard(worker)
        if worker in self._idle:  # killed from outside while idle
            self._idle.remove(worker)
        if not self._closed:
            self._restarted()
            self._spawn()

    def _release(self, worker: _Worker) -> None:
        self._expensive_running -= worker.expensive
        worker.expensive = False


class _Turns:
    """Decodes waiting for a process, by client. The next is the oldest of the client whose last
    decode started longest ago (never: first), so a client that sends many at once takes turns
    with those that send one, whoever came first."""

    def __init__(self) -> None:
        self.waiting: dict[str, deque[asyncio.Future[_Worker]]] = {}
        self.last: dict[str, int] = {}  # the number of each client's last turn
        self.turns = 0

    def add(self, client: str, turn: asyncio.Future[_Worker]) -> None:
        self.waiting.setdefault(client, deque()).append(turn)

    def take(self) -> asyncio.Future[_Worker] | None:
        """The next live turn; those of abandoned decodes are dropped on the way."""
        while self.waiting:
            client = min(self.waiting, key=lambda c: self.last.get(c, -1))
            waiting = self.waiting[client]
            turn = waiting.popleft()
            if not waiting:
                del self.waiting[client]
            if turn.done():
                continue
            self.turns += 1
            self.last[client] = self.turns
            if len(self.last) > _REMEMBERED_CLIENTS:
                self.last = {c: n for c, n in self.last.items() if c in self.waiting}
            return turn
        return None


class _Worker:
    """One decode process, the parent's ends of its two pipes, and the pixel buffer they share."""

    def __init__(self, pool: DecodePool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        job_read, job_write = os.pipe()
        try:
            self.pipe_bytes = fcntl.fcntl(job_write, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:  # above /proc/sys/fs/pipe-max-size, or the user's pipe buffers are used up
            self.pipe_bytes = fcntl.fcntl(job_write, fcntl.F_GETPIPE_SZ)
        result_read, result_write = os.pipe()
        self.shared = os.memfd_create("vit-decode-pixels")
        size = math.prod(pool.shape)
        os.ftruncate(self.shared, size)
        fds = (job_read, result_write, self.shared)
        # This interpreter, this package's own module, fixed arguments, no shell:
        self.process = subprocess.Popen(  # nosec B603
            [sys.executable, "-m", "service.decoding", *map(str, fds), pool._config],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
        )
        os.close(job_read)
        os.close(result_write)
        self.pixels = np.frombuffer(mmap.mmap(self.shared, size), np.uint8).reshape(pool.shape)
        self.jobs = Connection(job_write, readable=False)
        self.results = result_read
        self.inbox = bytearray()  # what has arrived of the process's next answers
        self.alive = True
        self.expensive = False  # running, or handed, an expensive decode
        self.job: asyncio.Future[np.ndarray] | None = None
        self.timer: asyncio.TimerHandle | None = None
        os.set_blocking(result_read, False)
        self.loop.add_reader(result_read, self._on_readable)

    async def run(self, data: bytes, timeout_s: float) -> asyncio.Future[np.ndarray]:
        """Send one image; the returned future gets the process's answer. The clock starts
        first, so that nothing (not even a cancelled send) leaves the process unbounded."""
        job = self.job = self.loop.create_future()
        job.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if abandoned
        self.timer = self.loop.call_later(
            timeout_s,
            self.kill,
            ImageTooLarge(f"decoding took longer than the limit for this image ({timeout_s:.2g} s)"),
        )
        try:
            if len(data) + 4 > self.pipe_bytes:  # 4: the length before the bytes
                await self.loop.run_in_executor(None, self.jobs.send_bytes, data)
            else:
                self.jobs.send_bytes(data)
        except OSError:
            self.kill(ImageError("the decoder failed on this image"))
        return job

    def _on_readable(self) -> None:
        """Read what has arrived (the pipe is non-blocking) and act on each complete message,
        framed as multiprocessing.connection frames them: a 4-byte big-endian length first."""
        try:
            chunk = os.read(self.results, 1 << 18)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the process died: a decoder crash, or the kernel's OOM killer
            self.kill(ImageError("the decoder failed on this image"))
            return
        self.inbox += chunk
        while len(self.inbox) >= 4:
            size = int.from_bytes(self.inbox[:4], "big")
            if len(self.inbox) < 4 + size:
                return
            message = self.inbox[4 : 4 + size]
            del self.inbox[: 4 + size]
            self._on_message(message)

    def _on_message(self, message: bytearray) -> None:
        status = bytes(message[:1])
        if status == _READY:
            self.pool._ready(self)
            return
        if self.timer is not None:
            self.timer.cancel()
        job, self.job = self.job, None
        if job is not None and not job.done():
            if status == _PIXELS:
                job.set_result(self.pixels.copy())  # before the buffer is reused by the next image
            else:
                kind = next((kind for code, kind in _REFUSALS if code == status), ImageError)
                job.set_exception(kind(message[1:].decode("utf-8", "replace")))
        self.pool._ready(self)

    def kill(self, error: ImageError) -> None:
        """End the process (its current decode gets `error`) and start a replacement."""
        if not self.alive:
            return
        self.alive = False
        if self.timer is not None:
            self.timer.cancel()
        self.loop.remove_reader(self.results)
        self.process.kill()
        self.process.wait()  # killed: returns at once, and leaves no zombie
        self.jobs.close()
        os.close(self.results)
        os.close(self.shared)  # the mapping goes with the array that holds it
        if self.job is not None and not self.job.done():
            self.job.set_exception(error)
        self.pool._gone(self)


def _serve(job_fd: int, result_fd: int, shared_fd: int, config: str) -> None:
    """The decode process: answer each image with its pixels or the reason it is refused."""
    settings = json.loads(config)
    size, max_pixels = settings["size"], settings["max_pixels"]
    preprocess = PreprocessConfig.from_dict(settings["preprocess"])
    jobs, results = Connection(job_fd, writable=False), Connection(result_fd, readable=False)
    shared = np.frombuffer(mmap.mmap(shared_fd, size * size * 3), np.uint8).reshape(size, size, 3)
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as f:
        start_size = int(f.read().split()[0]) * page
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = start_size + settings["memory"]
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    gc.freeze()  # the imports live as long as the process: no collection walks them (see lifecycle.py)
    results.send_bytes(_READY)
    while True:
        try:
            data = jobs.recv_bytes()
        except EOFError:
            return  # the service closed the pipe
        try:
            pixels = decode_image(data, size, preprocess, max_pixels, settings["draft"])
        except ImageError as exc:  # decode_image turns a MemoryError into ImageTooLarge itself
            code = next(code for code, kind in _REFUSALS if isinstance(exc, kind))
            results.send_bytes(code + str(exc).encode())
        else:
            shared[...] = pixels
            results.send_bytes(_PIXELS)


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the service ends us
    _serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
