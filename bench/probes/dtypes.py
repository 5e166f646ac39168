"""`python -m bench.probes.dtypes`: VIT_DTYPE=auto and VIT_QUANTIZE=int8 against float32, end to end
through the server.

One ViT-S/16 (`--model`) with random weights, saved once so every server serves the same weights,
is served with `VIT_DTYPE=float32`, `VIT_DTYPE=auto` and `VIT_QUANTIZE=int8` in turn (`--variants`),
`--rounds` times, all with VIT_MAX_BATCH_SIZE=16 (`--max-batch-size`); each is loaded with one
224×224 JPEG a request at concurrency 16 (bench.load's closed loop). Printed: images/s of each,
each variant's speed-up over float32 per round and its median, the dtype chosen and why (from
/v1/models), and the cosine between each server's embeddings of the benchmark's photos and
float32's. The machine, its CPU
flags and the date go with the figures: auto's choice depends on the CPU. int8 compiles one graph
per batch-size bucket at start-up, before it is ready: set VIT_COMPILE_CACHE_DIR in the
environment to start from a cache (bench.probes.compiled_start).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch

from bench.harness import vit_serve
from bench.load import closed_loop
from bench.workload import jpeg
from model.checkpoints import save_native
from model.config import preset
from model.preprocess import PreprocessConfig
from model.vit import VisionTransformer
from service.engine.precision import native_bf16


@contextmanager
def _serving(checkpoint: Path, model: str, variant: str, max_batch_size: int) -> Iterator[str]:
    """vit-serve on 127.0.0.1 with these weights and this VIT_DTYPE (or int8), once ready; yields its URL."""
    with vit_serve(
        {
            "VIT_CHECKPOINT": str(checkpoint),
            "VIT_MODEL": model,
            "VIT_DTYPE": "float32" if variant == "int8" else variant,
            "VIT_QUANTIZE": "int8" if variant == "int8" else "none",
            "VIT_MAX_BATCH_SIZE": str(max_batch_size),
            "VIT_DEVICE": "cpu",
            "VIT_MAX_QUEUE_SIZE": "100000",
            "VIT_LOG_LEVEL": "warning",
        }
    ) as server:
        yield server.url


def _embeddings(url: str, photos: list[bytes]) -> np.ndarray:
    body = {"images": [base64.b64encode(photo).decode() for photo in photos]}
    data = httpx.post(f"{url}/v1/embeddings", json=body, timeout=120).json()["data"]
    return np.array([item["embedding"] for item in data], dtype=np.float64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probes.dtypes", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--model", default="vit_small_patch16_224", help="a preset (random weights)")
    parser.add_argument("--variants", default="float32,auto,int8", help="float32 first: the reference")
    parser.add_argument("--max-batch-size", type=int, default=16, help="int8 compiles a graph per bucket up to it")
    args = parser.parse_args(argv)
    print(f"{datetime.date.today()}, CPU native bf16 flag: {native_bf16() or 'none'}, torch {torch.__version__}")
    photos = [jpeg("224", i) for i in range(3)] + [jpeg("500x375", i) for i in range(3)]
    rates: dict[str, list[float]] = {variant: [] for variant in args.variants.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        save_native(Path(tmp), VisionTransformer(preset(args.model)), None, PreprocessConfig())
        embeddings: dict[str, np.ndarray] = {}
        for round_ in range(args.rounds):
            for variant in rates:
                with _serving(Path(tmp), args.model, variant, args.max_batch_size) as url:
                    model = httpx.get(f"{url}/v1/models").json()["data"][0]
                    embeddings.setdefault(variant, _embeddings(url, photos))
                    load = closed_loop(
                        f"{url}/v1/classify?top_k=1",
                        photos[0],
                        1,
                        args.concurrency,
                        warmup_s=args.warmup,
                        duration_s=args.duration,
                        content_type="image/jpeg",
                    )
                rates[variant].append(load.images_per_s)
                print(f"round {round_ + 1} {variant}: {load.images_per_s:.1f} images/s ({model['dtype_reason']})")
    reference = next(iter(rates))
    for variant in list(rates)[1:]:
        speedups = [a / f for a, f in zip(rates[variant], rates[reference], strict=True)]
        shown = ", ".join(f"{s:.2f}" for s in speedups)
        print(f"{variant} ÷ {reference}, per round: {shown}; median {statistics.median(speedups):.2f}")
        a, f = embeddings[variant], embeddings[reference]
        cosines = (a * f).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(f, axis=1))
        print(f"embedding cosine, {variant} against {reference}, over {len(photos)} photos: min {cosines.min():.6f}")


if __name__ == "__main__":
    main()
