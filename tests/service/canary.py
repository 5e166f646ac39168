"""A canary client that watches a real server while it is attacked: /healthz and a small classify
request from an address of its own, and the resident memory of the server's processes."""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx

from bench.procfs import process_tree
from tests.service import bombs
from tests.service.servers import server_process

# The canary's own loopback address (Linux routes 127.0.0.0/8 to lo), as another client's would
# be: the decode processes take turns by client address (service/decoding.py).
CANARY = "127.0.0.2"
PNG = bombs.small_png()


@dataclass
class Watched:
    url: str
    pid: int
    canary_s: float  # the small classify request's usual latency (median when idle)
    idle_rss: int


@dataclass
class Observed:
    result: object
    seconds: float
    healthz_max_s: float
    canary_max_s: float
    rss_above_idle: int


@contextlib.contextmanager
def watched_server(**env: str) -> Iterator[Watched]:
    """`python -m service` with these VIT_* variables, warmed up, its idle canary latency measured."""
    with server_process(**env) as running:
        with canary_client(running.url, timeout=30) as client:
            for _ in range(20):
                classify(client)  # warm-up
            canary = statistics.median(classify(client) for _ in range(20))
        time.sleep(0.5)
        yield Watched(running.url, running.proc.pid, canary, tree_rss(running.proc.pid))


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its children (the decode processes), in bytes."""
    return sum(int(fields[21]) for _, fields in process_tree(pid)) * os.sysconf("SC_PAGE_SIZE")


def canary_client(url: str, timeout: float) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=timeout, transport=httpx.HTTPTransport(local_address=CANARY))


def classify(client: httpx.Client) -> float:
    start = time.perf_counter()
    response = client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    return time.perf_counter() - start


def under_attack(server: Watched, attack: Callable[[], object]) -> Observed:
    """Run `attack` on a thread while a canary probes the server, and watch its memory."""
    box: dict[str, object] = {}

    def run() -> None:
        start = time.perf_counter()
        try:
            box["result"] = attack()
        except Exception as exc:  # reported below, where the test asserts on it
            box["result"] = exc
        box["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=run)
    healthz, canary, rss = [0.0], [0.0], [0]
    with canary_client(server.url, timeout=10) as client:
        thread.start()
        while thread.is_alive() or len(canary) < 4:
            start = time.perf_counter()
            assert client.get("/healthz", timeout=1).status_code == 200
            healthz.append(time.perf_counter() - start)
            canary.append(classify(client))
            rss.append(tree_rss(server.pid) - server.idle_rss)
        thread.join()
        assert client.get("/readyz").status_code == 200
        classify(client)  # and still correct: see test_the_server_is_correct_after_the_attacks
    return Observed(box["result"], float(box["seconds"]), max(healthz), max(canary), max(rss))  # type: ignore[arg-type]
