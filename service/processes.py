"""The service's processes: one (the default), or a supervised group (VIT_WORKERS=N > 1, or
VIT_ENGINE_PROCESS=true with one front-end).

    clients ──► :8000, one SO_REUSEPORT socket per front-end: the kernel spreads connections
                 │
      ┌──────────┼──────────────┐
  front-end 1  front-end 2 … front-end N    HTTP, keys, parsing, validation, decoding (each
      │          │              │           with its own decode processes)
      └── shared memory (pixels in, results out) + a Unix socket (small messages) ──┐
                                                                                     ▼
                                                   engine process: the model, the one batcher

Images from every front-end ride in the same forward passes. The supervisor (the process that
was started, PID 1 in a container) holds the port, starts the engine and the front-ends, and
watches them:
- SIGTERM (or SIGINT): every front-end drains as a single process does (readiness 503, every
  admitted request answered, within VIT_SHUTDOWN_TIMEOUT_S), then the engine stops; exit 0.
- A front-end dies: it is replaced on the same port (its open connections are lost); one that
  dies within `CRASH_LOOP_S` of starting takes the service down instead (exit 1).
- The engine dies: every front-end's readiness turns 503 and what waits for it is answered
  503; the supervisor stops the front-ends and exits 1 (2 if the model never loaded), so the
  container is restarted. Never a half-alive service.
Children run in process groups of their own (a terminal's Ctrl-C reaches the supervisor
alone, which then stops them in order) and die with the supervisor (PR_SET_PDEATHSIG).
`/metrics` in any front-end shows the whole group (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from service.logs import configure_logging
from service.settings import Settings

if TYPE_CHECKING:
    from service.engine import Engine

# The supervisor imports only the standard library and the settings (not torch and the app, which
# take hundreds of MB resident): what serves is imported where it runs, in `serve` and in the children.

log = logging.getLogger("service")

CRASH_LOOP_S = 10.0  # a front-end that dies sooner after starting is not restarted
_STOP_WAIT_S = 10.0  # past a drain (for uvicorn's grace second and the exit), for the engine to stop
_BACKLOG = 2048
# Signals this close to the first are the same request (`timeout` signals its child and then
# the child's process group, for one): only a later one means "stop now".
_SAME_SIGNAL_S = 0.1


def serve(settings: Settings) -> int:
    """Serve until stopped; the exit status (0 after a drain, 1 a failure, 2 a model that does
    not load)."""
    log_config = configure_logging(settings.log_level)
    files = raise_fd_limit()
    if files < settings.max_connections + 256:
        log.warning(
            "only %d open files are allowed: VIT_MAX_CONNECTIONS=%d leaves too few for the rest",
            files,
            settings.max_connections,
        )
    if settings.grouped:
        try:
            group = Group(settings)
        except OSError as exc:  # the port is taken, or the host is not this machine's
            print(f"vit-serve: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
            return 1
        return group.run()
    from service.app import create_app
    from service.engine.handle import in_process
    from service.http.server import DrainingServer, server_config

    engine = load_engine(settings)  # before serving, so that a bad checkpoint stops start-up
    if engine is None:
        return 2
    app = create_app(settings, in_process(lambda _: engine))
    options = {"host": settings.host, "port": settings.port, "log_config": log_config, "access_log": False}
    DrainingServer(server_config(app, settings, **options), app.state.service).run()
    return 0


def load_engine(settings: Settings) -> Engine | None:
    """The model these settings name, or None after one clear line on stderr."""
    from model.labels import LabelsError
    from model.weights import CheckpointError
    from service.engine import Engine

    try:
        return Engine.from_settings(settings)
    except (CheckpointError, LabelsError, ValueError) as exc:
        print(f"vit-serve: cannot load the model: {exc}", file=sys.stderr)
        return None


# ------------------------------------------------------------------------- the supervisor


@dataclass
class Group:
    """The supervisor of one engine process and `settings.workers` front-ends."""

    settings: Settings
    front_ends: dict[int, BaseProcess] = field(default_factory=dict)
    started: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Bound, never listening: holds the port (port 0 picks one) for the front-ends' sockets.
        # First, so that a port that is taken leaves nothing behind.
        self.holder = reuseport_socket(self.settings.host, self.settings.port)
        self.port = self.holder.getsockname()[1]
        self.context = multiprocessing.get_context("spawn")
        self.run_dir = Path(tempfile.mkdtemp(prefix="vit-serve-"))
        self.engine_socket = str(self.run_dir / "engine.sock")
        metrics_dir = self.run_dir / "metrics"
        metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # inherited by every child
        self.signals, self._signalled = os.pipe()
        self.engine: BaseProcess | None = None
        self.stopping_since = 0.0

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            engine = self.engine = self._spawn(_engine_main, "vit-engine", self.settings, self.engine_socket)
            for index in range(1, self.settings.workers + 1):
                self._start_front_end(index)
            log.info("%d front-ends on port %d, one engine process", self.settings.workers, self.port)
            return self._watch(engine)
        finally:
            self._kill_all()
            self.holder.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        os.write(self._signalled, b"s")

    def _spawn(self, target: Any, name: str, *args: Any) -> BaseProcess:
        process = self.context.Process(target=target, name=name, args=args)
        process.start()
        return process

    def _start_front_end(self, index: int) -> None:
        args = (self.settings, self.engine_socket, self.port, index)
        self.front_ends[index] = self._spawn(_front_end_main, f"vit-front-end-{index}", *args)
        self.started[index] = time.monotonic()

    def _watch(self, engine: BaseProcess) -> int:
        """Until a signal (drain: 0) or the engine's death (1, or 2 if it never listened)."""
        while True:
            waiting = [self.signals, engine.sentinel, *(p.sentinel for p in self.front_ends.values())]
            ready = multiprocessing.connection.wait(waiting)
            if self.signals in ready:
                os.read(self.signals, 64)
                self.stopping_since = time.monotonic()
                log.info("stopping: the front-ends drain, then the engine stops")
                return self._stop(0)
            if not engine.is_alive():
                log.critical("the engine process exited (status %s): stopping the service", engine.exitcode)
                if os.path.exists(self.engine_socket):
                    return self._stop(1)
                # It never listened: the front-ends are still waiting for it, and listen only once
                # connected, so they hold no request; in their start-up they would not see SIGTERM.
                front_ends = [p for p in self.front_ends.values() if p.is_alive()]
                for process in front_ends:
                    _signal(process, signal.SIGKILL)
                self._wait_for(front_ends, _STOP_WAIT_S)
                return 2
            for index, process in list(self.front_ends.items()):
                if process.is_alive():
                    continue
                _forget(process)
                if time.monotonic() - self.started[index] < CRASH_LOOP_S:
                    log.critical("front-end %d exited %s after starting: stopping the service", index, process.exitcode)
                    return self._stop(1)
                log.error("front-end %d exited (status %s): starting another", index, process.exitcode)
                self._start_front_end(index)

    def _stop(self, status: int) -> int:
        """SIGTERM the front-ends and wait for their drain, then the engine; a second signal
        kills everything at once."""
        front_ends = [p for p in self.front_ends.values() if p.is_alive()]
        for process in front_ends:
            _signal(process, signal.SIGTERM)
        drain_s = self.settings.shutdown_timeout_s + _STOP_WAIT_S
        if not self._wait_for(front_ends, drain_s):
            return status
        if self.engine is not None and self.engine.is_alive():
            _signal(self.engine, signal.SIGTERM)
            self._wait_for([self.engine], _STOP_WAIT_S)
        return status

    def _wait_for(self, processes: list[BaseProcess], seconds: float) -> bool:
        """Wait for `processes` to exit; False if a second signal came first."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            alive = [p.sentinel for p in processes if p.is_alive()]  # read once: one may exit meanwhile
            if not alive:
                break
            if self.signals in multiprocessing.connection.wait([self.signals, *alive], deadline - time.monotonic()):
                os.read(self.signals, 64)
                if time.monotonic() - self.stopping_since > _SAME_SIGNAL_S:
                    log.warning("a second signal: stopping at once")
                    return False
        return True

    def _kill_all(self) -> None:
        for process in [*self.front_ends.values(), self.engine]:
            if process is not None and process.is_alive():
                process.kill()
            if process is not None:
                process.join(_STOP_WAIT_S)
                _forget(process)


def _signal(process: BaseProcess, sig: int) -> None:
    if process.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)


def _forget(process: BaseProcess) -> None:
    """Drop a dead process's live gauges from the group's metrics."""
    from prometheus_client import multiprocess

    if process.pid is not None and not process.is_alive():
        multiprocess.mark_process_dead(process.pid)


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one (children inherit it), so that a flood
    of connections meets VIT_MAX_CONNECTIONS rather than 1,024 descriptors; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def reuseport_socket(host: str, port: int) -> socket.socket:
    passive = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = passive[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


# --------------------------------------------------------------------------- the children


def _as_child(process: str, settings: Settings) -> dict[str, Any]:
    """A child's set-up: a process group of its own, death with the supervisor, a name that
    `ps -o comm` and /proc/<pid>/comm show ("vit-engine", "vit-front-end-2"), logging."""
    os.setpgid(0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the supervisor died before prctl
        sys.exit(1)
    libc.prctl(15, ("vit-" + process.replace(" ", "-")).encode()[:15])  # PR_SET_NAME
    return configure_logging(settings.log_level, process)


def _front_end_main(settings: Settings, engine_socket: str, port: int, index: int) -> None:
    import torch

    from service.app import create_app
    from service.engine.remote import engine_process
    from service.http.server import DrainingServer, server_config

    log_config = _as_child(f"front-end {index}", settings)  # its file limit: the supervisor's, raised
    torch.set_num_threads(1)  # a front-end computes nothing: no OpenMP team to spin on the cores
    app = create_app(settings, engine_process(engine_socket))
    sock = reuseport_socket(settings.host, port)
    sock.listen(_BACKLOG)
    config = server_config(app, settings, log_config=log_config, access_log=False)
    DrainingServer(config, app.state.service).run(sockets=[sock])


def _engine_main(settings: Settings, engine_socket: str) -> None:
    import torch

    from service.engine.device import resolve_device
    from service.engine.remote import serve_engine

    _as_child("engine", settings)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor stops the engine, last
    torch.set_num_threads(settings.resolve(resolve_device(settings.device).type).engine_threads)
    engine = load_engine(settings)
    if engine is None:
        sys.exit(2)
    sys.exit(serve_engine(engine, settings, engine_socket))
