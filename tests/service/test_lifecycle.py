"""A real `vit-serve` process: request ids in its logs; SIGTERM drains (readiness 503, new requests
refused with 503, everything queued answered) and exits within VIT_SHUTDOWN_TIMEOUT_S."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from tests.images import encode, gradient
from tests.service.conftest import free_port, start_server, wait_ready

PNG = encode(gradient(64, 64), "PNG")
# A model slow enough on the CPU (tens of ms a pass) that requests are still queued at SIGTERM.
SLOW = {"VIT_MODEL": "vit_small_patch16_224", "VIT_MAX_BATCH_SIZE": "1", "VIT_MAX_QUEUE_SIZE": "1000"}


async def queue_then_sigterm(url: str, proc, n: int) -> tuple[list[httpx.Response], dict[str, object]]:
    """Queue n requests, SIGTERM once the queue holds work, and look at the server while it drains."""
    limits = httpx.Limits(max_connections=n + 8)  # every request on its own connection, at once
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        post = {"content": PNG, "headers": {"content-type": "image/png"}}
        tasks = [asyncio.create_task(client.post("/v1/embeddings", **post)) for _ in range(n)]
        for _ in range(3000):
            lines = (await client.get("/metrics")).text.splitlines()
            depth = next(float(x.split()[1]) for x in lines if x.startswith("vit_queue_depth "))
            if depth >= n // 2:
                break
            await asyncio.sleep(0.01)
        assert depth >= n // 2, f"only {depth} queued"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.05)
        seen: dict[str, object] = {"sent": sent}
        async with httpx.AsyncClient(base_url=url, timeout=10) as other:  # a new connection, as a probe would
            ready = await other.get("/readyz")
            late = await other.post("/v1/embeddings", **post)
        seen["readyz"] = (ready.status_code, ready.json())
        seen["late"] = (late.status_code, late.json()["error"]["type"])
        return list(await asyncio.gather(*tasks)), seen


def test_sigterm_drains_and_logs_carry_request_ids() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port, **SLOW, VIT_SHUTDOWN_TIMEOUT_S="60")
    try:
        wait_ready(url, proc)
        tagged = httpx.post(
            f"{url}/v1/classify",
            content=PNG,
            timeout=30,
            headers={"content-type": "image/png", "x-request-id": "trace-me-42"},
        )
        assert tagged.headers["x-request-id"] == "trace-me-42"
        responses, seen = asyncio.run(queue_then_sigterm(url, proc, 32))
        assert seen["readyz"] == (503, {"status": "draining"})
        assert seen["late"] == (503, "not_ready")
        assert [r.status_code for r in responses] == [200] * 32  # every accepted request answered
        # uvicorn re-raises the SIGTERM it caught once its graceful shutdown is complete
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, logs = proc.communicate(timeout=30)
    assert "[trace-me-42] POST /v1/classify 200" in logs
    assert "drained the queue" in logs


def test_shutdown_is_bounded_by_the_timeout() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port, **SLOW, VIT_SHUTDOWN_TIMEOUT_S="1")
    try:
        wait_ready(url, proc)
        responses, seen = asyncio.run(queue_then_sigterm(url, proc, 200))  # far more than 1 s of work
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert time.monotonic() - float(seen["sent"]) < 1 + 10  # the bound, plus start-up of the exit
        statuses = {r.status_code for r in responses}
        assert statuses <= {200, 503} and 503 in statuses  # each got exactly one answer, none a 5xx crash
        assert all(r.json()["error"]["type"] == "not_ready" for r in responses if r.status_code == 503)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, logs = proc.communicate(timeout=30)
    assert "shutdown timeout" in logs
