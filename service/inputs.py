"""Request bodies -> image bytes and parameters (SPEC §4's three input forms), within limits.

The body is read as a stream and refused with 413 as soon as it passes the limit, so an
oversized upload is never held in memory whole.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from service.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

RAW_IMAGE_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff", "application/octet-stream"}
)
_DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


@dataclass
class ParsedInput:
    images: list[bytes]
    params: dict[str, Any] = field(default_factory=dict)  # body fields of the JSON form


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it (or its Content-Length) passes `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_images(request: Request, max_body: int, max_images: int) -> ParsedInput:
    """Read and split the body by its Content-Type."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type not in RAW_IMAGE_TYPES | {"multipart/form-data", "application/json"}:
        shown = media_type or "none"
        raise UnsupportedMediaType(
            f"Content-Type {shown} is not accepted; send an image type, multipart/form-data or application/json"
        )
    body = await read_body(request, max_body)
    if not body:
        raise InvalidRequest("the request body is empty")
    if media_type == "multipart/form-data":
        parsed = await _multipart(request, body, max_images)
    elif media_type == "application/json":
        parsed = _json(body)
    else:
        parsed = ParsedInput([body])
    if not parsed.images:
        raise InvalidRequest("the request holds no image")
    if len(parsed.images) > max_images:
        raise PayloadTooLarge(f"{len(parsed.images)} images in one request; the limit is {max_images}")
    return parsed


async def _multipart(request: Request, body: bytes, max_images: int) -> ParsedInput:
    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    # Part counts are bounded by the parser itself (starlette's max_files / max_fields).
    parser = MultiPartParser(request.headers, replay(), max_files=max_images + 1, max_fields=32)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if "Too many" in exc.message:
            raise PayloadTooLarge(f"too many parts: at most {max_images} images per request") from None
        raise InvalidRequest(f"malformed multipart body: {exc.message}") from None
    try:
        images: list[bytes] = []
        for name, value in form.multi_items():
            if name != "image":
                continue
            if not isinstance(value, UploadFile):
                raise InvalidRequest("multipart part 'image' must be a file part (with a filename)")
            images.append(await value.read())
        return ParsedInput(images)
    finally:
        await form.close()


def _json(body: bytes) -> ParsedInput:
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidRequest('expected a JSON object: {"images": ["<base64>", ...]}')
    images = data.get("images")
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
        raise InvalidRequest('"images" must be a list of base64 strings or data URLs')
    params = {k: v for k, v in data.items() if k != "images"}
    return ParsedInput([_decode_base64(x, i) for i, x in enumerate(images)], params)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _decode_base64(text: str, index: int) -> bytes:
    payload = _DATA_URL.sub("", text, count=1)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"images[{index}] is not valid base64") from None
