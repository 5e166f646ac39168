"""The decode processes (service/decoding.py): the same pixels as decoding in process, every decode
bounded in time and memory by killing and replacing its process, one request never holding every
process, cheap images never behind expensive ones, clients taking turns, and a decode far beyond
its expected cost killed early."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from PIL import Image

from model.preprocess import ImageError, ImageTooLarge, PreprocessConfig, UnsupportedImageFormat, decode_image
from service.decoding import DecodeFailed, DecodePool
from tests.images import encode, photo
from tests.service import bombs

CFG = PreprocessConfig(resize_mode="crop", interpolation="bicubic")
JPEG = encode(photo(), "JPEG", quality=90)
BOMB = bombs.tiff_with_strips(300_000)  # 2 MB, seconds of Pillow decoding strip after strip
LARGE = encode(photo().resize((2000, 1500)), "PNG")  # an ordinary image, but an expensive one


@pytest.fixture
async def pool() -> AsyncIterator[DecodePool]:
    pool = DecodePool(2, 64, CFG, 40_000_000, timeout_s=0.5, memory_bytes=128 << 20)
    await pool.start()
    yield pool
    pool.close()


async def test_the_pixels_are_those_of_decoding_in_process(pool: DecodePool) -> None:
    arrays = await pool.decode_all([JPEG, bombs.small_png()])
    assert np.array_equal(arrays[0], decode_image(JPEG, 64, CFG))
    assert np.array_equal(arrays[1], decode_image(bombs.small_png(), 64, CFG))
    assert arrays[0].flags.writeable  # torch.from_numpy takes it without a copy or a warning


async def test_errors_keep_their_kind_and_name_the_image(pool: DecodePool) -> None:
    cases = [(b"not an image", ImageError), (encode(Image.new("RGB", (8, 8)), "ICO"), UnsupportedImageFormat)]
    for data, kind in cases:
        with pytest.raises(DecodeFailed) as failure:
            await pool.decode_all([JPEG, data])
        assert failure.value.index == 1 and type(failure.value.error) is kind


async def test_a_decode_past_the_timeout_is_killed_and_its_process_replaced(pool: DecodePool) -> None:
    start = time.monotonic()
    with pytest.raises(ImageTooLarge, match="longer than the limit"):
        await pool.decode(BOMB)
    assert time.monotonic() - start < 0.5 + 0.5
    for _ in range(4):  # both processes work, the replacement included
        assert (await pool.decode(JPEG)).shape == (64, 64, 3)


async def test_a_decode_past_the_memory_limit_fails_alone(pool: DecodePool) -> None:
    with pytest.raises(ImageTooLarge, match="memory"):
        await pool.decode(bombs.png(Image.new("RGBA", (6000, 6000), (1, 2, 3, 4))))
    assert (await pool.decode(JPEG)).shape == (64, 64, 3)


async def test_a_process_that_dies_is_replaced(pool: DecodePool) -> None:
    for worker in list(pool._workers):
        os.kill(worker.process.pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    for _ in range(4):
        assert (await pool.decode(JPEG)).shape == (64, 64, 3)


async def test_one_request_of_bombs_leaves_a_process_for_everyone_else(pool: DecodePool) -> None:
    bombs_request = asyncio.ensure_future(pool.decode_all([BOMB] * 4))
    await asyncio.sleep(0.05)
    start = time.monotonic()
    await pool.decode(JPEG)
    assert time.monotonic() - start < 0.25  # not behind the bombs' 0.5 s timeouts
    with pytest.raises(DecodeFailed):
        await bombs_request


async def test_a_cancelled_request_decodes_nothing_more() -> None:
    pool = DecodePool(1, 64, CFG, 40_000_000, timeout_s=0.5, memory_bytes=128 << 20)
    await pool.start()
    try:
        request = asyncio.ensure_future(pool.decode_all([BOMB] * 5))
        await asyncio.sleep(0.1)
        request.cancel()  # the client left
        start = time.monotonic()
        await pool.decode(JPEG)  # waits only for the bomb already running (at most its timeout)
        assert time.monotonic() - start < 0.5 + 0.5
    finally:
        pool.close()


async def test_cheap_images_never_wait_behind_expensive_ones(pool: DecodePool) -> None:
    attack = [asyncio.ensure_future(pool.decode(BOMB, "attacker")) for _ in range(4)]  # four requests
    await asyncio.sleep(0.05)
    start = time.monotonic()
    for client in ("attacker", "someone"):
        assert (await pool.decode(JPEG, client)).shape == (64, 64, 3)
    assert time.monotonic() - start < 0.25  # on the process kept for cheap images, behind no bomb
    assert all(isinstance(r, ImageTooLarge) for r in await asyncio.gather(*attack, return_exceptions=True))


async def test_expensive_decodes_take_turns_by_client() -> None:
    pool = DecodePool(2, 64, CFG, 40_000_000, timeout_s=1.0, memory_bytes=128 << 20)
    await pool.start()
    try:
        attack = [asyncio.ensure_future(pool.decode(BOMB, "attacker")) for _ in range(4)]  # 4 s in arrival order
        await asyncio.sleep(0.05)
        start = time.monotonic()
        assert (await pool.decode(LARGE, "someone")).shape == (64, 64, 3)
        assert time.monotonic() - start < 1.0 + 0.8  # after the bomb that was running, before the other three
        assert not all(task.done() for task in attack)
        await asyncio.gather(*attack, return_exceptions=True)
    finally:
        pool.close()


async def test_a_decode_far_beyond_its_expected_cost_is_killed_early() -> None:
    pool = DecodePool(2, 64, CFG, 40_000_000, timeout_s=30, memory_bytes=512 << 20)
    await pool.start()
    try:
        flood = bombs.png_with_chunks(2_000_000)  # 1 pixel in 24 MB: seconds of Python, expected 0.24 s
        start = time.monotonic()
        with pytest.raises(ImageTooLarge, match="longer than the limit"):
            await pool.decode(flood)
        assert time.monotonic() - start < 0.24 * 10 + 1.0  # its deadline, ten times that, not the 30 s timeout
    finally:
        pool.close()
