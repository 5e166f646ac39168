"""`python -m bench.probes.gpu_decode`: JPEG decoding on the GPU (`VIT_GPU_DECODE`) against the CPU
path, at 500×375 and 12 megapixels.

For each size, the same JPEGs (bench.workload.jpeg) decoded and resized to 224 with the timm
geometry: on the CPU as a decode process does it (`decode_image`, with draft scaling, the
service's default, one core), by the service's `DecodePool` with one process per core and every
image submitted at once (as concurrent requests do), and on the GPU by nvJPEG in batches of 1 and
`--batch` (`model.gpu_decode.decode_jpegs`, synchronised, the pixels left on the device as the
service leaves them). Also the largest pixel difference between the GPU's and a full CPU decode.
The variants are measured in turn, `--rounds` times, and the median images/s of each is kept.
Without CUDA and torchvision the GPU rows say why they were skipped. Writes one JSON file.

    python -m bench.probes.gpu_decode --out /tmp/decode.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.procfs import cpu_model
from bench.workload import PHONE, jpeg
from model import gpu_decode
from model.preprocess import PreprocessConfig, decode_image
from service.decoding import DecodePool

CONFIG = PreprocessConfig(resize_mode="crop", crop_pct=0.875, interpolation="bicubic")
SIZE = 224


def rate(run: Callable[[], int], seconds: float) -> float:
    """Images per second of `run` (which returns how many it did), after one warm-up call."""
    run()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += run()
    return done / (time.perf_counter() - start)


def variants(images: list[bytes], batch: int, pool: DecodePool, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """Each variant's run (returning its image count), or the reason it cannot run here."""

    def cpu_one_core() -> int:
        decode_image(images[0], SIZE, CONFIG, draft=True)
        return 1

    async def all_at_once() -> int:
        return len(await asyncio.gather(*(pool.decode(data) for data in images)))

    found: dict[str, Any] = {
        "cpu, one core": cpu_one_core,
        f"cpu, {pool.processes} decode processes": lambda: loop.run_until_complete(all_at_once()),
    }
    device = torch.device("cuda")
    reason = gpu_decode.unavailable(device) if torch.cuda.is_available() else "no CUDA GPU on this machine"
    for n in (1, batch):
        if reason:
            found[f"gpu, batch {n}"] = reason
            continue

        def on_gpu(n: int = n) -> int:
            gpu_decode.decode_jpegs((images * n)[:n], SIZE, CONFIG, device)
            torch.cuda.synchronize()
            return n

        found[f"gpu, batch {n}"] = on_gpu
    return found


def max_difference(image: bytes) -> int | None:
    """The GPU's largest difference from a full CPU decode, in levels of 255 (None without one)."""
    if not torch.cuda.is_available() or gpu_decode.unavailable(torch.device("cuda")):
        return None
    [gpu] = gpu_decode.decode_jpegs([image], SIZE, CONFIG, torch.device("cuda"))
    cpu = decode_image(image, SIZE, CONFIG, draft=False).astype(int)
    return int(np.abs(cpu - gpu.cpu().numpy()).max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probes.gpu_decode", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    loop = asyncio.new_event_loop()
    pool = DecodePool(os.cpu_count() or 1, SIZE, CONFIG, 40_000_000, timeout_s=60, memory_bytes=2 << 30, draft=True)
    loop.run_until_complete(pool.start())
    rows = []
    try:
        for size in ("500x375", PHONE):
            images = [jpeg(size, i) for i in range(4)] * (args.batch // 4 or 1)
            runs = variants(images, args.batch, pool, loop)
            rates: dict[str, list[float]] = {name: [] for name, run in runs.items() if callable(run)}
            for _ in range(args.rounds):
                for name in rates:
                    rates[name].append(rate(runs[name], args.seconds))
            for name, run in runs.items():
                row: dict[str, Any] = {"size": size, "variant": name}
                row |= {"images_per_s": statistics.median(rates[name])} if name in rates else {"skipped": run}
                rows.append(row)
                shown = f"{row['images_per_s']:.1f} images/s" if name in rates else f"skipped: {run}"
                print(f"{size} {name}: {shown}", flush=True)
            rows.append({"size": size, "variant": "gpu max difference", "levels": max_difference(images[0])})
    finally:
        pool.close()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    meta = {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": device, "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
