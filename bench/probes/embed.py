"""`python -m bench.probes.embed`: `vit-serve embed` against the bare model and against the same
images sent through the server by a Python client.

One ViT-S/16 (`--model`) with random weights, saved once, and `--images` 224×224 JPEGs (the
benchmark's photos, re-encoded) in a directory. Each round, in turn:

- embed: `python -m service embed DIR --out …` with `VIT_DTYPE=auto`; images/s from its own
  summary (loading and warm-up excluded, as a long job amortises them);
- the bare model: `bench.model_only.measure` at batch `VIT_MAX_BATCH_SIZE`, in the dtype the embed
  run chose (its manifest says), on random tensors: no decoding, no batching, no I/O; its images/s
  over the whole timed window (`images_per_s_window`), as the embed's and the client's are over
  theirs, so that a stall of this shared machine counts against each alike (its median pass is
  printed beside it);
- HTTP: vit-serve with the same weights and settings, and a Python client (httpx) posting each
  JPEG once from 2 × VIT_MAX_BATCH_SIZE threads, at most 64 (as many images in flight as the embed
  keeps, so the server can form the same full batches) to /v1/embeddings; images/s over the set;
- with `--gpu-decode` (on CUDA), the embed again with VIT_GPU_DECODE=1.

Everything runs eagerly (VIT_COMPILE=0), so that no round pays for a compile.

Printed: each figure per round (and how busy the embed kept the model, from its summary), embed
÷ bare and embed ÷ HTTP per round and their medians, the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess  # nosec B404
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from bench.harness import machine, vit_serve
from bench.model_only import measure
from bench.workload import jpeg
from model.checkpoints import save_native
from model.config import preset
from model.preprocess import PreprocessConfig
from model.vit import VisionTransformer

MAX_CLIENT_THREADS = 64  # beyond this a Python client measures its own threads, not the server


def run_embed(source: Path, out: Path, env: dict[str, str]) -> tuple[float, str, str]:
    """(images/s, dtype, how busy the model was) of one `vit-serve embed` run, from its summary and
    manifest."""
    command = [sys.executable, "-m", "service", "embed", str(source), "--out", str(out)]
    done = subprocess.run(command, env=os.environ | env, capture_output=True, text=True, timeout=1800, check=True)  # nosec B603
    count, seconds = re.search(r"([\d,]+) images embedded .* in ([\d.]+) s", done.stderr).groups()  # type: ignore[union-attr]
    busy = re.search(r"busy (\d+ %) of that time, in [\d,]+ batches of ([\d.]+) images", done.stderr)
    dtype = json.loads((out / "_manifest.json").read_text())["identity"]["dtype"]
    model = f"model busy {busy[1]}, batches of {busy[2]}" if busy else "no batches"
    return int(count.replace(",", "")) / max(float(seconds), 0.01), dtype, model  # (a smoke run's may print 0.00)


def run_http(files: list[bytes], env: dict[str, str], threads: int) -> tuple[float, str]:
    """(images/s, dtype) of the server embedding each file once, posted by a threaded client."""
    with vit_serve(env) as server, httpx.Client(timeout=120) as client:
        dtype = client.get(f"{server.url}/v1/models").json()["data"][0]["dtype"]

        def post(data: bytes) -> None:
            response = client.post(f"{server.url}/v1/embeddings", content=data, headers={"content-type": "image/jpeg"})
            response.raise_for_status()

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(post, files[:threads]))  # warm
            start = time.perf_counter()
            list(pool.map(post, files))
            return len(files) / (time.perf_counter() - start), dtype


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probes.embed", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--model", default="vit_small_patch16_224", help="a preset (random weights)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (eager: VIT_COMPILE=0, as the bare model)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="the bare model's timing, each round")
    parser.add_argument("--gpu-decode", action="store_true", help="also embed with VIT_GPU_DECODE=1 (on CUDA)")
    args = parser.parse_args(argv)
    print(f"{datetime.date.today()}, {machine()}, torch {torch.__version__}")
    names = ["embed", "bare", "http"] + (["embed+gpu-decode"] if args.gpu_decode else [])
    figures: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        save_native(root / "model", VisionTransformer(preset(args.model)), None, PreprocessConfig())
        files = [jpeg("224", i) for i in range(args.images)]
        for i, data in enumerate(files):
            (root / "images").mkdir(exist_ok=True)
            (root / "images" / f"{i:05d}.jpg").write_bytes(data)
        env = {
            "VIT_CHECKPOINT": str(root / "model"),
            "VIT_MODEL": args.model,
            "VIT_DTYPE": "auto",
            "VIT_DEVICE": args.device,
            "VIT_COMPILE": "0",
            "VIT_MAX_BATCH_SIZE": str(args.max_batch_size),
            "VIT_LOG_LEVEL": "warning",
        }
        for round_ in range(args.rounds):
            rate, dtype, busy = run_embed(root / "images", root / f"out-{round_}", env)
            figures["embed"].append(rate)
            if args.gpu_decode:
                gpu_env = env | {"VIT_GPU_DECODE": "1"}
                rate, _, busy_gpu = run_embed(root / "images", root / f"out-gpu-{round_}", gpu_env)
                busy += f"; with GPU decoding {busy_gpu}"
                figures["embed+gpu-decode"].append(rate)
            batch, precision = [args.max_batch_size], getattr(torch, dtype)
            bare = measure(args.model, args.device, precision, batch, compiled=False, seconds=args.seconds)
            figures["bare"].append(float(bare[0]["images_per_s_window"]))  # type: ignore[arg-type]
            rate, served_dtype = run_http(files, env, min(2 * args.max_batch_size, MAX_CLIENT_THREADS))
            figures["http"].append(rate)
            shown = ", ".join(f"{name} {values[-1]:.1f} images/s" for name, values in figures.items())
            median = float(bare[0]["images_per_s"])  # type: ignore[arg-type]
            print(f"round {round_ + 1} ({dtype}; the server chose {served_dtype}): {shown}")
            print(f"  bare model's median pass {median:.1f} images/s; embed: {busy}")
    for name, other in (("embed", "bare"), ("embed", "http"), ("embed+gpu-decode", "bare")):
        if name in figures:
            ratios = [e / o for e, o in zip(figures[name], figures[other], strict=True)]
            per_round = ", ".join(f"{r:.2f}" for r in ratios)
            print(f"{name} ÷ {other} per round {per_round}; median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
