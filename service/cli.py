"""`vit-serve` (also `python -m service`): flags mirror the VIT_* settings; flags win."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from types import FrameType

import uvicorn
from pydantic import ValidationError

from model.checkpoints import CheckpointError
from model.labels import LabelsError
from service.app import create_app
from service.engine import Engine
from service.http.server import raise_fd_limit, server_config
from service.lifecycle import ServiceState, drain
from service.logs import configure_logging
from service.settings import Settings, UnknownSetting, describe_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vit-serve", description="Serve a Vision Transformer over HTTP. Every flag is also a VIT_* variable."
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=name,
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            help=f"{field.description or name} (env VIT_{name.upper()})",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    try:
        settings = Settings(**args)
    except ValidationError as exc:
        print(f"vit-serve: {describe_error(exc)}", file=sys.stderr)
        return 2
    except UnknownSetting as exc:
        print(f"vit-serve: {exc}", file=sys.stderr)
        return 2
    log_config = configure_logging(settings.log_level)
    files = raise_fd_limit()
    if files < settings.max_connections + 256:
        logging.getLogger("service").warning(
            "only %d open files are allowed: VIT_MAX_CONNECTIONS=%d leaves too few for the rest",
            files,
            settings.max_connections,
        )
    try:  # load before serving, so that a bad checkpoint stops start-up with one clear line
        engine = Engine.from_settings(settings)
    except (CheckpointError, LabelsError, ValueError) as exc:
        print(f"vit-serve: cannot load the model: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, engine_factory=lambda _: engine)
    options = {"host": settings.host, "port": settings.port, "log_config": log_config, "access_log": False}
    config = server_config(app, settings, **options)
    DrainingServer(config, app.state.service).run()
    return 0


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, drain while still listening, then let uvicorn close.

    While the queue empties, readiness answers 503 `draining` (so load balancers stop sending)
    and requests that still arrive get 503 `not_ready` rather than a refused connection. Then
    uvicorn gives what is still unanswered (a body still arriving) one second before it cancels
    it, which answers it 503 too (see service/http/middleware.py): the whole shutdown takes at most
    VIT_SHUTDOWN_TIMEOUT_S and about a second. A second signal exits at once.
    """

    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.state = state
        self._draining: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is not None or self.should_exit:  # the second signal
            self.force_exit = True
        if self.force_exit or self.state.status != "ready":
            super().handle_exit(sig, frame)
            return
        loop = asyncio.get_event_loop()

        def start() -> None:
            self._draining = loop.create_task(drain(self.state))
            self._draining.add_done_callback(lambda _: super(DrainingServer, self).handle_exit(sig, frame))

        loop.call_soon_threadsafe(start)


if __name__ == "__main__":
    sys.exit(main())
