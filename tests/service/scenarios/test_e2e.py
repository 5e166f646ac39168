"""The app over real HTTP (uvicorn on 127.0.0.1), and the `vit-serve` command."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import httpx
import numpy as np

from tests.images import encode, gradient
from tests.service.servers import controlled, live_server, tiny_settings


def histogram_counts(metrics_text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of a Prometheus histogram, by upper bound."""
    pattern = re.compile(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', re.MULTILINE)
    return {float(le): float(v) for le, v in pattern.findall(metrics_text)}


def test_concurrent_clients_are_batched_and_batched_answers_equal_single_ones() -> None:
    images = [encode(gradient(24 + i, 40 - i), "PNG") for i in range(32)]

    def slowed(settings):  # a forward pass as long as a real model's on a CPU, whatever the machine
        engine = controlled(settings)
        engine.delay_s = 0.02
        return engine

    with live_server(tiny_settings(max_batch_size=16, max_wait_ms=20), slowed) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as client:
            alone = [
                client.post("/v1/embeddings", content=d, headers={"content-type": "image/png"}).json() for d in images
            ]

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                return await asyncio.gather(
                    *(c.post("/v1/embeddings", content=d, headers={"content-type": "image/png"}) for d in images)
                )

        together = asyncio.run(burst())
        metrics = httpx.get(f"{url}/metrics").text
    assert all(r.status_code == 200 for r in together)
    for single, batched in zip(alone, together, strict=True):
        np.testing.assert_allclose(batched.json()["data"][0]["embedding"], single["data"][0]["embedding"], atol=1e-5)
    buckets = histogram_counts(metrics, "vit_batch_size")
    total = buckets[float("inf")]
    assert total < 64  # 64 images in all: fewer passes than images
    assert buckets[1.0] < total  # some pass had more than one image


def test_cli_refuses_a_bad_setting_with_one_line() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "service", "--max-batch-size", "0"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "VIT_MAX_BATCH_SIZE" in lines[0]


def test_cli_refuses_a_bad_environment_value() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "service"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"VIT_DTYPE": "int8", "PATH": ""},
    )
    assert run.returncode == 2 and "VIT_DTYPE" in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_cli_help_lists_every_setting() -> None:
    run = subprocess.run([sys.executable, "-m", "service", "--help"], capture_output=True, text=True, timeout=120)
    for flag in ("--max-batch-size", "--max-wait-ms", "--checkpoint", "--api-keys", "--resize-mode", "--port"):
        assert flag in run.stdout


def test_cli_refuses_a_queue_smaller_than_a_request() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "service", "--max-queue-size", "8"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    assert "VIT_MAX_QUEUE_SIZE" in run.stderr and len(run.stderr.strip().splitlines()) == 1
