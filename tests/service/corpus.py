"""Broken and odd inputs, each with the answer it must get (status, error type; None = success).

Every case is a function of the PNG/JPEG payloads it needs, returning httpx request arguments.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from tests.images import encode, gradient, photo, png_header_claiming

PNG = encode(gradient(40, 30), "PNG")
JPEG = encode(photo(), "JPEG", quality=90)


@dataclass(frozen=True)
class Case:
    name: str
    request: dict[str, Any]  # httpx.post keyword arguments
    status: int
    type: str | None  # the error type, or None for a 200


def raw(data: bytes, content_type: str | None = "image/png") -> dict[str, Any]:
    return {"content": data, "headers": {"content-type": content_type} if content_type else {}}


def part(data: bytes, filename: str = "a.png", name: str = "image") -> bytes:
    return (
        f'--b\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
    )


def multipart(body: bytes, boundary: str | None = "b") -> dict[str, Any]:
    ct = "multipart/form-data" + (f"; boundary={boundary}" if boundary else "")
    return {"content": body, "headers": {"content-type": ct}}


def as_json(body: str | bytes) -> dict[str, Any]:
    return {
        "content": body.encode() if isinstance(body, str) else body,
        "headers": {"content-type": "application/json"},
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def gif_with_frames(n: int) -> bytes:
    frames = [Image.new("P", (16, 16), i % 200) for i in range(n)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def palette_with_transparency() -> bytes:
    img = Image.new("P", (16, 16), 1)
    img.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    return encode(img, "PNG", transparency=1)


def tiff_without_width() -> bytes:
    """A TIFF whose directory lacks the ImageWidth tag (Pillow raises TypeError on it; found by fuzzing)."""
    data = bytearray(encode(gradient(12, 9), "TIFF"))
    at = data.find(struct.pack("<H", 256))  # tag 256: ImageWidth
    data[at : at + 2] = struct.pack("<H", 999)
    return bytes(data)


def exif_rotated_jpeg(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; "rotate 90° clockwise to display"
    return encode(image, "JPEG", exif=exif, quality=100)


CASES: list[Case] = [
    Case("zero-byte body", raw(b""), 400, "invalid_request"),
    Case("zero-byte octet-stream", raw(b"", "application/octet-stream"), 400, "invalid_request"),
    Case("missing content-type", raw(PNG, None), 415, "unsupported_media_type"),
    Case("wrong content-type text/plain", raw(PNG, "text/plain"), 415, "unsupported_media_type"),
    Case("wrong content-type xml", raw(PNG, "application/xml"), 415, "unsupported_media_type"),
    Case("form-urlencoded", raw(b"image=abc", "application/x-www-form-urlencoded"), 415, "unsupported_media_type"),
    Case("multipart bad boundary", multipart(part(PNG) + b"--b--\r\n", boundary="zzz"), 400, "invalid_request"),
    Case("multipart missing boundary", multipart(part(PNG) + b"--b--\r\n", boundary=None), 400, "invalid_request"),
    Case("multipart no closing boundary", multipart(part(PNG)), 400, "invalid_request"),
    Case("multipart CR/LF flood", multipart(b"\r\n" * 200_000), 400, "invalid_request"),
    Case("multipart CR/LF inside a part", multipart(b"--b\r\n" + b"\r\n" * 100_000 + b"--b--"), 400, "invalid_request"),
    Case("multipart thousands of parts", multipart(part(b"x") * 5000 + b"--b--\r\n"), 413, "payload_too_large"),
    Case(
        "multipart thousands of fields",
        multipart(b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n' * 2000 + b"--b--\r\n"),
        413,
        "payload_too_large",
    ),
    Case("multipart only a closing boundary", multipart(b"--b--\r\n"), 400, "invalid_request"),
    Case(
        "multipart image as a plain field",
        multipart(b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc\r\n--b--\r\n'),
        400,
        "invalid_request",
    ),
    Case("invalid json", as_json("{images: nope"), 400, "invalid_request"),
    Case("json not an object", as_json("[1, 2]"), 400, "invalid_request"),
    Case("json images not a list", as_json('{"images": "abc"}'), 400, "invalid_request"),
    Case("json images of numbers", as_json('{"images": [1, 2]}'), 400, "invalid_request"),
    Case("json invalid utf-8", as_json(b'{"images": ["\xff\xfe"]}'), 400, "invalid_request"),
    Case("invalid base64", as_json('{"images": ["@@@not-base64@@@"]}'), 400, "invalid_request"),
    Case("NaN in json", as_json('{"images": [], "top_k": NaN}'), 400, "invalid_request"),
    Case("Infinity in json", as_json('{"images": [], "top_k": Infinity}'), 400, "invalid_request"),
    Case(
        "top_k of the wrong type", as_json(f'{{"images": ["{b64(PNG)}"], "top_k": "five"}}'), 422, "invalid_parameter"
    ),
    Case("top_k a huge number", as_json(f'{{"images": ["{b64(PNG)}"], "top_k": 1e400}}'), 422, "invalid_parameter"),
    Case("unknown body parameter", as_json(f'{{"images": ["{b64(PNG)}"], "topk": 3}}'), 422, "invalid_parameter"),
    Case("image given as a URL", as_json('{"images": ["https://example.com/cat.jpg"]}'), 400, "invalid_request"),
    Case("base64 of text", as_json(f'{{"images": ["{b64(b"hello world")}"]}}'), 400, "invalid_image"),
    Case("tiff without its width tag", raw(tiff_without_width(), "image/tiff"), 400, "invalid_image"),
    Case("truncated jpeg", raw(JPEG[: len(JPEG) // 3], "image/jpeg"), 400, "invalid_image"),
    Case("truncated png", raw(PNG[:100]), 400, "invalid_image"),
    Case(
        "text file named .jpg", multipart(part(b"just some text\n", "photo.jpg") + b"--b--\r\n"), 400, "invalid_image"
    ),
    Case(
        "html file named .jpg",
        multipart(part(b"<!doctype html><html><body>hi</body></html>", "x.jpg") + b"--b--\r\n"),
        400,
        "invalid_image",
    ),
    Case("decompression bomb header", raw(png_header_claiming(50_000, 50_000)), 413, "payload_too_large"),
    Case(
        "format outside the allow-list (ICO)",
        raw(encode(Image.new("RGB", (16, 16)), "ICO")),
        415,
        "unsupported_media_type",
    ),
    Case(
        "format outside the allow-list (PPM)",
        raw(encode(Image.new("RGB", (16, 16)), "PPM")),
        415,
        "unsupported_media_type",
    ),
    Case("gif with many frames", raw(gif_with_frames(300), "image/gif"), 200, None),
    Case("16-bit png", raw(encode(Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 257))), 200, None),
    Case("cmyk jpeg", raw(encode(Image.new("CMYK", (16, 16), (0, 200, 200, 0)), "JPEG"), "image/jpeg"), 200, None),
    Case("palette png with transparency", raw(palette_with_transparency()), 200, None),
    Case("LA png", raw(encode(Image.new("LA", (16, 16), (100, 128)))), 200, None),
    Case("1-bit png", raw(encode(Image.new("1", (16, 16), 1))), 200, None),
    Case("exif-rotated jpeg", raw(exif_rotated_jpeg(gradient(48, 32)), "image/jpeg"), 200, None),
    Case("1x1 image", raw(encode(Image.new("RGB", (1, 1), (9, 9, 9)))), 200, None),
    Case("10000x1 image", raw(encode(Image.new("RGB", (10_000, 1), (200, 10, 10)))), 200, None),
    Case("webp", raw(encode(gradient(), "WEBP"), "image/webp"), 200, None),
    Case("bmp", raw(encode(gradient(), "BMP"), "image/bmp"), 200, None),
    Case("tiff", raw(encode(gradient(), "TIFF"), "image/tiff"), 200, None),
    Case("declared type differs from the bytes", raw(PNG, "image/jpeg"), 200, None),
]

# These two depend on the limits the corpus server runs with (see test_bad_input.py).
MAX_IMAGES = 8
MAX_BODY = 2 << 20
CASES += [
    Case("more images than allowed", multipart(part(PNG) * (MAX_IMAGES + 1) + b"--b--\r\n"), 413, "payload_too_large"),
    Case(
        "json with more images than allowed",
        as_json(f'{{"images": {[b64(PNG)] * (MAX_IMAGES + 1)}}}'.replace("'", '"')),
        413,
        "payload_too_large",
    ),
    Case("body over the size cap", raw(b"\0" * (MAX_BODY + 1)), 413, "payload_too_large"),
]
