"""An image's decode cost read from its first bytes (service/decode_cost.py): the sizes Pillow
reads, what makes a decoder slow, and which images count as cheap."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bench.workload import PHONE, jpeg
from service import decode_cost
from service.decode_cost import CHEAP_S, NS_PER_PIXEL, NS_PER_PYTHON_PIXEL, deadline_s, expected_seconds, sniff
from tests.images import encode, gradient, photo
from tests.service import bombs

LIMIT = 40_000_000
RGBA = photo().convert("RGBA")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("baseline JPEG", encode(photo(), "JPEG")),
        ("progressive JPEG", encode(photo(), "JPEG", progressive=True)),
        ("JPEG with EXIF", encode(photo(), "JPEG", exif=photo().getexif())),
        ("PNG", encode(photo(), "PNG")),
        ("GIF", encode(photo(), "GIF")),
        ("lossy WebP", encode(photo(), "WEBP")),
        ("lossless WebP", encode(photo(), "WEBP", lossless=True)),
        ("WebP with alpha (VP8X)", encode(RGBA, "WEBP")),
        ("BMP", encode(photo(), "BMP")),
        ("top-down RLE BMP", bombs.rle8_bmp(300, 200)),
        ("TIFF", encode(photo(), "TIFF")),
        ("big-endian TIFF", bombs.tiff_with_strips(50)),
    ],
)
def test_the_pixels_are_those_pillow_reads_from_the_header(name: str, data: bytes) -> None:
    found = sniff(data)
    assert found is not None, name
    width, height = Image.open(io.BytesIO(data)).size
    assert found[0] == width * height, name


def test_what_makes_a_decoder_slow_raises_its_cost_per_pixel() -> None:
    baseline, progressive = sniff(encode(photo(), "JPEG")), sniff(bombs.slow_progressive_jpeg(64))
    assert baseline is not None and progressive is not None
    assert baseline[1] == NS_PER_PIXEL["JPEG"] and progressive[1] > 60 * decode_cost.NS_PER_PROGRESSIVE_SCAN_PIXEL
    assert sniff(bombs.rle8_bmp(30, 20)) == (600, NS_PER_PYTHON_PIXEL)
    few, many = sniff(bombs.tiff_with_strips(10)), sniff(bombs.tiff_with_strips(10_000))
    assert few is not None and many is not None and many[0] == 1000 * few[0] and many[1] == few[1]  # one strip a row
    assert many[1] > NS_PER_PIXEL["TIFF"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image",
        b"\xff\xd8\xff\xe0\x00",  # cut inside a segment
        b"\xff\xd8" + b"\xff\xfe\x00\x02" * 300,  # more segments than a real file has before its frame
        encode(photo(), "PNG")[:20],
        b"RIFF\0\0\0\0WEBPVP8Z",
    ],
)
def test_what_cannot_be_read_is_costed_as_the_largest_image_allowed(data: bytes) -> None:
    assert sniff(data) is None
    assert expected_seconds(data, LIMIT) >= LIMIT * decode_cost.UNKNOWN_NS_PER_PIXEL * 1e-9


def test_ordinary_web_images_are_cheap_and_large_or_slow_ones_are_not() -> None:
    cheap = [jpeg("500x375"), jpeg("224"), encode(gradient(640, 480), "PNG"), bombs.small_png()]
    costly = [
        jpeg(PHONE),
        bombs.slow_progressive_jpeg(2000),
        bombs.rle8_bmp(1000, 1000),
        bombs.tiff_with_strips(50_000),
    ]
    assert all(expected_seconds(data, LIMIT) <= CHEAP_S for data in cheap)
    assert all(expected_seconds(data, LIMIT) > CHEAP_S for data in costly)


def test_a_decode_may_run_a_multiple_of_its_expected_time_within_the_floor_and_the_timeout() -> None:
    assert deadline_s(0.001, 5.0) == decode_cost.FLOOR_S
    assert deadline_s(0.2, 5.0) == pytest.approx(0.2 * decode_cost.MARGIN)
    assert deadline_s(3.0, 5.0) == 5.0
    assert deadline_s(0.001, 0.1) == 0.1  # the timeout wins over the floor
