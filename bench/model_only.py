"""The model alone: images/s and MFU over batch sizes and dtypes, eager and compiled, and int8.

`python -m bench.model_only --model vit_small_patch16_224 --batch 1,16 --rounds 2` times each
variant (`float32`, `bfloat16`, with `+compile`, and `int8+compile`: VIT_QUANTIZE's model)
round by round, interleaved, on random weights, and prints images/s with each variant's ratio to
the first variant (float32 eager) in the same round, and each size's first pass (which compiles
its graph, for a compiled variant: the start-up cost of one batch-size bucket). int8's fidelity is tested, not timed
(tests/model/test_quantize.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch

from bench.procfs import cpu_model
from model.config import ViTConfig, preset
from model.quantize import quantize_int8
from model.vit import VisionTransformer


def flops_per_image(cfg: ViTConfig) -> float:
    """Multiply-adds ×2 of one forward pass: patch embedding, attention, MLP, head."""
    tokens = cfg.num_patches + 1
    d, m = cfg.embed_dim, cfg.mlp_dim
    per_block = 4 * tokens * d * d + 2 * tokens * tokens * d + 2 * tokens * d * m
    macs = cfg.num_patches * cfg.patch_size**2 * cfg.in_chans * d + cfg.depth * per_block + d * cfg.num_classes
    return 2.0 * macs


def measure(
    model_name: str,
    device: str,
    dtype: torch.dtype,
    batch_sizes: list[int],
    compiled: bool,
    seconds: float = 2.0,
    peak_tflops: float | None = None,
    int8: bool = False,
) -> list[dict[str, object]]:
    cfg = preset(model_name)
    torch.manual_seed(0)
    model = VisionTransformer(cfg).eval().to(device=device, dtype=dtype)
    if int8:
        quantize_int8(model)
    forward = torch.compile(model, dynamic=False) if compiled else model
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device, dtype=dtype)
        with torch.inference_mode():
            begin = time.perf_counter()
            forward(x)  # the first pass at this size: compiles its graph, when compiled
            _sync(device)
            first_s = time.perf_counter() - begin
            for _ in range(2):
                forward(x)
            _sync(device)
            passes: list[float] = []
            start = time.perf_counter()
            while time.perf_counter() - start < seconds or len(passes) < 5:
                begin = time.perf_counter()
                forward(x)
                _sync(device)
                passes.append(time.perf_counter() - begin)
        batch_s = statistics.median(passes)  # the median pass: robust to a noisy, shared machine
        per_s = batch / batch_s
        flops = flops_per_image(cfg) * per_s
        rows.append(
            {
                "model": model_name,
                "device": device,
                "dtype": "int8" if int8 else str(dtype).removeprefix("torch."),
                "compiled": compiled,
                "batch_size": batch,
                "images_per_s": per_s,
                "images_per_s_window": batch * len(passes) / sum(passes),  # stalls included, as a job's are
                "batch_ms": 1000 * batch_s,
                "first_pass_s": first_s,
                "passes": len(passes),
                "tflops": flops / 1e12,
                "mfu": flops / (peak_tflops * 1e12) if peak_tflops else None,
            }
        )
    return rows


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.model_only", description=__doc__)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--variants", default="float32,float32+compile,bfloat16,bfloat16+compile,int8+compile")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak, for MFU")
    parser.add_argument("--out", type=Path, default=None, help="also write every row to this JSON file")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    machine = f"{datetime.date.today()}, {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(machine + (f", {gpu}" if gpu else ""))
    rows: list[dict[str, object]] = []
    for round_ in range(args.rounds):
        base: dict[int, float] = {}
        for variant in args.variants.split(","):
            name, _, compiled = variant.partition("+")
            int8 = name == "int8"
            dtype = torch.float32 if int8 else getattr(torch, name)
            for row in measure(
                args.model, args.device, dtype, batches, bool(compiled), args.seconds, args.peak_tflops, int8=int8
            ):
                batch, rate = int(row["batch_size"]), float(row["images_per_s"])  # type: ignore[call-overload, arg-type]
                first = float(row["first_pass_s"])  # type: ignore[arg-type]
                base.setdefault(batch, rate)  # the first variant is the reference
                mfu = f", MFU {float(row['mfu']):.1%}" if row["mfu"] is not None else ""  # type: ignore[arg-type]
                print(
                    f"round {round_ + 1} {variant:18} batch {batch:3}: {rate:7.1f} images/s, × {rate / base[batch]:.2f}"
                    f" (first pass {first:.1f} s){mfu}"
                )
                rows.append({"round": round_ + 1, "variant": variant, **row})
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "gpu": gpu, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
