"""A closed-loop load generator: `concurrency` clients spread over several processes, each
posting, waiting for the answer and posting again, so the clients are not what limits."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass

import httpx
import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    images_per_request: int
    requests: int
    errors: int
    seconds: float
    images_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _client_process(
    url: str,
    body: bytes | None,
    headers: dict[str, str],
    clients: int,
    warmup_s: float,
    duration_s: float,
    out: mp.Queue,  # type: ignore[type-arg]
) -> None:
    async def run() -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        start = time.perf_counter()
        measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def user() -> None:
                nonlocal errors
                while (now := time.perf_counter()) < stop_at:
                    try:
                        if body is None:
                            response = await client.get(url)
                        else:
                            response = await client.post(url, content=body, headers=headers)
                        ok = response.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    if now >= measure_from:
                        latencies.append(time.perf_counter() - now) if ok else None
                        errors += not ok

            await asyncio.gather(*(user() for _ in range(clients)))
        return latencies, errors

    out.put(asyncio.run(run()))


def closed_loop(
    url: str,
    body: bytes | None,
    images_per_request: int,
    concurrency: int,
    *,
    warmup_s: float = 1.0,
    duration_s: float = 5.0,
    processes: int = 4,
    content_type: str = "application/json",
) -> LoadResult:
    """Measure throughput and latency at a fixed number of clients, after a warm-up; each posts
    `body` (as `content_type`), or GETs `url` when `body` is None."""
    processes = max(1, min(processes, concurrency))
    share = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    headers = {"content-type": content_type}
    workers = [
        ctx.Process(target=_client_process, args=(url, body, headers, n, warmup_s, duration_s, queue)) for n in share
    ]
    for w in workers:
        w.start()
    results = [queue.get(timeout=warmup_s + duration_s + 120) for _ in workers]
    for w in workers:
        w.join(30)
    latencies = np.array([x for lat, _ in results for x in lat]) * 1000
    errors = sum(e for _, e in results)
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99]) if len(latencies) else (float("nan"),) * 3
    return LoadResult(
        concurrency,
        images_per_request,
        len(latencies),
        errors,
        duration_s,
        len(latencies) * images_per_request / duration_s,
        float(p50),
        float(p90),
        float(p99),
    )
