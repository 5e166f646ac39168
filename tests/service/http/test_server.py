"""The HTTP server's own bounds (service/http/server.py), over raw sockets on 127.0.0.1: request heads
bounded in size, header count and time, idle and slowloris connections closed, a cap on
connections that still lets health probes through, and JSON for every error it emits."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.service.servers import live_server, tiny_settings

# The idle deadline is past uvicorn's own default (5 s), which must not close a connection first.
LIMITS = {"max_header_bytes": 8192, "max_headers": 50, "header_timeout_s": 1.0, "keep_alive_s": 6.0}
LIMITS["max_connections"] = 300


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    with live_server(tiny_settings(**LIMITS)) as (url, _):
        yield url, int(url.rsplit(":", 1)[1])


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_all(sock: socket.socket, seconds: float = 10) -> bytes:
    """Everything until the server closes the connection (or `seconds` pass)."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed (or reset) this connection; False if it is still open."""
    sock.settimeout(1)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def json_error(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    return int(head.split()[1]), json.loads(body)["error"]["type"]


def test_an_oversized_head_gets_431_json_and_the_connection_closes(server: tuple[str, int]) -> None:
    with connect(server[1]) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        assert json_error(read_all(sock)) == (431, "request_header_fields_too_large")


def test_a_32_mib_header_stream_is_cut_off_near_the_limit(server: tuple[str, int]) -> None:
    sent = 0
    with connect(server[1]) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            while sent < 32 << 20:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass  # the server answered and closed: it stopped reading
        assert json_error(read_all(sock)) == (431, "request_header_fields_too_large")
    assert sent < 16 << 20  # the limit plus the loopback buffers, far below what the client tried


def test_too_many_header_fields_get_431(server: tuple[str, int]) -> None:
    with connect(server[1]) as sock:
        fields = b"".join(b"X-%d: 1\r\n" % i for i in range(60))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        assert json_error(read_all(sock)) == (431, "request_header_fields_too_large")


def test_a_malformed_request_gets_400_json(server: tuple[str, int]) -> None:
    with connect(server[1]) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n")
        assert json_error(read_all(sock)) == (400, "invalid_request")


def test_a_slowloris_head_is_answered_408_at_the_head_timeout(server: tuple[str, int]) -> None:
    with connect(server[1]) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        try:
            for _ in range(30):  # one more header line every 0.2 s, never the blank line that ends a head
                sock.sendall(b"X-A: b\r\n")
                time.sleep(0.2)
        except OSError:
            pass
        response = read_all(sock)
        elapsed = time.monotonic() - start
    assert json_error(response) == (408, "request_timeout")
    assert 0.9 < elapsed < 3


def test_an_idle_connection_is_closed_at_the_head_timeout(server: tuple[str, int]) -> None:
    with connect(server[1]) as sock:
        start = time.monotonic()
        assert read_all(sock) == b""  # closed without a word: no request ever started
        assert 0.9 < time.monotonic() - start < 3


def get_health(sock: socket.socket) -> None:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_head_begun_after_a_response_gets_the_head_timeout(server: tuple[str, int]) -> None:
    with connect(server[1]) as sock:
        get_health(sock)
        time.sleep(0.5)
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and nothing more
        response = read_all(sock)
    assert json_error(response) == (408, "request_timeout")
    assert 0.9 < time.monotonic() - start < 3


@pytest.mark.slow
def test_a_connection_idles_for_the_keep_alive_between_requests(server: tuple[str, int]) -> None:
    """Past the head timeout and uvicorn's 5 s, within VIT_KEEP_ALIVE_S: still usable; then closed."""
    with connect(server[1]) as sock:
        get_health(sock)
        time.sleep(5.5)
        get_health(sock)
        start = time.monotonic()
        assert read_all(sock) == b""
        assert 5.5 < time.monotonic() - start < 8


@pytest.mark.slow
def test_past_the_connection_cap_only_probes_are_served(server: tuple[str, int]) -> None:
    url, port = server
    idle = [connect(port) for _ in range(LIMITS["max_connections"] + 10)]  # none sends anything
    try:
        time.sleep(0.2)
        start = time.monotonic()
        with httpx.Client(base_url=url, timeout=1) as probe:  # a kubelet probe on a new connection
            assert probe.get("/readyz").status_code == 200
            assert probe.get("/healthz").status_code == 200
        assert time.monotonic() - start < 1
        with connect(port) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            assert json_error(read_all(sock)) == (503, "overloaded")
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{url}/v1/models").status_code == 200  # below the cap again


@pytest.mark.slow
def test_thousands_of_idle_connections_leave_readiness_answering(server: tuple[str, int]) -> None:
    """Past the cap, the oldest waiting connections make way for new ones; the rest time out."""
    url, port = server
    idle = []
    try:
        for _ in range(3000):
            idle.append(connect(port))
        time.sleep(0.2)
        for _ in range(5):
            assert httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        time.sleep(1.5)  # past the head timeout: the server closed every one of them
        assert all(closed_by_server(sock) for sock in idle)
    finally:
        for sock in idle:
            sock.close()
