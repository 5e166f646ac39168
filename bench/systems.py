"""Each system under test of `python -m bench`, run by bench.harness: vit-serve and its peers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bench.harness import VIT_SERVE, free_port, run, vit_serve_env

SYSTEMS = ("vit-serve", "naive", "litserve")


@dataclass(frozen=True)
class Running:
    name: str
    url: str  # where requests are posted
    metrics_url: str | None  # vit-serve's /metrics, for its batch-size histogram
    pid: int  # the server's process, whose tree /proc reads for CPU
    ready_s: float  # from its start to its first healthy answer (model load, warm-up, compilation)


@contextmanager
def serve(
    name: str, model: str, max_batch_size: int, max_wait_ms: float, device: str, env: dict[str, str] | None = None
) -> Iterator[Running]:
    """Run `name` until the block ends; `env` adds to its environment (VIT_WORKERS, VIT_COMPILE, …)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    extra = env or {}
    environ = {**os.environ, "BENCH_MODEL": model, **extra}
    if name == "vit-serve":
        vit = {
            "VIT_MODEL": model,
            "VIT_DEVICE": device,
            "VIT_MAX_BATCH_SIZE": str(max_batch_size),
            "VIT_MAX_WAIT_MS": str(max_wait_ms),
            "VIT_MAX_QUEUE_SIZE": "100000",
            "VIT_LOG_LEVEL": "warning",
        }
        cmd, environ = VIT_SERVE, vit_serve_env(port, **(vit | extra))
        url, metrics_url, health = f"{base}/v1/classify?top_k=1", f"{base}/metrics", "/readyz"
    elif name == "naive":
        cmd = [sys.executable, "-m", "uvicorn", "bench.peers.naive:app", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--log-level", "warning"]
        url, metrics_url, health = f"{base}/predict", None, "/health"
    elif name == "litserve":
        cmd = [sys.executable, "-m", "bench.peers.lit", "--port", str(port), "--model", model]
        cmd += ["--max-batch-size", str(max_batch_size), "--batch-timeout", str(max_wait_ms / 1000)]
        url, metrics_url, health = f"{base}/predict", None, "/health"
    else:
        raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")
    with run(cmd, port, environ, health) as server:
        yield Running(name, url, metrics_url, server.pid, server.ready_s)
