"""A real `vit-serve` process: request ids in its logs, and a SIGTERM that answers everything queued."""

from __future__ import annotations

import asyncio
import signal

import httpx

from tests.images import encode, gradient
from tests.service.conftest import free_port, start_server, wait_ready


def test_sigterm_drains_queued_requests_and_logs_carry_request_ids() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # a model slow enough on the CPU (~tens of ms a pass) that requests are still queued at SIGTERM
    proc = start_server(port, VIT_MODEL="vit_small_patch16_224", VIT_MAX_BATCH_SIZE="2", VIT_SHUTDOWN_TIMEOUT_S="60")
    try:
        wait_ready(url, proc)
        png = encode(gradient(64, 64), "PNG")
        tagged = httpx.post(
            f"{url}/v1/classify",
            content=png,
            headers={"content-type": "image/png", "x-request-id": "trace-me-42"},
            timeout=30,
        )
        assert tagged.headers["x-request-id"] == "trace-me-42"

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                tasks = [
                    asyncio.create_task(
                        client.post("/v1/embeddings", content=png, headers={"content-type": "image/png"})
                    )
                    for _ in range(24)
                ]
                while True:  # SIGTERM once the queue holds work
                    depth = [
                        line
                        for line in (await client.get("/metrics")).text.splitlines()
                        if line.startswith("vit_queue_depth ")
                    ]
                    if depth and float(depth[0].split()[1]) > 0:
                        break
                    await asyncio.sleep(0.01)
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks)

        responses = asyncio.run(burst())
        assert [r.status_code for r in responses] == [200] * 24  # every accepted request answered
        # uvicorn re-raises the SIGTERM it caught once its graceful shutdown is complete
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, logs = proc.communicate(timeout=30)
    assert "[trace-me-42] POST /v1/classify 200" in logs
    assert "drained the queue" in logs
