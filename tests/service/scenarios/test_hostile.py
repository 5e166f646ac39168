"""Hostile clients, against a real `vit-serve` process: every attack gets its 4xx JSON error (or a
correct 200) in bounded time, while a canary client notices nothing (/healthz within 1 s, a small
classify request within its usual latency plus a little), the memory of the server's processes
stays within its bound above idle, and the server is ready and correct afterwards. Every attack on
the decoders is also sent eight times at once. The canary connects from 127.0.0.2, the attacks
from 127.0.0.1: the decode processes take turns by client address (service/decoding.py)."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service import bombs
from tests.service.canary import Observed, Watched, under_attack, watched_server

pytestmark = pytest.mark.e2e

MiB = 1 << 20
DECODE_MEMORY = 256 * MiB
ENV = {
    "VIT_MODEL": "vit_test_tiny",
    "VIT_RESIZE_MODE": "crop",  # the mode whose intermediate an extreme aspect ratio used to blow up
    "VIT_DECODE_PROCESSES": "2",
    "VIT_DECODE_TIMEOUT_S": "0.5",
    "VIT_DECODE_MEMORY_BYTES": str(DECODE_MEMORY),
    "VIT_LOG_LEVEL": "warning",
}
# What one hostile request may add to the server's memory: one busy decode process at its limit
# (a request holds all processes but one), plus the body and its parsed form in the server.
MAX_BODY = 20 * MiB
MEMORY_BOUND = DECODE_MEMORY + 8 * MAX_BODY
CANARY_SLACK_S = 0.5
PNG = bombs.small_png()


@pytest.fixture(scope="module")
def server() -> Iterator[Watched]:
    with watched_server(**ENV) as watched:
        yield watched


def check(
    server: Watched,
    seen: Observed,
    status: int,
    error_type: str | None,
    slack_s: float = CANARY_SLACK_S,
    memory_bound: int = MEMORY_BOUND,
) -> None:
    responses = seen.result if isinstance(seen.result, list) else [seen.result]
    for response in responses:
        assert isinstance(response, httpx.Response), response
        assert response.status_code == status, response.text[:300]
        if status >= 400:  # /v1's error object, or /v2's {"error": message}
            error = response.json()["error"]
            assert error["type"] == error_type if error_type else isinstance(error, str)
    print(
        f"answered {status} in {seen.seconds:.2f} s; canary max {seen.canary_max_s * 1000:.0f} ms "
        f"(idle {server.canary_s * 1000:.0f} ms), healthz max {seen.healthz_max_s * 1000:.0f} ms, "
        f"memory above idle {seen.rss_above_idle / MiB:.0f} MiB"
    )
    assert seen.healthz_max_s < 1
    assert seen.canary_max_s < server.canary_s + slack_s
    assert seen.rss_above_idle < memory_bound


def post(server: Watched, path: str, content: bytes, content_type: str, **headers: str | bytes) -> Callable[[], object]:
    return lambda: httpx.post(
        server.url + path, content=content, headers={"content-type": content_type, **headers}, timeout=60
    )


def rgba_png() -> bytes:
    return bombs.png(Image.new("RGBA", (6000, 6000), (1, 2, 3, 4)))


def multipart_bomb() -> bytes:
    """The RLE BMP as a file part of a multipart body (boundary "b")."""
    head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.bmp"\r\n\r\n'
    return head + bombs.rle8_bmp(3000, 2000) + b"\r\n--b--\r\n"


def as_json(value: object) -> bytes:
    return json.dumps(value).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v2_binary(header: dict[str, object], data: bytes) -> tuple[bytes, str, dict[str, str]]:
    """Body, content type and headers of a v2 request with binary tensor data."""
    head = as_json(header)
    return head + data, "application/octet-stream", {"inference-header-content-length": str(len(head))}


DEEP = b"[" * 100_000 + b"]" * 100_000
INFER = "/v2/models/vit_test_tiny/infer"
# (name, path, body, content type, extra headers, status, error type); each answered in bounded time.
Body = bytes | Callable[[], bytes]  # the costly ones are built when their test runs
Attack = tuple[str, str, Body, str, dict[str, str | bytes], int, str | None]
ATTACKS: list[Attack] = [
    # 1. parser depth and encoding
    ("deep JSON, classify", "/v1/classify", DEEP, "application/json", {}, 400, "invalid_request"),
    (
        "deep JSON in a field",
        "/v1/classify",
        b'{"images": [], "top_k": ' + DEEP + b"}",
        "application/json",
        {},
        400,
        "invalid_request",
    ),
    (
        "deep JSON, OpenAI embeddings",
        "/v1/embeddings",
        b'{"model": "m", "input": ' + DEEP + b"}",
        "application/json",
        {},
        400,
        "invalid_request",
    ),
    ("deep JSON, v2", INFER, DEEP, "application/json", {}, 400, None),
    (
        "deep JSON, v2 data",
        INFER,
        b'{"inputs": [{"name": "pixels", "shape": [1], "datatype": "UINT8", "data": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}]}",
        "application/json",
        {},
        400,
        None,
    ),
    ("lone surrogate in the v2 id", INFER, b'{"id": "\\ud800", "inputs": []}', "application/json", {}, 400, None),
    (
        "lone surrogate in a key",
        "/v1/classify",
        b'{"images": [], "\\udfff": 1}',
        "application/json",
        {},
        400,
        "invalid_request",
    ),
    (
        "lone surrogate in OpenAI's model",
        "/v1/embeddings",
        b'{"model": "\\ud83d", "input": ["x"]}',
        "application/json",
        {},
        400,
        "invalid_request",
    ),
    (
        "raw surrogate bytes",
        "/v1/classify",
        b'{"images": ["\xed\xa0\x80"]}',
        "application/json",
        {},
        400,
        "invalid_request",
    ),
    (
        "superscript digit as a header length",
        INFER,
        b'{"inputs": []}',
        "application/json",
        {"inference-header-content-length": b"\xb2"},
        400,
        None,
    ),
    (
        "Arabic digits as a timeout",
        "/v1/classify",
        PNG,
        "image/png",
        {"x-request-timeout": b"\xb9"},
        422,
        "invalid_parameter",
    ),
    (
        "3e38 in FP32 JSON",
        INFER,
        as_json(
            {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [3e38] * 3072}]}
        ),
        "application/json",
        {},
        400,
        None,
    ),
    (
        "1e39 in FP32 JSON",
        INFER,
        as_json(
            {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [1e39] * 3072}]}
        ),
        "application/json",
        {},
        400,
        None,
    ),
    (
        "NaN in FP32 binary",
        INFER,
        *v2_binary(
            {
                "inputs": [
                    {
                        "name": "pixel_values",
                        "shape": [1, 3, 32, 32],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 3072 * 4},
                    }
                ]
            },
            np.full(3072, np.nan, "<f4").tobytes(),
        ),
        400,
        None,
    ),
    # 2. counts before work
    (
        "two million empty images",
        "/v1/classify",
        b'{"images": [' + b'"",' * 2_000_000 + b'""]}',
        "application/json",
        {},
        413,
        "payload_too_large",
    ),
    (
        "200,000 images within the value limit",
        "/v1/classify",
        b'{"images": [' + b'"",' * 200_000 + b'""]}',
        "application/json",
        {},
        413,
        "payload_too_large",
    ),
    (
        "a quarter million v2 parameters",
        INFER,
        as_json({"inputs": [], "parameters": {str(i): i for i in range(250_000)}}),
        "application/json",
        {},
        400,
        None,
    ),
    (
        "a quarter million nested lists as v2 data",
        INFER,
        as_json({"inputs": [{"name": "pixels", "shape": [1], "datatype": "UINT8", "data": [[[]]] * 80_000}]}),
        "application/json",
        {},
        400,
        None,
    ),
    (
        "millions of empty BYTES elements",
        INFER,
        *v2_binary(
            {
                "inputs": [
                    {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 16_000_000}}
                ]
            },
            b"\0" * 16_000_000,
        ),
        400,
        None,
    ),
    (
        "a shape of 2**62 images",
        INFER,
        as_json({"inputs": [{"name": "image", "shape": [2**62], "datatype": "BYTES", "data": ["x"]}]}),
        "application/json",
        {},
        413,
        None,
    ),
    (
        "a shape with a huge product",
        INFER,
        as_json({"inputs": [{"name": "pixels", "shape": [1, 3] + [2**60] * 50, "datatype": "UINT8", "data": [0]}]}),
        "application/json",
        {},
        400,
        None,
    ),
    (
        "an output asked for 100,000 times",
        INFER,
        as_json(
            {
                "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(PNG)]}],
                "outputs": [{"name": "embedding"}] * 100_000,
            }
        ),
        "application/json",
        {},
        400,
        None,
    ),
    # 3. decoder time bombs (refused from the header, or the decode process is killed at its deadline)
    (
        "progressive JPEG with 2,000 scans",
        "/v1/classify",
        bombs.progressive_jpeg_with_scans(2000),
        "image/jpeg",
        {},
        400,
        "invalid_image",
    ),
    (
        "RLE BMP decoded in Python",
        "/v1/classify",
        functools.partial(bombs.rle8_bmp, 3000, 2000),
        "image/bmp",
        {},
        413,
        "payload_too_large",
    ),
    (
        "RLE BMP in a multipart body",
        "/v1/embeddings",
        multipart_bomb,
        "multipart/form-data; boundary=b",
        {},
        413,
        "payload_too_large",
    ),
    (
        "RLE BMP of 40 megapixels in 2 KB",
        "/v1/classify",
        bombs.rle8_bmp_of_blank_rows(160_000, 250),
        "image/bmp",
        {},
        413,
        "payload_too_large",
    ),
    (
        "progressive JPEG of 64 scans",
        "/v1/classify",
        functools.partial(bombs.slow_progressive_jpeg, 4000),
        "image/jpeg",
        {},
        413,
        "payload_too_large",
    ),
    (
        "PNG of a million empty chunks",
        "/v1/classify",
        functools.partial(bombs.png_with_chunks, 1_000_000),
        "image/png",
        {},
        413,
        "payload_too_large",
    ),
    (
        "TIFF of 300,000 strips",
        "/v1/classify",
        functools.partial(bombs.tiff_with_strips, 300_000),
        "image/tiff",
        {},
        413,
        "payload_too_large",
    ),
    ("GIF of 3,000 frames", "/v1/classify", functools.partial(bombs.gif_with_frames, 3000), "image/gif", {}, 200, None),
    # 4. decoder memory bombs
    (
        "TIFF with a 65536×65536 tile",
        "/v1/classify",
        bombs.tiff_with_tile(65536),
        "image/tiff",
        {},
        413,
        "payload_too_large",
    ),
    ("1×1,000,000 PNG in crop mode", "/v1/classify", bombs.tall_png(1_000_000), "image/png", {}, 200, None),
    ("6000×6000 RGBA PNG past the decode memory", "/v1/classify", rgba_png, "image/png", {}, 413, "payload_too_large"),
]


@pytest.mark.slow
@pytest.mark.parametrize("attack", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_refused_in_bounded_time_and_memory_while_others_notice_nothing(
    server: Watched, attack: Attack
) -> None:
    _, path, body, content_type, headers, status, error_type = attack
    content = body if isinstance(body, bytes) else body()
    seen = under_attack(server, post(server, path, content, content_type, **headers))
    check(server, seen, status, error_type)
    assert seen.seconds < 10


# The attacks on the decoders (sections 3 and 4 above).
DECODE_ATTACKS = ATTACKS[[a[0] for a in ATTACKS].index("progressive JPEG with 2,000 scans") :]


@pytest.mark.slow
@pytest.mark.parametrize("attack", DECODE_ATTACKS, ids=[a[0] for a in DECODE_ATTACKS])
def test_eight_at_once_are_each_answered_within_6_s_while_others_notice_nothing(
    server: Watched, attack: Attack
) -> None:
    _, path, body, content_type, headers, status, error_type = attack
    send = post(server, path, body if isinstance(body, bytes) else body(), content_type, **headers)

    def eight() -> list[object]:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda _: send(), range(8)))

    seen = under_attack(server, eight)
    # Both decode processes may be at their memory limit, with eight bodies in the server.
    check(server, seen, status, error_type, slack_s=1.0, memory_bound=2 * DECODE_MEMORY + 8 * MAX_BODY)
    assert seen.seconds < 6


@pytest.mark.slow
def test_a_request_of_time_bombs_holds_one_decode_process_and_stops_at_its_first(server: Watched) -> None:
    images = [b64(bombs.tiff_with_strips(300_000))] * 3  # each ~1.5 s of decoding, were it not stopped
    before = restarts(server)
    seen = under_attack(server, post(server, "/v1/classify", as_json({"images": images}), "application/json"))
    check(server, seen, 413, "payload_too_large")
    assert restarts(server) - before == 1  # the first timeout ends the request; the others are never decoded


def restarts(server: Watched) -> float:
    """vit_decode_restarts_total: decode processes killed past their timeout."""
    lines = httpx.get(f"{server.url}/metrics").text.splitlines()
    return next(float(line.split()[1]) for line in lines if line.startswith("vit_decode_restarts_total "))


@pytest.mark.slow
def test_the_server_is_correct_after_the_attacks(server: Watched) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        one = client.post("/v1/embeddings", content=PNG, headers={"content-type": "image/png"}).json()
        many = client.post("/v1/embeddings", json={"images": [b64(PNG)] * 4}).json()
    for row in many["data"]:
        np.testing.assert_allclose(row["embedding"], one["data"][0]["embedding"], atol=1e-5)
