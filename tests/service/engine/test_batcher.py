"""The micro-batcher alone, with a fake model whose batches the tests can see and steer."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.engine import Batcher, BatchOutput
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from service.metrics import Metrics


class FakeModel:
    """Embeds each image as its mean pixel value; records every batch it computes."""

    def __init__(self, delay_s: float = 0.0, fail_if: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay_s, self.fail_if = delay_s, fail_if
        self.gate = threading.Event()
        self.gate.set()
        self.threads: set[str] = set()  # the threads that staged or ran a batch

    def stage(self, images: list[torch.Tensor]) -> torch.Tensor:
        self.threads.add(threading.current_thread().name)
        return torch.stack(images)

    def forward(self, batch: torch.Tensor, hidden_layers: list[int]) -> BatchOutput:
        self.threads.add(threading.current_thread().name)
        self.gate.wait(10)
        ids = [int(v) for v in batch.flatten(1)[:, 0].tolist()]
        if self.fail_if is not None and self.fail_if in ids:
            raise RuntimeError("fake: this batch fails")
        time.sleep(self.delay_s)
        self.batches.append(ids)
        means = batch.float().mean(dim=(1, 2, 3))
        hidden = {layer: (means + 1000 * layer).view(-1, 1, 1) for layer in hidden_layers}  # "layer l" = mean + 1000 l
        return BatchOutput(probs=None, embeddings=means.unsqueeze(1), hidden=hidden)

    @property
    def computed(self) -> list[int]:
        return [i for b in self.batches for i in b]


def image(value: int) -> torch.Tensor:
    return torch.full((3, 2, 2), value, dtype=torch.uint8)


def make(model: FakeModel, **kw) -> Batcher:
    options = {"max_batch_size": 4, "max_wait_s": 0.05, "max_queue_size": 1000, "metrics": Metrics()} | kw
    batcher = Batcher(model.stage, model.forward, **options)
    batcher.start()
    return batcher


def later(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


async def test_batches_fill_up_to_the_size_cap() -> None:
    model = FakeModel()
    model.gate.clear()  # hold the first batch so the rest queue up behind it
    batcher = make(model, max_batch_size=4, adaptive=False)
    tasks = [asyncio.create_task(batcher.submit([image(i)], later())) for i in range(10)]
    await asyncio.sleep(0.1)
    model.gate.set()
    results = await asyncio.gather(*tasks)
    assert [r[0].embedding.item() for r in results] == list(range(10))
    assert max(len(b) for b in model.batches) == 4 and sum(map(len, model.batches)) == 10
    assert [len(b) for b in model.batches][:2] == [4, 4]
    await batcher.close()


async def test_a_lone_image_waits_for_the_wait_cap_when_not_adaptive() -> None:
    model = FakeModel()
    batcher = make(model, max_batch_size=64, max_wait_s=0.2, adaptive=False)
    start = time.monotonic()
    first = asyncio.create_task(batcher.submit([image(1)], later()))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(batcher.submit([image(2), image(3)], later()))
    await asyncio.gather(first, second)
    assert time.monotonic() - start >= 0.2
    assert model.batches == [[1, 2, 3]]  # everything that came within the window shares one pass
    await batcher.close()


async def test_adaptive_batcher_does_not_wait_when_the_device_is_idle() -> None:
    model = FakeModel()
    batcher = make(model, max_batch_size=64, max_wait_s=5.0, adaptive=True)
    start = time.monotonic()
    await batcher.submit([image(1)], later())
    assert time.monotonic() - start < 1.0  # far below the 5 s wait cap
    await batcher.close()


async def test_adaptive_batcher_batches_while_the_device_is_busy() -> None:
    model = FakeModel(delay_s=0.1)
    batcher = make(model, max_batch_size=64, max_wait_s=0.5, adaptive=True)
    first = asyncio.create_task(batcher.submit([image(0)], later()))
    await asyncio.sleep(0.02)  # batch [0] is now running
    rest = [asyncio.create_task(batcher.submit([image(i)], later())) for i in range(1, 9)]
    await asyncio.gather(first, *rest)
    assert model.batches[0] == [0] and max(len(b) for b in model.batches[1:]) > 1
    await batcher.close()


async def test_with_one_batch_in_flight_the_next_takes_all_that_arrived_on_the_engine_thread() -> None:
    model = FakeModel()
    model.gate.clear()
    engine_thread = ThreadPoolExecutor(1, thread_name_prefix="engine")
    batcher = make(model, max_batch_size=64, max_wait_s=0.0, max_in_flight=1, compute_thread=engine_thread)
    first = asyncio.create_task(batcher.submit([image(0)], later()))
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(batcher.submit([image(i)], later())) for i in range(1, 9)]
    await asyncio.sleep(0.05)
    assert (batcher.in_flight, batcher.queue_depth) == (1, 8)  # nothing staged behind the running batch
    model.gate.set()
    await asyncio.gather(first, *rest)
    assert model.batches == [[0], list(range(1, 9))]
    assert model.threads == {"engine_0"}  # staging and forward passes both ran on the engine's thread
    await batcher.close()
    assert engine_thread.submit(lambda: "alive").result() == "alive"  # the engine's, not the batcher's to stop
    engine_thread.shutdown()


async def test_each_item_gets_the_hidden_layer_it_asked_for_from_a_shared_batch() -> None:
    model = FakeModel()
    model.gate.clear()
    batcher = make(model, max_batch_size=8, adaptive=False)
    asks = [None, 2, -1, 2]
    tasks = [asyncio.create_task(batcher.submit([image(i)], later(), layer)) for i, layer in enumerate(asks)]
    await asyncio.sleep(0.1)
    model.gate.set()
    results = [r[0] for r in await asyncio.gather(*tasks)]
    assert model.batches == [[0, 1, 2, 3]]  # one forward pass served all four
    assert results[0].hidden is None
    assert [r.hidden.item() for r in results[1:]] == [1 + 2000, 2 - 1000, 3 + 2000]  # type: ignore[union-attr]
    await batcher.close()


async def test_large_request_is_split_across_batches() -> None:
    model = FakeModel()
    batcher = make(model, max_batch_size=4)
    results = await batcher.submit([image(i) for i in range(10)], later())
    assert [r.embedding.item() for r in results] == list(range(10))
    assert all(len(b) <= 4 for b in model.batches) and len(model.batches) >= 3
    await batcher.close()


async def test_expired_deadline_at_enqueue_is_never_computed() -> None:
    model = FakeModel()
    batcher = make(model)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit([image(1)], time.monotonic() - 0.01)
    assert model.computed == []
    await batcher.close()


async def test_deadline_passing_in_the_queue_is_never_computed() -> None:
    model = FakeModel()
    model.gate.clear()
    batcher = make(model, max_batch_size=1)
    blocker = asyncio.create_task(batcher.submit([image(1)], later()))
    await asyncio.sleep(0.05)
    doomed = asyncio.create_task(batcher.submit([image(2)], later(0.1)))
    await asyncio.sleep(0.3)
    model.gate.set()
    await blocker
    with pytest.raises(DeadlineExceeded):
        await doomed
    await asyncio.sleep(0.1)
    assert 2 not in model.computed
    await batcher.close()


async def test_cancelled_item_is_dropped_and_never_computed() -> None:
    model = FakeModel()
    model.gate.clear()
    metrics = Metrics()
    batcher = make(model, max_batch_size=1, metrics=metrics)
    running = asyncio.create_task(batcher.submit([image(1)], later()))
    await asyncio.sleep(0.05)
    gone = asyncio.create_task(batcher.submit([image(2), image(3)], later()))
    await asyncio.sleep(0.05)
    assert batcher.queue_depth == 1  # image 2 is staged behind the running batch, image 3 queued
    gone.cancel()  # the client hung up: 3 leaves the queue, 2 is skipped before its forward pass
    await asyncio.sleep(0.01)
    assert batcher.queue_depth == 0
    model.gate.set()
    await running
    await batcher.submit([image(4)], later())
    assert model.computed == [1, 4]
    assert metrics.dropped._value.get() == 2
    await batcher.close()


async def test_model_error_fails_exactly_that_batch_and_the_loop_goes_on() -> None:
    model = FakeModel(fail_if=66)
    model.gate.clear()
    batcher = make(model, max_batch_size=2, adaptive=False, max_wait_s=0.01)
    first = asyncio.create_task(batcher.submit([image(1), image(2)], later()))
    await asyncio.sleep(0.05)
    bad = asyncio.create_task(batcher.submit([image(66)], later()))
    neighbour = asyncio.create_task(batcher.submit([image(5)], later()))  # shares the failing batch
    await asyncio.sleep(0.05)
    after = asyncio.create_task(batcher.submit([image(7), image(8)], later()))
    model.gate.set()
    assert [r.embedding.item() for r in await first] == [1, 2]
    for task in (bad, neighbour):
        with pytest.raises(InferenceFailed):
            await task
    assert [r.embedding.item() for r in await after] == [7, 8]
    assert batcher.running
    await batcher.close()


async def test_full_queue_rejects_at_once() -> None:
    model = FakeModel()
    model.gate.clear()
    batcher = make(model, max_batch_size=1, max_queue_size=3)
    running = asyncio.create_task(batcher.submit([image(0)], later()))
    await asyncio.sleep(0.05)  # image 0 is on the device
    queued = asyncio.create_task(batcher.submit([image(1), image(2), image(3)], later()))
    await asyncio.sleep(0.05)  # image 1 is staged; 2 and 3 wait in the queue
    assert batcher.queue_depth == 2
    start = time.monotonic()
    with pytest.raises(Overloaded):
        await batcher.submit([image(4), image(5)], later())  # 2 + 2 > 3
    assert time.monotonic() - start < 0.5  # at once, not after the 10 s deadline
    last = asyncio.create_task(batcher.submit([image(6)], later()))  # 2 + 1 fits
    await asyncio.sleep(0.01)
    model.gate.set()
    await asyncio.gather(running, queued, last)
    assert sorted(model.computed) == [0, 1, 2, 3, 6]
    await batcher.close()


async def test_drain_answers_everything_queued() -> None:
    model = FakeModel(delay_s=0.02)
    batcher = make(model, max_batch_size=2)
    tasks = [asyncio.create_task(batcher.submit([image(i)], later())) for i in range(6)]
    await asyncio.sleep(0)
    assert await batcher.drain(5.0)
    assert sorted(r[0].embedding.item() for r in await asyncio.gather(*tasks)) == list(range(6))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=12), st.integers(1, 5))
def test_concurrent_submitters_each_get_their_own_results(sizes: list[int], max_batch: int) -> None:
    async def scenario() -> None:
        model = FakeModel()
        batcher = make(model, max_batch_size=max_batch, max_wait_s=0.002)
        values, start = [], 0
        for n in sizes:
            values.append(list(range(start, start + n)))
            start += n
        results = await asyncio.gather(*(batcher.submit([image(v) for v in vs], later()) for vs in values))
        for vs, rs in zip(values, results, strict=True):
            assert [r.embedding.item() for r in rs] == vs
        assert sorted(model.computed) == list(range(start))  # each image computed exactly once
        assert all(len(b) <= max_batch for b in model.batches)
        await batcher.close()

    asyncio.run(scenario())


async def test_close_answers_everything_queued_staged_or_running() -> None:
    model = FakeModel()
    model.gate.clear()
    batcher = make(model, max_batch_size=1)
    tasks = [asyncio.create_task(batcher.submit([image(i)], later())) for i in range(4)]
    await asyncio.sleep(0.05)  # 0 running, 1 staged, 2 and 3 queued
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.05)
    model.gate.set()  # let the running forward pass return so the inference thread can stop
    await closing
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, NotReady) for r in results)


async def test_a_dead_batch_loop_fails_its_queue_and_stops_running() -> None:
    model = FakeModel()
    batcher = make(model)

    async def broken() -> list:
        raise RuntimeError("a bug in the batch loop")

    batcher._next_batch = broken  # type: ignore[method-assign]  # the loop's own code fails
    with pytest.raises((InferenceFailed, NotReady)):
        await batcher.submit([image(1)], later())
    await asyncio.sleep(0.01)
    assert not batcher.running and isinstance(batcher.failure, RuntimeError)
    await batcher.close()


async def test_a_batch_holds_one_key_and_the_others_keep_their_place_in_the_queue() -> None:
    """Texts of another padded length (another key) never share an image's batch: the first waiting
    item's key forms the batch, in order, and the rest wait where they were."""
    model = FakeModel()
    model.gate.clear()
    batcher = make(model, max_batch_size=4, adaptive=False, key=lambda image: int(image[0, 0, 0]) % 2)
    blocker = asyncio.create_task(batcher.submit([image(100)], later()))
    await asyncio.sleep(0.1)  # the first batch runs (held by the gate); the rest queue behind it
    tasks = [asyncio.create_task(batcher.submit([image(i)], later())) for i in range(1, 8)]
    await asyncio.sleep(0.1)
    model.gate.set()
    results = await asyncio.gather(blocker, *tasks)
    assert [r[0].embedding.item() for r in results] == [100, *range(1, 8)]
    assert model.batches[1:] == [[1, 3, 5, 7], [2, 4, 6]]  # odd first (the first waiting), then even
    await batcher.close()
