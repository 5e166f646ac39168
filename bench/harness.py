"""The one harness the benchmarks and the tests' server helpers share: a server as its own process
on 127.0.0.1 (a free port; ready when its health URL answers 200; stopped with its whole process
group, workers and decode processes included), a closed-loop load on it (wrk where installed, a
compiled client that costs the server's cores little; else bench.load's Python client), and the
machine every figure is named with."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from bench.load import closed_loop
from bench.procfs import cpu_model, server_cpu_seconds

VIT_SERVE = [sys.executable, "-m", "service"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vit_serve_env(port: int, **vit: str) -> dict[str, str]:
    """This environment, with `python -m service` on 127.0.0.1:`port` and the VIT_* variables `vit`."""
    return {**os.environ, "VIT_HOST": "127.0.0.1", "VIT_PORT": str(port), **vit}


def wait_ready(health: str, proc: subprocess.Popen[Any], log: IO[str] | None = None, seconds: float = 300) -> None:
    """Until `health` answers 200; raises with the end of the server's log if it exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited ({proc.returncode}): {_tail(proc, log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(health, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{health} did not answer 200 within {seconds:.0f} s")


def _tail(proc: subprocess.Popen[Any], log: IO[str] | None) -> str:
    if log is not None:
        log.seek(0)
        return log.read()[-2000:]
    return proc.stderr.read()[-2000:] if proc.stderr else ""


def stop(proc: subprocess.Popen[Any], grace_s: float = 30) -> None:
    """SIGTERM to the server's process group (it drains); SIGKILL what is left after `grace_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class Server:
    url: str  # http://127.0.0.1:port
    port: int
    proc: subprocess.Popen[str]
    ready_s: float  # from its start to its first 200 (model load, warm-up, compilation)
    log: str = field(default="", repr=False)  # its stderr, once stopped

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.contextmanager
def run(
    cmd: list[str],
    port: int,
    env: dict[str, str] | None = None,
    health: str = "/readyz",
    cwd: Path | None = None,
    cpus: str | None = None,
    grace_s: float = 30,
) -> Iterator[Server]:
    """`cmd` (listening on `port`) in a process group of its own, pinned to `cpus` (taskset), until
    the block ends. Its stderr goes to a file, not a pipe: worker processes may outlive it."""
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log, text=True, start_new_session=True
        )
        server = Server(url, port, proc, 0.0)
        try:
            wait_ready(url + health, proc, log)
            server.ready_s = time.monotonic() - started
            yield server
        finally:
            stop(proc, grace_s)
            log.seek(0)
            server.log = log.read()


@contextlib.contextmanager
def vit_serve(
    vit: dict[str, str], cwd: Path | None = None, cpus: str | None = None, grace_s: float = 30
) -> Iterator[Server]:
    """`python -m service` (from the checkout `cwd`, default this one) with the VIT_* variables
    `vit`, once ready."""
    port = free_port()
    with run(VIT_SERVE, port, vit_serve_env(port, **vit), "/readyz", cwd, cpus, grace_s) as server:
        yield server


def load(url: str, body: bytes | None, concurrency: int, seconds: float, cpus: str | None = None) -> dict[str, Any]:
    """requests, requests/s, errors and p50/p99 ms of one closed-loop run: GET, or POST of a JPEG."""
    if not shutil.which("wrk"):
        result = closed_loop(url, body, 1, concurrency, warmup_s=0.0, duration_s=seconds, content_type="image/jpeg")
        return {
            "requests": result.requests,
            "requests_per_s": result.requests / seconds,
            "errors": result.errors,
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
        }
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency"]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    with tempfile.TemporaryDirectory() as tmp:
        if body is not None:
            (Path(tmp) / "body.jpg").write_bytes(body)
            script = Path(tmp) / "post.lua"
            script.write_text(
                'wrk.method = "POST"\nwrk.headers["Content-Type"] = "image/jpeg"\n'
                f'local f = io.open("{Path(tmp) / "body.jpg"}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
            )
            cmd += ["-s", str(script)]
        out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": int(_find(r"(\d+) requests in", out)),
        "requests_per_s": float(_find(r"Requests/sec:\s+([\d.]+)", out)),
        "errors": int(errors.group(1)) if errors else 0,
        "p50_ms": _ms(_find(r"50%\s+([\d.]+\w+)", out)),
        "p99_ms": _ms(_find(r"99%\s+([\d.]+\w+)", out)),
    }


def measured_load(
    pid: int, url: str, body: bytes | None, concurrency: int, seconds: float, cpus: str | None = None
) -> tuple[dict[str, Any], float, float]:
    """One `load` run, and the CPU ms per request it cost the server `pid`: its own processes',
    and its decode processes'."""
    main_before, decode_before = server_cpu_seconds(pid)
    result = load(url, body, concurrency, seconds, cpus)
    main_after, decode_after = server_cpu_seconds(pid)
    per_request = 1000 / max(1, result["requests"])
    return result, per_request * (main_after - main_before), per_request * (decode_after - decode_before)


def machine() -> dict[str, Any]:
    """The CPU, its cores and the Python every figure is named with."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"wrk's output has no {pattern!r}: {text[-500:]}")
    return match.group(1)


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
