"""A real `vit-serve` process: request ids in its logs; SIGTERM drains (readiness 503, new requests
refused with 503, everything queued answered) and exits within VIT_SHUTDOWN_TIMEOUT_S."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import httpx
import pytest

from tests.images import encode, gradient
from tests.service.servers import server_process

pytestmark = pytest.mark.e2e

PNG = encode(gradient(64, 64), "PNG")
# A model slow enough on the CPU (tens of ms a pass) that requests are still queued at SIGTERM.
SLOW = {"VIT_MODEL": "vit_small_patch16_224", "VIT_MAX_BATCH_SIZE": "1", "VIT_MAX_QUEUE_SIZE": "1000"}


async def queue_then_sigterm(url: str, proc, n: int) -> tuple[list[httpx.Response], dict[str, object]]:
    """Queue n requests, SIGTERM once the queue holds work, and look at the server while it drains."""
    limits = httpx.Limits(max_connections=n + 8)  # every request on its own connection, at once
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        post = {"content": PNG, "headers": {"content-type": "image/png"}}
        tasks = [asyncio.create_task(client.post("/v1/embeddings", **post)) for _ in range(n)]
        await until_queued(client, n // 2)
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
    with server_process(**SLOW, VIT_SHUTDOWN_TIMEOUT_S="60") as server:
        url, proc = server.url, server.proc
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
    assert "[trace-me-42] POST /v1/classify 200" in server.log
    assert "drained the queue" in server.log


def test_shutdown_is_bounded_by_the_timeout() -> None:
    with server_process(**SLOW, VIT_SHUTDOWN_TIMEOUT_S="1") as server:
        proc = server.proc
        responses, seen = asyncio.run(queue_then_sigterm(server.url, proc, 200))  # far more than 1 s of work
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert time.monotonic() - float(seen["sent"]) < 1 + 2.5  # the drain's bound, uvicorn's second, the exit
        statuses = {r.status_code for r in responses}
        assert statuses <= {200, 503} and 503 in statuses  # each got exactly one answer, none a 5xx crash
        assert all(r.json()["error"]["type"] == "not_ready" for r in responses if r.status_code == 503)
    assert "shutdown timeout" in server.log


def test_a_body_still_arriving_at_shutdown_gets_a_json_503() -> None:
    """uvicorn cancels what is unanswered when it stops; that request gets 503 not_ready, not a
    plain-text 500, and the whole shutdown fits in VIT_SHUTDOWN_TIMEOUT_S plus a second or so."""
    with server_process(VIT_MODEL="vit_test_tiny", VIT_SHUTDOWN_TIMEOUT_S="1", VIT_REQUEST_TIMEOUT_S="60") as server:
        proc = server.proc
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
            )
            sock.sendall(PNG[:10])  # and never the rest
            time.sleep(0.3)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"application/json" in head
        assert json.loads(body)["error"]["type"] == "not_ready"
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert time.monotonic() - sent < 1 + 2.5  # the drain's bound, uvicorn's second, and the exit


def test_a_second_signal_exits_at_once() -> None:
    with server_process(**SLOW, VIT_SHUTDOWN_TIMEOUT_S="60") as server:
        url, proc = server.url, server.proc

        async def load_then_two_signals() -> float:
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=80)) as client:
                post = {"content": PNG, "headers": {"content-type": "image/png"}}
                tasks = [asyncio.create_task(client.post("/v1/embeddings", **post)) for _ in range(64)]
                await until_queued(client, 32)
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)  # draining: a minute of work ahead
                second = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 30)
                exited = time.monotonic() - second
                await asyncio.gather(*tasks, return_exceptions=True)  # cut off: the operator asked for it
                return exited

        assert asyncio.run(load_then_two_signals()) < 1.5


async def until_queued(client: httpx.AsyncClient, n: int) -> None:
    for _ in range(3000):
        lines = (await client.get("/metrics")).text.splitlines()
        if next(float(x.split()[1]) for x in lines if x.startswith("vit_queue_depth ")) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {n} queued")
