"""The process group (VIT_WORKERS=2, or VIT_ENGINE_PROCESS=true): real `python -m service`
processes on 127.0.0.1.

Front-ends answer exactly as one process does, their images share forward passes, /metrics adds
up every process, a killed front-end is replaced, and the engine's death stops the service
cleanly. (The drain on SIGTERM is tests/service/test_lifecycle.py, which CI also runs with
VIT_WORKERS=2.)
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bench.harness import free_port, wait_ready
from bench.procfs import process_tree
from service.processes import CRASH_LOOP_S
from tests.images import encode, gradient, photo
from tests.service.servers import server_process

pytestmark = pytest.mark.slow

PNG = {"content-type": "image/png"}
# A model slow enough on the CPU (hundreds of ms for a batch of 16) to queue requests behind it.
SLOW = {"VIT_MODEL": "vit_small_patch16_224", "VIT_DTYPE": "float32", "VIT_MAX_BATCH_SIZE": "16"}


def children(pid: int) -> dict[str, int]:
    """The group's processes by name: vit-engine, vit-front-end-1, …"""
    named = {}
    for child, _ in process_tree(pid):
        try:
            name = Path(f"/proc/{child}/comm").read_text().strip()
        except OSError:
            continue
        if name.startswith("vit-"):
            named[name] = child
    return named


def served_by(log: str, request_id: str) -> str:
    """Which front-end's log line answered `request_id`."""
    match = re.search(rf"\((front-end \d)\) \[{re.escape(request_id)}\]", log)
    assert match, f"no log line for {request_id}"
    return match.group(1)


def pngs(n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    """`n` different images as multipart file parts."""
    return [("image", (f"{i}.png", encode(gradient(30 + i, 20), "PNG"), "image/png")) for i in range(n)]


def named_once_started(pid: int, expected: set[str], seconds: float = 10.0) -> set[str]:
    """The group's process names, polled until they are `expected`: the service turns ready with
    its first front-end, and each process names itself as it starts."""
    for _ in range(int(seconds / 0.05)):
        if (found := set(children(pid))) == expected:
            return found
        time.sleep(0.05)
    return set(children(pid))


def metric(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_every_process_layout_answers_exactly_as_one_process() -> None:
    images = [encode(photo(), "JPEG", quality=90), encode(gradient(50, 40), "PNG")]
    paths = ["/v1/classify?top_k=3", "/v1/embeddings", "/v1/features?layer=-2&tokens=patch"]
    layouts = {  # the VIT_* settings, and the group's processes they must start
        "one process": ({"VIT_WORKERS": "1"}, set()),
        "one front-end and an engine process": ({"VIT_ENGINE_PROCESS": "true"}, {"vit-engine", "vit-front-end-1"}),
        "two front-ends": ({"VIT_WORKERS": "2"}, {"vit-engine", "vit-front-end-1", "vit-front-end-2"}),
    }
    answers = {}
    for name, (layout, processes) in layouts.items():
        env = {**layout, "VIT_DTYPE": "float32", "VIT_LOG_LEVEL": "warning"}
        with server_process(**env) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            assert named_once_started(server.proc.pid, processes) == processes, name
            answers[name] = [client.post(path, content=image).json() for path in paths for image in images]
            answers[name].append(client.get("/v1/models").json())
    assert answers["one front-end and an engine process"] == answers["one process"]
    assert answers["two front-ends"] == answers["one process"]


def test_front_ends_share_forward_passes_and_metrics_add_up_across_processes() -> None:
    with server_process(VIT_WORKERS="2", **SLOW) as server:
        url = server.url

        async def load() -> tuple[list[str], list[str], dict[str, float]]:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                before = (await client.get("/metrics")).text
                blocker = asyncio.create_task(client.post("/v1/classify", files=pngs(16)))
                decoded = metric(before, "vit_preprocess_duration_seconds_count") + 16
                await until_metric(client, "vit_preprocess_duration_seconds_count", lambda v: v >= decoded)
                await asyncio.sleep(0.05)  # its batch has started: an idle engine takes what comes at once
                singles = [
                    asyncio.create_task(client.post("/v1/classify", content=encode(gradient(20, 20 + i)), headers=PNG))
                    for i in range(16)
                ]
                responses = [await blocker, *await asyncio.gather(*singles)]
                assert [r.status_code for r in responses] == [200] * 17
                bad = [await client.post("/v1/classify", content=b"not an image", headers=PNG) for _ in range(3)]
                assert [r.status_code for r in bad] == [400] * 3
                after = (await client.get("/metrics")).text
            batches = {
                name: metric(after, name) - metric(before, name)
                for name in ("vit_batch_size_count", "vit_batch_size_sum")
            }
            scrapes = []
            for _ in range(12):  # each on a new connection: the kernel spreads them over the front-ends
                async with httpx.AsyncClient(base_url=url, timeout=30) as fresh:
                    scrape = await fresh.get("/metrics")
                totals = [
                    metric(scrape.text, f'vit_requests_total{{endpoint="/v1/classify",status="{s}"}}')
                    for s in (200, 400)
                ]
                assert totals == [17, 3]
                assert metric(scrape.text, 'vit_images_total{endpoint="/v1/classify"}') == 32
                scrapes.append(scrape.headers["x-request-id"])
            return [r.headers["x-request-id"] for r in responses[1:]], scrapes, batches

        singles, scrapes, batches = asyncio.run(load())
        # the blocker's 16 images, then all 16 singles together: exactly two forward passes
        assert batches == {"vit_batch_size_count": 2, "vit_batch_size_sum": 32}
    assert {served_by(server.log, rid) for rid in singles} == {"front-end 1", "front-end 2"}
    assert {served_by(server.log, rid) for rid in scrapes} == {"front-end 1", "front-end 2"}


def test_a_killed_front_end_is_replaced_and_the_service_keeps_answering() -> None:
    with server_process(VIT_WORKERS="2", VIT_MODEL="vit_test_tiny") as server:
        time.sleep(CRASH_LOOP_S)  # a front-end that dies sooner after starting stops the service instead
        old = children(server.proc.pid)
        os.kill(old["vit-front-end-1"], signal.SIGKILL)
        for _ in range(600):
            now = children(server.proc.pid)
            if now.get("vit-front-end-1") not in (None, old["vit-front-end-1"]):
                break
            time.sleep(0.05)
        assert now["vit-engine"] == old["vit-engine"] and now["vit-front-end-2"] == old["vit-front-end-2"]
        wait_ready(f"{server.url}/readyz", server.proc)
        time.sleep(2)  # the replacement connects to the engine and starts its decode processes
        for _ in range(20):  # new connections, spread over both front-ends
            with httpx.Client(base_url=server.url, timeout=30) as client:
                answer = client.post("/v1/classify", content=encode(gradient()), headers=PNG)
                assert answer.status_code == 200, answer.text
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
    assert "front-end 1 exited (status -9): starting another" in server.log


def test_when_the_engine_dies_waiting_requests_get_503_and_the_service_stops() -> None:
    with server_process(VIT_WORKERS="2", **SLOW) as server:
        group = children(server.proc.pid)

        async def kill_engine_under_load() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                files = pngs(16)
                waiting = [asyncio.create_task(client.post("/v1/embeddings", files=files)) for _ in range(3)]
                await until_metric(client, "vit_queue_depth", lambda v: v >= 16)
                os.kill(group["vit-engine"], signal.SIGKILL)
                return list(await asyncio.gather(*waiting))

        responses = asyncio.run(kill_engine_under_load())
        assert [(r.status_code, r.json()["error"]["type"]) for r in responses] == [(503, "not_ready")] * 3
        assert server.proc.wait(60) == 1
    for pid in group.values():
        assert not Path(f"/proc/{pid}").exists()
    assert "the engine process exited (status -9): stopping the service" in server.log


def test_a_model_that_does_not_load_stops_the_group_with_one_clear_line(tmp_path: Path) -> None:
    broken = tmp_path / "model.safetensors"
    broken.write_bytes(b"not safetensors")
    env = {**os.environ, "VIT_WORKERS": "2", "VIT_CHECKPOINT": str(broken), "VIT_HOST": "127.0.0.1"}
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "service"],
        env={**env, "VIT_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "vit-serve: cannot load the model:" in run.stderr
    # The front-ends, still waiting for the engine, are stopped at once: not after a drain of
    # VIT_SHUTDOWN_TIMEOUT_S (30 s) that they, in their start-up, would never begin.
    assert time.monotonic() - start < 20


async def until_metric(client: httpx.AsyncClient, name: str, condition: Callable[[float], bool]) -> None:
    for _ in range(3000):
        if condition(metric((await client.get("/metrics")).text, name)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never met the condition")
