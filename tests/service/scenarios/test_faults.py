"""Faults over real HTTP: clients that hang up, and a batch loop that dies."""

from __future__ import annotations

import asyncio
import socket

from tests.images import encode, gradient
from tests.service.servers import controlled, serve, tiny_settings, until

PNG = encode(gradient(), "PNG")


def dropped(app) -> float:
    return app.state.service.metrics.dropped._value.get()


async def test_a_client_that_hangs_up_is_dropped_and_never_computed() -> None:
    async with serve(tiny_settings(max_batch_size=1), controlled) as (app, client):
        engine, batcher = app.state.service.engine.engine, app.state.service.engine.batcher
        warmup = len(engine.batch_sizes)
        engine.gate.clear()
        running = asyncio.create_task(client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"}))
        await until(lambda: batcher.in_flight == 1)
        host, port = str(client.base_url).removeprefix("http://").rstrip("/").split(":")
        sockets = []
        for _ in range(3):  # queued behind the running batch (on the CPU, one batch is in flight)
            sock = socket.create_connection((host, int(port)))
            sock.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: %d\r\n\r\n" % len(PNG) + PNG
            )
            sockets.append(sock)
        await until(lambda: batcher.in_flight == 1 and batcher.queue_depth == 3)
        for sock in sockets:
            sock.close()  # the clients give up
        await until(lambda: batcher.queue_depth == 0)
        engine.gate.set()
        assert (await running).status_code == 200
        await until(lambda: batcher.in_flight == 0)
        assert sum(engine.batch_sizes[warmup:]) == 1  # only the request that stayed was computed
        assert dropped(app) == 3
        assert (await client.get("/readyz")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'vit_requests_total{endpoint="/v1/classify",status="499"} 3.0' in metrics
        assert "vit_queue_depth 0.0" in metrics


async def test_a_dead_batch_loop_turns_readiness_red() -> None:
    async with serve(tiny_settings()) as (app, client):
        batcher = app.state.service.engine.batcher

        async def broken() -> list:
            raise RuntimeError("a bug in the batch loop")

        batcher._next_batch = broken  # the loop's own code fails on its next iteration
        # the iteration already waiting serves this one; the loop dies right after
        first = await client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
        assert first.status_code == 200
        await until(lambda: not batcher.running)
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (503, {"status": "failed"})
        after = await client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
        assert (after.status_code, after.json()["error"]["type"]) == (503, "not_ready")
        assert (await client.get("/healthz")).status_code == 200  # alive, but not ready: no green lie
