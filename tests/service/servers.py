"""Running the real app: in process over ASGI, or under uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import httpx
import torch
import uvicorn
from fastapi import FastAPI

from bench.harness import VIT_SERVE, Server, vit_serve, vit_serve_env
from service.app import create_app
from service.engine import BatchOutput, Engine
from service.engine.handle import in_process
from service.http.server import server_config
from service.settings import Settings


def tiny_settings(**overrides) -> Settings:
    """The random-weight test preset, isolated from any VIT_* environment or .env file."""
    # float32: the tests compare numbers; VIT_DTYPE=auto is tested in tests/service/engine/test_precision.py.
    # The CPU on every host: on a GPU host "auto" would compile on CUDA; tests/model/test_cuda.py covers that.
    values = {
        "model": "vit_test_tiny",
        "device": "cpu",
        "max_batch_size": 8,
        "max_wait_ms": 2.0,
        "dtype": "float32",
    } | overrides
    return Settings(_env_file=None, **values)


class ControlledEngine(Engine):
    """The real engine with a gate, a delay and an injectable failure around its forward pass:
    the "deliberately slow model" of the overload, deadline and fault tests."""

    gate: threading.Event
    delay_s: float = 0.0
    fail: bool = False
    batch_sizes: list[int]
    threads: set[str]  # the threads its forward passes ran on

    def forward(self, pixels: torch.Tensor, hidden_layers: Sequence[int] = ()) -> BatchOutput:
        self.threads.add(threading.current_thread().name)
        self.gate.wait(30)
        if self.fail:
            raise RuntimeError("injected failure")
        time.sleep(self.delay_s)
        self.batch_sizes.append(len(pixels))
        return super().forward(pixels, hidden_layers)


def controlled(settings: Settings) -> ControlledEngine:
    engine = Engine.from_settings(settings)
    engine.__class__ = ControlledEngine
    assert isinstance(engine, ControlledEngine)
    engine.gate = threading.Event()
    engine.gate.set()
    engine.batch_sizes = []
    engine.threads = set()
    return engine


@contextlib.asynccontextmanager
async def serve(
    settings: Settings,
    engine_factory: Callable[[Settings], Engine] = Engine.from_settings,
    *,
    over: str = "http",
    wait_ready: bool = True,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan running and a client: over real HTTP (uvicorn on 127.0.0.1)
    or, for unit tests, over the ASGI transport."""
    if over == "http":
        with live_server(settings, engine_factory, wait_ready=wait_ready) as (url, app):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                yield app, client
        return
    app = create_app(settings, in_process(engine_factory))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if wait_ready:
                await asyncio.to_thread(_wait_ready, app)
            yield app, client


def _wait_ready(app: FastAPI) -> None:
    for _ in range(600):
        if app.state.service.status != "loading":
            break
        time.sleep(0.05)
    assert app.state.service.status == "ready"


@contextlib.contextmanager
def live_server(
    settings: Settings, engine_factory: Callable[[Settings], Engine] = Engine.from_settings, wait_ready: bool = True
) -> Iterator[tuple[str, FastAPI]]:
    """uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL once started (and ready)."""
    app = create_app(settings, in_process(engine_factory))
    config = server_config(app, settings, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started
        if wait_ready:
            _wait_ready(app)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)


def start_server(port: int, **env: str) -> subprocess.Popen[str]:
    """`python -m service` in its own process on 127.0.0.1:port, with VIT_* variables from `env`."""
    return subprocess.Popen(VIT_SERVE, env=vit_serve_env(port, **env), stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def server_process(**env: str) -> Iterator[Server]:
    """`python -m service` on a free port with these VIT_* variables, once ready (bench.harness);
    killed at the end if it is still running, and its log kept."""
    with vit_serve(env, grace_s=0) as server:
        yield server


async def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Wait for a condition on the server's state (polled every 10 ms), or fail."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")
