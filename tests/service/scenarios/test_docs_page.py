"""/docs in a real headless browser (Debian's chromium, driven by Playwright) that may
reach 127.0.0.1 only: every request to another host is recorded and refused. The page renders
the service's operations, nothing is even attempted elsewhere, and a file uploaded through
Swagger UI's "Try it out" on /v1/classify comes back classified."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from service.settings import Settings
from tests.service.servers import live_server

DIGIT = Path(__file__).resolve().parents[3] / "examples" / "digits" / "digit-7-3539.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (the test extra has it)")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium to drive: `apt-get install chromium` (.ci/run installs it)"
)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with live_server(Settings(_env_file=None)) as (base, _):  # the built-in vit-mnist
        yield base


@pytest.fixture
def page(url: str) -> Iterator[tuple]:
    """A page whose requests off 127.0.0.1 are recorded (in the list) and aborted."""
    outside: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()

        def only_here(route) -> None:
            if urlsplit(route.request.url).hostname == "127.0.0.1":
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", only_here)
        try:
            yield page, outside
        finally:
            browser.close()


def test_swagger_ui_renders_offline_and_classifies_an_uploaded_file(url: str, page: tuple) -> None:
    page, outside = page
    page.goto(f"{url}/docs")
    operation = page.locator(".opblock", has=page.locator('[data-path="/v1/classify"]'))
    operation.locator(".opblock-summary").click()
    for path in ("/v1/embeddings", "/v1/features", "/v1/models", "/v2/models/{name}/infer"):
        assert page.locator(f'[data-path="{path}"]').count() >= 1, path
    operation.locator(".try-out__btn").click()
    operation.locator(".opblock-section-request-body select").select_option("image/png")
    operation.locator('.opblock-section-request-body input[type="file"]').set_input_files(DIGIT)
    operation.locator(".execute").click()
    status = operation.locator(".live-responses-table tr.response .response-col_status").first
    status.wait_for(timeout=30_000)
    assert status.inner_text().strip() == "200"
    shown = json.loads(
        operation.locator(".live-responses-table tr.response .response-col_description pre").first.inner_text()
    )
    direct = httpx.post(f"{url}/v1/classify", content=DIGIT.read_bytes(), headers={"content-type": "image/png"})
    assert shown == direct.json() and shown["results"][0]["predictions"][0]["label"] == "7"
    assert outside == []


def test_redoc_is_not_served(url: str) -> None:
    """ReDoc fetches its badge from cdn.redoc.ly: the one offline page is /docs."""
    assert httpx.get(f"{url}/redoc").status_code == 404
