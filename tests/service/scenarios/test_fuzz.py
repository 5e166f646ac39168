"""Fuzzing: schemathesis against the service's own OpenAPI schema (over real HTTP), and
hypothesis against the image-decoding path."""

from __future__ import annotations

import base64
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES
from schemathesis.specs.openapi.checks import positive_data_acceptance

from model.preprocess import ImageError, PreprocessConfig
from model.tensors import load_image
from service.app import create_app
from service.engine import Engine
from service.engine.handle import in_process
from service.http.openapi import openapi
from tests.families import save_pair
from tests.images import encode, gradient
from tests.service.servers import live_server, tiny_settings

# The schema's binary bodies and parts are image files, and its `byte` strings base64 images
# (service/schemas.py): schemathesis is told what those are, so that a request it generates as
# valid is one (random bytes are not an image, and the service is right to refuse them).
FILES = [encode(gradient(12 + i, 9 + 2 * i), fmt) for i, fmt in enumerate(("PNG", "JPEG", "GIF", "BMP", "WEBP"))]
schemathesis.openapi.format("byte", st.sampled_from([base64.b64encode(f).decode() for f in FILES]))
schemathesis.openapi.format("binary", st.sampled_from(FILES))
schemathesis.openapi.media_type("application/octet-stream", st.sampled_from(FILES))
# What a client's own deadline (X-Request-Timeout, down to a microsecond) may bring: documented
# answers about time, not refusals of the data (docs/API.md, Errors).
TIMING = {408: "request_timeout", 503: "overloaded", 504: "deadline_exceeded"}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with live_server(tiny_settings()) as (url, _):
        yield url


# The schema the service serves once its model is loaded (its bounds included; checked below).
SERVED = openapi(create_app(tiny_settings(), in_process()), tiny_settings(), Engine.from_settings(tiny_settings()).card)
# A request the schema refuses is refused by the service with one of schemathesis's statuses, or
# with 413 (too many images) or 431 (a request head past its limit, as a long query of labels:
# docs/API.md, Errors), which it does not count as refusals.
REJECTED = [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413", "431"]
CONFIG = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REJECTED}}})
schema = schemathesis.openapi.from_dict(SERVED, config=CONFIG)


def test_this_is_the_schema_the_running_service_serves(base_url: str) -> None:
    assert httpx.get(f"{base_url}/openapi.json").json() == SERVED


# 40 examples an operation in CI; FUZZ_EXAMPLES=250 (about 20 s here) for a deeper run.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_check_of_the_schema_holds(case, base_url: str) -> None:
    """All of schemathesis's checks: a request the schema calls valid is accepted, one it calls
    invalid is refused, and every response (status, headers, body) is the one declared."""
    response = case.call(base_url=base_url, timeout=30)
    excluded = []
    if response.status_code in TIMING and response.json()["error"]["type"] == TIMING[response.status_code]:
        excluded = [positive_data_acceptance, not_a_server_error]
    case.validate_response(response, excluded_checks=excluded)


# The same checks on a CLIP pair, whose schema holds texts, zero-shot labels and templates: the
# routes they reach. Its checkpoint lives as long as the test session.
PAIR = Path(tempfile.mkdtemp(prefix="fuzz-clip-"))
save_pair("clip", PAIR)
PAIR_SETTINGS = tiny_settings(checkpoint=str(PAIR))
PAIR_SERVED = openapi(create_app(PAIR_SETTINGS, in_process()), PAIR_SETTINGS, Engine.from_settings(PAIR_SETTINGS).card)
pair_schema = schemathesis.openapi.from_dict(PAIR_SERVED, config=CONFIG).include(
    path_regex=r"^/(v1/classify|v1/embeddings|weaviate/vectorize)$"
)


@pytest.fixture(scope="module")
def pair_url() -> Iterator[str]:
    with live_server(PAIR_SETTINGS) as (url, _):
        yield url


@pair_schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_check_of_a_pairs_schema_holds(case, pair_url: str) -> None:
    """As above; and a classify request without `labels` (in neither the query nor the body: the
    one refusal OpenAPI cannot state, docs/API.md, OpenAPI) is refused, not accepted."""
    response = case.call(base_url=pair_url, timeout=30)
    excluded = []
    if response.status_code in TIMING and response.json()["error"]["type"] == TIMING[response.status_code]:
        excluded = [positive_data_acceptance, not_a_server_error]
    error = response.json().get("error") if response.status_code == 422 else None
    if isinstance(error, dict) and error["message"].startswith("labels: this model has no"):
        body = case.body if isinstance(case.body, dict) else {}
        labels = body["labels"] if "labels" in body else (case.query or {}).get("labels")  # the body wins
        assert case.path == "/v1/classify" and not labels
        excluded = [positive_data_acceptance]
    case.validate_response(response, excluded_checks=excluded)


SEEDS = [encode(gradient(12, 9), fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")]
CFG = PreprocessConfig()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image with bytes flipped, cut or spliced: what a fuzzer feeds a decoder."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=64))
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(st.one_of(mutated_images(), st.binary(max_size=512)))
def test_decoding_either_succeeds_or_raises_image_error(data: bytes) -> None:
    try:
        out = load_image(data, 16, CFG, max_pixels=1_000_000)
    except ImageError:
        return
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)


def test_fuzz_seeds_decode() -> None:
    for data in SEEDS:
        assert Image.open(io.BytesIO(data)).size == (12, 9)
        assert load_image(data, 16, CFG).shape == (3, 16, 16)


_PNG_B64 = __import__("base64").b64encode(encode(gradient(), "PNG")).decode()
_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.just(_PNG_B64),
)
_json = st.recursive(
    _json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
)
_tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["image", "pixels", "pixel_values", "x"]),
        "shape": st.lists(st.integers(-2, 2**66), max_size=4),
        "datatype": st.sampled_from(["BYTES", "UINT8", "FP32", "INT8"]),
        "data": st.lists(_json, max_size=6),
    }
)
_infer_body = st.one_of(
    _json, st.fixed_dictionaries({"inputs": st.lists(_tensor, max_size=2)}, optional={"outputs": _json})
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_infer_body)
def test_v2_infer_answers_every_body_with_a_4xx_or_200(base_url: str, body: object) -> None:
    import httpx

    response = httpx.post(f"{base_url}/v2/models/vit_test_tiny/infer", json=body, timeout=30)
    assert response.status_code in (200, 400, 413), response.text
    if response.status_code != 200:
        assert isinstance(response.json()["error"], str)
