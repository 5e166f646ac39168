"""`vit-serve` (also `python -m service`): flags mirror the VIT_* settings; flags win."""

from __future__ import annotations

import argparse
import asyncio
import sys
from types import FrameType

import uvicorn
from pydantic import ValidationError

from model.checkpoints import CheckpointError
from model.labels import LabelsError
from service.app import configure_logging, create_app, drain
from service.engine import Engine
from service.settings import Settings, describe_error
from service.state import ServiceState


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
    log_config = configure_logging(settings.log_level)
    try:  # load before serving, so that a bad checkpoint stops start-up with one clear line
        engine = Engine.from_settings(settings)
    except (CheckpointError, LabelsError, ValueError) as exc:
        print(f"vit-serve: cannot load the model: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, engine_factory=lambda _: engine)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=log_config,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s) + 1,
    )
    DrainingServer(config, app.state.service).run()
    return 0


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, drain while still listening, then let uvicorn close.

    While the queue empties, readiness answers 503 `draining` (so load balancers stop sending)
    and requests that still arrive get 503 `not_ready` rather than a refused connection.
    A second signal exits at once.
    """

    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.state = state
        self._draining: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is not None or self.state.status != "ready":
            super().handle_exit(sig, frame)
            return
        loop = asyncio.get_event_loop()

        def start() -> None:
            self._draining = loop.create_task(drain(self.state))
            self._draining.add_done_callback(lambda _: super(DrainingServer, self).handle_exit(sig, frame))

        loop.call_soon_threadsafe(start)


if __name__ == "__main__":
    sys.exit(main())
