"""service/http/inputs.py on its own: each body form into images and parameters, its limits, and
the disconnect signal, through starlette's real Request over an ASGI receive channel (the HTTP
suites, tests/service/http/test_v1.py and test_bad_input.py, send the same over uvicorn)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterable

import pytest
from starlette.requests import Request

from service.errors import PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from service.http.inputs import client_gone, load_json, read_images
from tests.service.servers import tiny_settings

PNG = b"\x89PNG\r\n\x1a\n not really a png: decoding is not this module's business"


def request(body: bytes, content_type: str, chunks: int = 1, then: Iterable[dict] = (), delay: float = 0) -> Request:
    """A request whose body arrives in `chunks` pieces, `delay` seconds apart, then whatever `then` holds."""
    size = -(-len(body) // chunks) or 1
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1} for i, piece in enumerate(pieces)
    ] + list(then)

    async def receive() -> dict:
        await asyncio.sleep(delay)
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # nothing more ever comes
        return {}

    headers = [(b"content-type", content_type.encode())]
    return Request({"type": "http", "method": "POST", "headers": headers, "path": "/", "query_string": b""}, receive)


def soon() -> float:
    return time.monotonic() + 10


async def test_a_raw_body_is_one_image() -> None:
    parsed = await read_images(request(PNG, "image/png", chunks=3), tiny_settings(), soon())
    assert parsed.inputs == [PNG] and parsed.params == {} and not parsed.openai


async def test_multipart_parts_named_image_are_the_images_in_order() -> None:
    boundary = "b0undary"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + PNG
        + bytes([i])
        + b"\r\n"
        for i in range(3)
    )
    body = parts + f"--{boundary}--\r\n".encode()
    parsed = await read_images(request(body, f"multipart/form-data; boundary={boundary}"), tiny_settings(), soon())
    assert parsed.inputs == [PNG + bytes([i]) for i in range(3)]


async def test_json_carries_base64_and_data_urls_and_its_fields_are_parameters() -> None:
    encoded = base64.b64encode(PNG).decode()
    body = json.dumps({"images": [encoded, f"data:image/png;base64,{encoded}"], "top_k": 3}).encode()
    parsed = await read_images(request(body, "application/json"), tiny_settings(), soon())
    assert parsed.inputs == [PNG, PNG] and parsed.params == {"top_k": 3} and not parsed.openai
    openai = json.dumps({"model": "m", "input": [f"data:image/png;base64,{encoded}"]}).encode()
    parsed = await read_images(request(openai, "application/json"), tiny_settings(), soon())
    assert parsed.inputs == [PNG] and parsed.openai


async def test_an_unknown_content_type_is_refused_before_the_body_is_read() -> None:
    with pytest.raises(UnsupportedMediaType, match="text/plain is not accepted"):
        await read_images(request(PNG, "text/plain"), tiny_settings(), soon())


async def test_a_body_over_the_limit_is_refused_while_it_streams() -> None:
    settings = tiny_settings(max_body_bytes=4096)
    with pytest.raises(PayloadTooLarge, match="over the limit of 4096 bytes"):
        await read_images(request(b"x" * 10_000, "image/png", chunks=10), settings, soon())


async def test_a_body_that_does_not_arrive_by_the_deadline_times_out() -> None:
    slow = request(PNG, "image/png", chunks=2, delay=0.2)
    with pytest.raises(RequestTimeout):
        await read_images(slow, tiny_settings(), time.monotonic() + 0.1)


def test_json_is_counted_before_it_is_parsed() -> None:
    with pytest.raises(PayloadTooLarge, match="VIT_MAX_JSON_VALUES"):
        load_json(b"[" + b"0," * 100 + b"0]", max_values=50)
    assert load_json(b'{"a": [1, 2]}', max_values=50) == {"a": [1, 2]}


async def test_client_gone_returns_when_the_client_disconnects() -> None:
    gone = request(b"", "image/png", then=[{"type": "http.disconnect"}])
    await gone.body()
    await asyncio.wait_for(client_gone(gone), 1)
    staying = request(b"", "image/png")
    await staying.body()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client_gone(staying), 0.1)
