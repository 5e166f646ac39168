"""`python -m bench.decode`: decoding spread over the cores, with threads or with processes.

Decodes and resizes the benchmark's JPEGs (`model.preprocess.load_image`, as the service does)
serially, on a thread pool and on a process pool of `--workers`, and prints images/s for each.
Pillow releases the GIL while it decodes and resizes, so threads can use every core without the
cost of sending pixels between processes.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from bench.workload import SIZES, jpeg
from model.preprocess import PreprocessConfig, load_image

CONFIG = PreprocessConfig(resize_mode="crop", crop_pct=0.875, interpolation="bicubic")


def _decode(data: bytes) -> int:
    return load_image(data, 224, CONFIG).numel()  # the pixels stay in the worker: only the decode is timed


def _map(pool: Executor, images: list[bytes]) -> list[int]:
    return list(pool.map(_decode, images))


def _rate(run: Callable[[list[bytes]], object], images: list[bytes], seconds: float) -> float:
    run(images[:8])  # warm: pools started, code loaded
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(images)
        done += len(images)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    pools: dict[str, Executor] = {
        "threads": ThreadPoolExecutor(args.workers),
        "processes": ProcessPoolExecutor(args.workers),
    }
    for size in SIZES:
        images = [jpeg(size, i) for i in range(3)] * 32
        rates = {"serial": _rate(lambda batch: [_decode(d) for d in batch], images, args.seconds)}
        for name, pool in pools.items():
            rates[name] = _rate(functools.partial(_map, pool), images, args.seconds)
        shown = ", ".join(f"{name} {rate:.0f}" for name, rate in rates.items())
        print(f"{size}: images/s with {args.workers} workers: {shown}")
    for pool in pools.values():
        pool.shutdown()


if __name__ == "__main__":
    main()
