"""Nothing lost under load: a real server process, concurrent clients, broken images, hang-ups."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import numpy as np
import pytest

from bench.harness import free_port, wait_ready
from tests.images import encode, gradient
from tests.service.servers import start_server

REQUESTS, CONCURRENCY = 2000, 32


def metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE))


@pytest.mark.slow
@pytest.mark.e2e
def test_every_request_gets_exactly_one_right_answer() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port, VIT_MODEL="vit_test_tiny", VIT_MAX_BATCH_SIZE="16", VIT_LOG_LEVEL="warning")
    images = [encode(gradient(20 + 3 * i, 50 - 2 * i), "PNG") for i in range(8)]
    post = {"headers": {"content-type": "image/png"}}
    try:
        wait_ready(f"{url}/readyz", proc)
        expected = [
            np.array(httpx.post(f"{url}/v1/embeddings", content=d, **post).json()["data"][0]["embedding"])
            for d in images
        ]
        outcomes: dict[str, int] = {"ok": 0, "overloaded": 0, "malformed": 0, "hung_up": 0, "hangup_answered": 0}
        failures: list[str] = []

        async def drive() -> None:
            limits = httpx.Limits(max_connections=CONCURRENCY + 8)
            slots = asyncio.Semaphore(CONCURRENCY)
            async with (
                httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client,
                httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=0.001), limits=limits) as impatient,
            ):

                async def one(i: int) -> None:
                    async with slots:
                        kind = "malformed" if i % 10 == 0 else "hangup" if i % 10 == 5 else "good"
                        data = images[i % 8][: 40 if kind == "malformed" else None]
                        try:
                            r = await (impatient if kind == "hangup" else client).post(
                                "/v1/embeddings", content=data, **post
                            )
                        except httpx.ReadTimeout:  # sent in full, then gave up waiting: a hang-up
                            outcomes["hung_up"] += 1
                            return
                        if r.status_code >= 500 and r.status_code != 503:
                            failures.append(f"{i}: {r.status_code} {r.text}")
                        elif kind == "malformed":
                            ok = r.status_code == 400 and r.json()["error"]["type"] == "invalid_image"
                            outcomes["malformed"] += ok
                            ok or failures.append(f"{i}: malformed got {r.status_code}")
                        elif r.status_code == 503:
                            ok = r.json()["error"]["type"] == "overloaded"
                            outcomes["overloaded"] += ok
                            ok or failures.append(f"{i}: 503 {r.text}")
                        else:
                            got = np.array(r.json()["data"][0]["embedding"])
                            if r.status_code != 200 or not np.allclose(got, expected[i % 8], atol=1e-5):
                                failures.append(f"{i}: wrong answer")
                            outcomes["hangup_answered" if kind == "hangup" else "ok"] += 1

                await asyncio.gather(*(one(i) for i in range(REQUESTS)))

        start = time.monotonic()
        asyncio.run(drive())
        elapsed = time.monotonic() - start
        assert not failures, failures[:5]
        assert sum(outcomes.values()) == REQUESTS
        assert outcomes["malformed"] == REQUESTS // 10
        for _ in range(100):  # hang-ups still queued are dropped as their disconnects arrive
            text = httpx.get(f"{url}/metrics").text
            if metric(text, "vit_queue_depth") == 0:
                break
            time.sleep(0.05)
        answered = metric(text, 'vit_requests_total{endpoint="/v1/embeddings",status="200"}')
        all_answers = sum(
            float(v)
            for v in re.findall(
                r'^vit_requests_total\{endpoint="/v1/embeddings",status="\d+"\} (\S+)$', text, re.MULTILINE
            )
        )
        server_5xx = sum(
            float(v)
            for v in re.findall(
                r'^vit_requests_total\{endpoint="[^"]+",status="5(?!03)\d\d"\} (\S+)$', text, re.MULTILINE
            )
        )
        assert metric(text, "vit_queue_depth") == 0
        assert all_answers == REQUESTS + len(images)  # exactly one answer per request, the probes included
        assert answered >= outcomes["ok"] + outcomes["hangup_answered"] + len(images)
        assert server_5xx == 0, [
            x for x in text.splitlines() if x.startswith("vit_requests_total") and 'status="5' in x
        ]
        assert httpx.get(f"{url}/readyz").status_code == 200
        print(
            f"{REQUESTS} requests at concurrency {CONCURRENCY} in {elapsed:.1f} s: {outcomes}, "
            f"lost 0, dropped {metric(text, 'vit_dropped_images_total'):.0f}"
        )
    finally:
        proc.terminate()
        print("server log (its end):", proc.communicate(timeout=60)[1][-4000:])  # shown if the test fails
