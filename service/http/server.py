"""The HTTP server: uvicorn's configuration, and its httptools protocol hardened for a public endpoint.

uvicorn accepts request heads of any size, times out neither a connection that never sends a
request nor one that sends its head a byte at a time, and answers malformed requests in plain
text. `protocol(settings)` adds what nginx does by default: a bound on the request head (its
bytes and its header count: 431), a deadline for each request head (`VIT_HEADER_TIMEOUT_S`,
from connecting or from the head's first byte: slowloris connections are closed), an idle
deadline between requests (`VIT_KEEP_ALIVE_S`, longer than the pools in front keep theirs), a
cap on open connections past which only health probes are served (`VIT_MAX_CONNECTIONS`:
others get 503 and the connection closes), and JSON bodies for every error it emits itself.
service/processes.py lifts the soft file-descriptor limit, so that a flood of connections meets
the cap rather than the process's 1,024 descriptors, and the kubelet's probes still get through.
`DrainingServer` is uvicorn's server, drained on SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from types import FrameType
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import HeadersTooLarge, InvalidRequest, Overloaded, RequestTimeout, ServiceError
from service.http.error_handlers import error_response
from service.lifecycle import ServiceState, drain
from service.settings import Settings

log = logging.getLogger(__name__)

PROBES = frozenset({b"/healthz", b"/readyz", b"/v2/health/live", b"/v2/health/ready"})
_PAST_CAPACITY_HEAD_TIMEOUT_S = 1.0  # a probe sends its request at once
_RESERVE = 64  # connections past the cap that may wait for their head (see past_cap)


# After the drain, what is still unanswered (a body still arriving) gets this long before uvicorn
# cancels it, which answers it 503 (service/http/middleware.py): shutdown = drain + this + the exit.
SERVER_GRACE_S = 1


def server_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for `app` with the service's protocol; `options` pass through.
    uvicorn's own keep-alive timer (5 s by default) gets the protocol's idle deadline, so that it
    never closes a connection first."""
    return uvicorn.Config(
        app,
        http=protocol(settings),
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # a float works: call_later
        timeout_graceful_shutdown=SERVER_GRACE_S,
        **options,
    )


def protocol(settings: Settings) -> type[HttpToolsProtocol]:
    """The protocol class for these settings (uvicorn instantiates it per connection); one per
    server, since it also holds the server's connections waiting past the cap."""
    return type("BoundedHttpProtocol", (BoundedHttpProtocol,), {"settings": settings, "past_cap": {}})


class BoundedHttpProtocol(HttpToolsProtocol):
    settings: Settings
    # Connections past VIT_MAX_CONNECTIONS whose head has not arrived, oldest first: at most
    # _RESERVE are kept, so a flood of idle connections holds a bounded number of descriptors
    # and a probe that connects always gets a place (the oldest waiting one is closed for it).
    past_cap: dict[BoundedHttpProtocol, None]

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_pending, self.head_bytes, self.header_count = True, 0, 0
        self.refusal: ServiceError | None = None
        self.past_capacity = len(self.connections) > self.settings.max_connections
        if self.past_capacity:
            self.past_cap[self] = None
            if len(self.past_cap) > _RESERVE:
                oldest = next(iter(self.past_cap))
                del self.past_cap[oldest]
                oldest.transport.abort()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self.past_cap.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; while a head is incomplete, no more than the head limit at a time,
        so that an oversized head is refused without being held."""
        if self.idle and data:  # the next request has begun: its head gets the head deadline
            self._arm_head_timer()
        limit = self.settings.max_header_bytes
        while self.head_pending and data and not self.transport.is_closing():
            room = limit - self.head_bytes + 1
            piece, data = data[:room], data[room:]
            self.head_bytes += len(piece)
            super().data_received(piece)
            if self.head_pending and self.head_bytes > limit and not self.transport.is_closing():
                log.warning("refused a request head over %d bytes", limit)
                self._respond(HeadersTooLarge(f"the request head is over {limit} bytes"))
                return
        if data and not self.transport.is_closing():
            super().data_received(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.settings.max_headers:
            self.refusal = HeadersTooLarge(f"over {self.settings.max_headers} header fields")
            raise ValueError("too many headers")  # stops the parser: see send_400_response
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.head_pending = False
        self._cancel_head_timer()
        self.past_cap.pop(self, None)
        if self.past_capacity and httptools.parse_url(self.url).path not in PROBES:
            self.refusal = Overloaded("too many open connections; retry shortly")
            raise ValueError("past capacity")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.head_pending, self.head_bytes, self.header_count = True, 0, 0  # what follows is the next head
        if self.cycle is not None and self.cycle.response_complete:  # answered before its body was read
            self._arm_head_timer(idle=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.head_pending and not self.transport.is_closing():  # idle until the next request begins
            self._arm_head_timer(idle=True)

    def send_400_response(self, msg: str) -> None:
        """Where uvicorn answers a request it cannot parse (or one refused above): JSON, then close."""
        self._respond(self.refusal or InvalidRequest("malformed HTTP request"))

    def _respond(self, error: ServiceError) -> None:
        """The service's own error response (app.error_response), written by hand: no request
        reached the app. The connection closes after it."""
        response = error_response(error, "")
        head = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}".encode()]
        head += [name + b": " + value for name, value in response.raw_headers]
        head.append(b"connection: close")
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + response.body)
        self.transport.close()

    def _arm_head_timer(self, idle: bool = False) -> None:
        """Idle (between requests): VIT_KEEP_ALIVE_S; else the head deadline. Past the cap, 1 s."""
        self._cancel_head_timer()
        self.idle = idle
        if self.past_capacity:
            seconds = _PAST_CAPACITY_HEAD_TIMEOUT_S
        else:
            seconds = self.settings.keep_alive_s if idle else self.settings.header_timeout_s
        self.head_timer = self.loop.call_later(seconds, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timeout(self) -> None:
        """No complete request head in time: answer 408 if part of one came, else just close."""
        self.head_timer = None
        if self.transport.is_closing() or not self.head_pending:
            return
        if self.head_bytes:
            self._respond(RequestTimeout("the request head did not arrive in time"))
        else:
            self.transport.close()


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
