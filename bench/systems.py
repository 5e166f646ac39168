"""Start and stop each system under test as its own process on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import httpx

SYSTEMS = ("vit-serve", "naive", "litserve")


@dataclass(frozen=True)
class Running:
    name: str
    url: str  # where requests are posted
    metrics_url: str | None  # vit-serve's /metrics, for its batch-size histogram
    pid: int  # the server's process, whose tree /proc reads for CPU
    ready_s: float  # from its start to its first healthy answer (model load, warm-up, compilation)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(
    name: str, model: str, max_batch_size: int, max_wait_ms: float, device: str, env: dict[str, str] | None = None
) -> Iterator[Running]:
    """Run `name` until the block ends; `env` adds to its environment (VIT_WORKERS, VIT_COMPILE, …)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    extra = env or {}
    env = {**os.environ, "BENCH_MODEL": model, **extra}
    if name == "vit-serve":
        env |= {
            "VIT_MODEL": model,
            "VIT_HOST": "127.0.0.1",
            "VIT_PORT": str(port),
            "VIT_DEVICE": device,
            "VIT_MAX_BATCH_SIZE": str(max_batch_size),
            "VIT_MAX_WAIT_MS": str(max_wait_ms),
            "VIT_MAX_QUEUE_SIZE": "100000",
            "VIT_LOG_LEVEL": "warning",
        } | extra
        cmd = [sys.executable, "-m", "service"]
        url, metrics_url = f"{base}/v1/classify?top_k=1", f"{base}/metrics"
        health = f"{base}/readyz"
    elif name == "naive":
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.peers.naive:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        url, metrics_url, health = f"{base}/predict", None, f"{base}/health"
    elif name == "litserve":
        cmd = [
            sys.executable,
            "-m",
            "bench.peers.lit",
            "--port",
            str(port),
            "--model",
            model,
            "--max-batch-size",
            str(max_batch_size),
            "--batch-timeout",
            str(max_wait_ms / 1000),
        ]
        url, metrics_url, health = f"{base}/predict", None, f"{base}/health"
    else:
        raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")
    # stderr to a file, not a pipe: worker processes may outlive the server. Its own process
    # group, so that stopping it also stops the workers it spawns (LitServe's).
    with tempfile.TemporaryFile("w+") as log:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        try:
            _wait_healthy(name, proc, health, log)
            yield Running(name, url, metrics_url, proc.pid, time.monotonic() - started)
        finally:
            _stop_group(proc)


def _wait_healthy(name: str, proc: subprocess.Popen[bytes], health: str, log: IO[str]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{name} exited: {log.read()[-2000:]}")
        try:
            if httpx.get(health, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not become healthy")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's whole process group; SIGKILL what is left after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
