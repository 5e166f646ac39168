"""Nobody waits behind a slow decode, with the default settings (docs/RELIABILITY.md, "Decoding is
admitted by its cost"): eight images sent at once, each of which Pillow's Python RLE decoder would
take seconds to expand from 2 KB, are each refused with a 4xx JSON error within 6 s; eight
12-megapixel JPEGs sent at once are served; and meanwhile another client's small classify
request takes at most its idle latency + 1 s and /healthz under 1 s. `-s` prints the figures."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bench.workload import PHONE_GRAIN, jpeg
from tests.service import bombs
from tests.service.canary import Observed, Watched, under_attack, watched_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[Watched]:
    with watched_server(VIT_LOG_LEVEL="warning") as watched:  # the built-in model, every default
        yield watched


def eight_at_once(server: Watched, body: bytes, content_type: str) -> Observed:
    """Eight requests of `body` at once, each timed, while the canary watches."""

    def one(_: int) -> tuple[httpx.Response, float]:
        response = httpx.post(
            f"{server.url}/v1/classify", content=body, headers={"content-type": content_type}, timeout=60
        )
        return response, response.elapsed.total_seconds()

    def burst() -> list[tuple[httpx.Response, float]]:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(8)))

    seen = under_attack(server, burst)
    answered = seen.result
    assert isinstance(answered, list), answered
    print(
        f"\n{len(body) / 1000:.1f} KB × 8: answers {sorted(r.status_code for r, _ in answered)} within"
        f" {max(s for _, s in answered):.2f} s; the canary's classify at most {seen.canary_max_s * 1000:.0f} ms"
        f" (idle {server.canary_s * 1000:.1f} ms), /healthz at most {seen.healthz_max_s * 1000:.0f} ms"
    )
    assert seen.canary_max_s < server.canary_s + 1.0 and seen.healthz_max_s < 1.0
    return seen


def test_eight_tiny_slow_decode_images_are_refused_within_6_s(server: Watched) -> None:
    body = bombs.rle8_bmp_of_blank_rows(320_000, 125)  # 40 megapixels, ~6 s of Python, in 1.6 KB
    assert len(body) < 2000
    seen = eight_at_once(server, body, "image/bmp")
    for response, seconds in seen.result:  # type: ignore[attr-defined]
        assert response.status_code == 413 and response.json()["error"]["type"] == "payload_too_large"
        assert seconds < 6


def test_eight_12_megapixel_jpegs_are_served(server: Watched) -> None:
    seen = eight_at_once(server, jpeg(PHONE_GRAIN), "image/jpeg")
    assert all(response.status_code == 200 for response, _ in seen.result)  # type: ignore[attr-defined]
