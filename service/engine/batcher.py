"""Dynamic micro-batching: many requests' images, few forward passes.

One collector task owns a bounded queue of items (image, future, enqueue time, deadline).
It forms a batch as soon as it has `max_batch_size` images, or the first waiting image has
waited `max_wait`, or (adaptive) the device has nothing to do, so a lone request never waits
for company that is not coming. A batch holds items of one key (images; texts of one padded
length), the first waiting item's, taken in order. Items whose client has gone are skipped; items past their
deadline get 504; neither is computed. Forward passes run on one compute thread, so the event
loop never blocks. With two batches in flight (a GPU), staging (stacking, the copy to the
device) runs on a thread of its own while the previous batch runs, so the device never waits
for the next batch; with one (the CPU, where staging and the model share the cores), the next
batch is formed when the device frees, from everything that arrived meanwhile, and staged on
the compute thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from model.config import Layer
from service.engine.device import BatchOutput, Input
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from service.metrics import Metrics

log = logging.getLogger(__name__)

Staged = TypeVar("Staged")


@dataclass(frozen=True)
class ItemResult:
    """One image's results, as float32 numpy arrays: what routes and the wire read, with no torch."""

    probs: np.ndarray | None  # (classes,)
    embedding: np.ndarray  # (D,)
    hidden: np.ndarray | None = None  # (N+1, D): the layer this item asked for


@dataclass(eq=False)
class Item:
    input: Input
    future: asyncio.Future[ItemResult]
    enqueued: float
    deadline: float
    layer: Layer | None  # a hidden layer to return, for /v1/features
    key: Hashable = 0  # items share a batch only with items of the same key


class Batcher(Generic[Staged]):
    """`await submit(inputs, deadline)` -> one result per input, computed in shared batches.

    `stage(inputs)` prepares a batch; `forward(staged, hidden_layers)` runs it (on
    `compute_thread`, the engine's own thread when given) and returns a BatchOutput whose rows
    follow the inputs' order, with the hidden states of the layers its items asked for.
    `key(input)` says which inputs may share a batch (default: all).
    """

    def __init__(
        self,
        stage: Callable[[list[Input]], Staged],
        forward: Callable[[Staged, list[Layer]], BatchOutput],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue_size: int,
        metrics: Metrics | None = None,
        adaptive: bool = True,
        max_in_flight: int = 2,
        compute_thread: ThreadPoolExecutor | None = None,
        key: Callable[[Input], Hashable] | None = None,
    ) -> None:
        self._stage, self._forward, self._key = stage, forward, key
        self.max_batch_size, self.max_wait_s, self.max_queue_size = max_batch_size, max_wait_s, max_queue_size
        self.adaptive = adaptive
        self._metrics = metrics
        self._queue: deque[Item] = deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)  # e.g. one batch running, one staged behind it
        self._in_flight = 0
        self._own_pools: list[ThreadPoolExecutor] = []
        if compute_thread is None:
            compute_thread = ThreadPoolExecutor(1, thread_name_prefix="vit-infer")
            self._own_pools.append(compute_thread)
        self._compute_thread = compute_thread
        self._stage_pool: ThreadPoolExecutor | None = None
        if max_in_flight > 1:
            self._stage_pool = ThreadPoolExecutor(1, thread_name_prefix="vit-stage")
            self._own_pools.append(self._stage_pool)
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._accepting = False
        self.failure: BaseException | None = None  # set if the collector itself died

    # ------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._accepting = True
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="vit-batcher")
        self._task.add_done_callback(self._on_collector_exit)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Batches taken from the queue and not yet answered (running, or staged behind it)."""
        return self._in_flight

    async def drain(self, timeout_s: float) -> bool:
        """Stop taking new items, finish everything queued and in flight; True if all finished."""
        self._accepting = False
        deadline = time.monotonic() + timeout_s
        while (self._queue or self._in_flight) and self.running and time.monotonic() < deadline:
            self._wakeup.set()
            await asyncio.sleep(0.005)
        finished = not self._queue and not self._in_flight
        await self.close()
        return finished

    async def close(self) -> None:
        """Stop now: every item still queued, staged or running is answered 503."""
        self._accepting = False
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(NotReady("the service is shutting down"))
        self._queue.clear()
        # Never block the event loop: a forward pass still running finishes on its own thread.
        for pool in self._own_pools:
            pool.shutdown(wait=False, cancel_futures=True)

    def _on_collector_exit(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        self.failure = task.exception()
        log.critical("the batch loop died: %r", self.failure, exc_info=self.failure)
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(InferenceFailed("the batch loop stopped"))
        self._queue.clear()

    # --------------------------------------------------------------------------- submit

    async def submit(self, images: Sequence[Input], deadline: float, layer: Layer | None = None) -> list[ItemResult]:
        """Queue `images` and wait for their results, until `deadline` (monotonic); with `layer`,
        each result also holds that layer's hidden states.

        Raises Overloaded if the queue cannot take them all, DeadlineExceeded, NotReady while
        draining, InferenceFailed if their batch failed. Cancelling this call (the client
        left) takes its images out of the queue: they are never computed.
        """
        items = self.enqueue(images, deadline, layer)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
                if len(items) == 1:  # the usual request: its future alone, not a gathering of one
                    return [await items[0].future]
                return list(await asyncio.gather(*(item.future for item in items)))
        except TimeoutError:
            raise DeadlineExceeded("the request was not computed within its deadline") from None
        finally:
            self.forget(items)

    def enqueue(self, images: Sequence[Input], deadline: float, layer: Layer | None = None) -> list[Item]:
        """`submit` without the waiting: queue the images and return their items, whose futures
        get the results (or a DeadlineExceeded if still queued at the deadline, which nothing
        else enforces here). The caller must `forget` them once done with them."""
        if not self._accepting or not self.running:
            raise NotReady("the service is not accepting requests")
        now = time.monotonic()
        if deadline <= now:
            raise DeadlineExceeded("the request's deadline passed before it was queued")
        if len(self._queue) + len(images) > self.max_queue_size:
            raise Overloaded(f"the queue is full ({self.max_queue_size} images); retry shortly")
        loop = asyncio.get_running_loop()
        key = self._key or (lambda _: 0)
        items = [Item(image, loop.create_future(), now, deadline, layer, key(image)) for image in images]
        self._queue.extend(items)
        self._set_depth()
        self._wakeup.set()
        return items

    def forget(self, items: list[Item]) -> None:
        """Cancel a request's unfinished items and take any still queued out of the queue."""
        pending = [item for item in items if not item.future.done() or item.future.cancelled()]
        if not pending:  # the usual case: every item was answered, none is queued
            return
        for item in pending:
            item.future.cancel()
        mine = set(pending)
        before = len(self._queue)
        if any(item in mine for item in self._queue):
            self._queue = deque(i for i in self._queue if i not in mine)
            if self._metrics is not None:
                self._metrics.dropped.inc(before - len(self._queue))
            self._set_depth()

    # -------------------------------------------------------------------------- collect

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            self._in_flight += 1
            task = loop.create_task(self._run(batch))
            self._running.add(task)  # a reference, so the task is not collected mid-flight
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[Item]:
        """Wait for a batch to be due, then take it (skipping gone and expired items)."""
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        while len(self._queue) < self.max_batch_size:
            if self.adaptive and self._in_flight == 0:
                break  # the device is idle: waiting would only add latency
            remaining = self._queue[0].enqueued + self.max_wait_s - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                break
            if not self._queue:
                return []
        now = time.monotonic()
        batch: list[Item] = []
        passed: list[Item] = []  # another key's items, left in the queue in their order
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            if item.future.done():  # cancelled: its client has gone
                continue
            if item.deadline <= now:
                item.future.set_exception(DeadlineExceeded("the request was not computed within its deadline"))
                continue
            (batch if not batch or item.key == batch[0].key else passed).append(item)
        self._queue.extendleft(reversed(passed))
        self._set_depth()
        if self._metrics is not None:
            for item in batch:
                self._metrics.queue_wait.observe(now - item.enqueued)
        return batch

    async def _run(self, batch: list[Item]) -> None:
        loop = asyncio.get_running_loop()
        try:
            staged = None
            if self._stage_pool is not None:
                staged = await loop.run_in_executor(self._stage_pool, self._stage, [i.input for i in batch])
            output, batch = await loop.run_in_executor(self._compute_thread, self._compute, batch, staged)
        except asyncio.CancelledError:  # closed while staged or running: still one answer each
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(NotReady("the service is shutting down"))
            raise
        except Exception:  # the model failed: only this batch's items hear of it
            log.exception("inference failed for a batch of %d", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(InferenceFailed("inference failed"))
        else:
            for row, item in enumerate(batch):
                if output is not None and not item.future.done():
                    probs = output.probs[row].numpy() if output.probs is not None else None
                    hidden = output.hidden[item.layer][row].numpy() if item.layer is not None else None
                    item.future.set_result(ItemResult(probs, output.embeddings[row].numpy(), hidden))
        finally:
            self._in_flight -= 1
            self._slots.release()
            self._wakeup.set()

    def _compute(self, batch: list[Item], staged: Any | None) -> tuple[BatchOutput | None, list[Item]]:
        """On the compute thread: drop rows whose client left while the batch waited, stage it
        unless it was staged already, then run it."""
        keep = [row for row, item in enumerate(batch) if not item.future.done()]
        if len(keep) < len(batch):
            if self._metrics is not None:
                self._metrics.dropped.inc(len(batch) - len(keep))
            if not keep:
                return None, []
            staged = None if staged is None else staged[keep]
            batch = [batch[row] for row in keep]
        if staged is None:
            staged = self._stage([item.input for item in batch])
        layers = sorted({item.layer for item in batch if item.layer is not None}, key=str)
        start = time.perf_counter()
        output = self._forward(staged, layers)
        if self._metrics is not None:
            self._metrics.inference_duration.observe(time.perf_counter() - start)
            self._metrics.batch_size.observe(len(batch))
        return output, batch

    # -------------------------------------------------------------------------- metrics

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(len(self._queue))
