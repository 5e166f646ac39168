"""`python -m bench.probes.decode`: decoding spread over the cores: threads, a process pool, and the
service's decode processes.

Decodes and resizes the benchmark's JPEGs (`model.preprocess.load_image`, as the service does)
serially, on a thread pool and a process pool of `--workers` (the pixels stay in the worker:
only the decode is timed), and on the service's `DecodePool` of `--workers` processes with every
image submitted at once, as many concurrent requests would (the pixels come back to the caller,
as the service needs them). The variants are measured in turn, `--rounds` times, and the
median images/s of each is printed: the machine is shared, so only ratios from one run count.
Last, two 12-megapixel JPEGs (a smooth one, and one with a phone photo's grain and weight: see
bench.workload.jpeg) decoded and resized one at a time, in full and in draft mode (libjpeg's
DCT scaling, `VIT_JPEG_DRAFT`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from bench.workload import PHONE, PHONE_GRAIN, SIZES, jpeg
from model.preprocess import PreprocessConfig, decode_image
from model.tensors import load_image
from service.decoding import DecodePool

CONFIG = PreprocessConfig(resize_mode="crop", crop_pct=0.875, interpolation="bicubic")


def _decode(data: bytes) -> int:
    return load_image(data, 224, CONFIG).numel()


def _map(pool: Executor, images: list[bytes]) -> list[int]:
    return list(pool.map(_decode, images))


def _rate(run: Callable[[list[bytes]], object], images: list[bytes], seconds: float) -> float:
    run(images[:8])  # warm: pools started, code loaded
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(images)
        done += len(images)
    return done / (time.perf_counter() - start)


async def _all_at_once(pool: DecodePool, images: list[bytes]) -> list[object]:
    return list(await asyncio.gather(*(pool.decode(data) for data in images)))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probes.decode", description=__doc__)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    service = DecodePool(args.workers, 224, CONFIG, 40_000_000, timeout_s=60, memory_bytes=1 << 30)
    loop.run_until_complete(service.start())
    threads, processes = ThreadPoolExecutor(args.workers), ProcessPoolExecutor(args.workers)
    variants: dict[str, Callable[[list[bytes]], object]] = {
        "serial": lambda batch: [_decode(d) for d in batch],
        "threads": functools.partial(_map, threads),
        "processes": functools.partial(_map, processes),
        "service": lambda batch: loop.run_until_complete(_all_at_once(service, batch)),
    }
    for size in SIZES:
        images = [jpeg(size, i) for i in range(3)] * 32
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, run in variants.items():
                rates[name].append(_rate(run, images, args.seconds))
        medians = {name: statistics.median(r) for name, r in rates.items()}
        shown = ", ".join(f"{name} {rate:.0f} ({rate / medians['serial']:.2f}x)" for name, rate in medians.items())
        print(f"{size}: images/s with {args.workers} workers: {shown}")
    service.close()
    threads.shutdown()
    processes.shutdown()
    for size in (PHONE, PHONE_GRAIN):
        phone = jpeg(size)
        times: dict[str, list[float]] = {"full": [], "draft": []}
        for _ in range(args.rounds):
            for name in times:
                start = time.perf_counter()
                decode_image(phone, 224, CONFIG, draft=name == "draft")
                times[name].append(time.perf_counter() - start)
        full, draft = (statistics.median(times[name]) * 1000 for name in ("full", "draft"))
        print(
            f"{size} JPEG ({len(phone) / 1e6:.1f} MB), one at a time: full decode {full:.1f} ms,"
            f" draft {draft:.1f} ms ({full / draft:.1f}x)"
        )


if __name__ == "__main__":
    main()
