"""The model alone: images/s and MFU over batch sizes and dtypes, eager and compiled."""

from __future__ import annotations

import statistics
import time

import torch

from model.config import ViTConfig, preset
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
) -> list[dict[str, object]]:
    cfg = preset(model_name)
    model = VisionTransformer(cfg).eval().to(device=device, dtype=dtype)
    forward = torch.compile(model, dynamic=False) if compiled else model
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device, dtype=dtype)
        with torch.inference_mode():
            for _ in range(3):
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
                "dtype": str(dtype).removeprefix("torch."),
                "compiled": compiled,
                "batch_size": batch,
                "images_per_s": per_s,
                "batch_ms": 1000 * batch_s,
                "passes": len(passes),
                "tflops": flops / 1e12,
                "mfu": flops / (peak_tflops * 1e12) if peak_tflops else None,
            }
        )
    return rows


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
