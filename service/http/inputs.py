"""Request bodies -> image bytes (or texts) and parameters (docs/API.md, Sending images), within limits.

The body is read as a stream, within the request's deadline, and refused with 413 as soon as
it passes the limit, so an oversized upload is never held in memory whole. Counts are checked
before any per-element work: a JSON body's values before it is parsed, multipart parts as they
are parsed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.errors import (
    ClientDisconnected,
    InvalidParameter,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    first_error,
)
from service.http.params import parse_count
from service.settings import Settings

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

RAW_IMAGE_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff", "application/octet-stream"}
)
_DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


@dataclass
class ParsedInput:
    inputs: list[bytes | str]  # image files, or texts (JSON `texts`; OpenAI `input` strings that are texts)
    params: dict[str, Any] = field(default_factory=dict)  # body fields of the JSON form
    openai: bool = False  # the inputs came as OpenAI's embeddings `input`

    @property
    def texts(self) -> bool:
        return any(isinstance(item, str) for item in self.inputs)


async def read_body(request: Request, limit: int, deadline: float) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it (or its Content-Length) passes `limit`,
    or RequestTimeout if it has not all arrived by `deadline` (monotonic): a client sending
    slowly holds a connection, never the service's time."""
    declared = parse_count(request.headers.get("content-length", ""))
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnected("the client closed the connection while sending its body") from None
    except TimeoutError:
        raise RequestTimeout("the body did not arrive within the request's deadline") from None
    return b"".join(chunks)


_PARSE_IN_THREAD = 1 << 20


async def parse_off_loop(parse: Callable[[], T], size: int) -> T:
    """`parse()` of a body of `size` bytes: inline when small, on a thread when large, so that a
    JSON body near VIT_MAX_JSON_VALUES (a quarter second of parsing and validation on a slow
    core) leaves the event loop answering everyone else."""
    return parse() if size <= _PARSE_IN_THREAD else await asyncio.to_thread(parse)


def load_model(model: type[M], body: bytes, max_values: int, what: str = "request") -> M:
    """A JSON body validated by `model`: `load_json`'s bounds, then 400 naming the first field
    that does not fit (in "invalid `what`: …")."""
    try:
        return model.model_validate(load_json(body, max_values))
    except ValidationError as exc:
        raise InvalidRequest(f"invalid {what}: {first_error(exc.errors())}") from None


def load_json(body: bytes, max_values: int) -> Any:
    """A JSON body as Python objects, refused (4xx) where it would be costly or unsafe to hold:
    more than `max_values` values (413; counted as separators before parsing, an over-count at C
    speed), invalid UTF-8, nesting deeper than the parser's recursion limit, NaN or Infinity, and
    lone UTF-16 surrogates, which no response or log line could carry as Unicode."""
    values = body.count(b",") + body.count(b"[") + body.count(b"{")
    if values > max_values:
        raise PayloadTooLarge(f"the JSON body holds over {max_values} values (VIT_MAX_JSON_VALUES)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not valid UTF-8") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidRequest("the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN and Infinity
        raise InvalidRequest(f"the body is not valid JSON ({exc})") from None
    if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(data):
        raise InvalidRequest("the JSON body holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text")
    return data


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(data: Any) -> bool:
    """Whether any string (key or value) holds a surrogate that was not part of a pair."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


async def read_images(request: Request, settings: Settings, deadline: float, texts: bool = False) -> ParsedInput:
    """The body's images (or JSON `texts`) and parameters, in any of /v1's three forms, read by
    `deadline` and split by its Content-Type, counted before anything is decoded. With `texts`
    (a model with a text tower), OpenAI `input` strings that are not data: URLs are texts;
    without, they are base64 images, as before texts were served."""
    max_body, max_images, max_json_values = (
        settings.max_body_bytes,
        settings.max_images_per_request,
        settings.max_json_values,
    )
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type not in RAW_IMAGE_TYPES | {"multipart/form-data", "application/json"}:
        shown = media_type or "none"
        raise UnsupportedMediaType(
            f"Content-Type {shown} is not accepted; send an image type, multipart/form-data or application/json"
        )
    body = await read_body(request, max_body, deadline)
    if not body:
        raise InvalidRequest("the request body is empty")
    if media_type == "multipart/form-data":
        parsed = _multipart(content_type, body, max_images)
    elif media_type == "application/json":
        parsed = await parse_off_loop(lambda: _json(load_json(body, max_json_values), max_images, texts), len(body))
    else:
        parsed = ParsedInput([body])
    if not parsed.inputs:
        raise InvalidRequest("the request holds no image")
    check_image_count(len(parsed.inputs), max_images)
    return parsed


def check_image_count(count: int, limit: int) -> None:
    """413 for more images (or texts) in one request than VIT_MAX_IMAGES_PER_REQUEST, whatever
    form they came in."""
    if count > limit:
        raise PayloadTooLarge(f"{count} inputs in one request; the limit is {limit} (VIT_MAX_IMAGES_PER_REQUEST)")


class _MultipartCollector:
    """Collects the file parts named `image` of a multipart body held in memory.

    python-multipart's streaming parser writes into plain bytes: no temporary files, nothing
    left open when a body is cut short, and at most `max_parts` parts of any name.
    """

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self.parts = 0
        self.images: list[bytes] = []
        self._field, self._value = bytearray(), bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._data: bytearray | None = None

    def callbacks(self) -> Any:  # python-multipart types this as its own TypedDict
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, a, b: self._field.extend(d[a:b]),
            "on_header_value": lambda d, a, b: self._value.extend(d[a:b]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda d, a, b: self._data.extend(d[a:b]) if self._data is not None else None,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise PayloadTooLarge(f"too many multipart parts: at most {self.max_parts}")
        self._headers, self._data = {}, None

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name") != b"image":
            return  # another field: ignored, but counted
        if b"filename" not in options:
            raise InvalidRequest("multipart part 'image' must be a file part (with a filename)")
        self._data = bytearray()

    def _end(self) -> None:
        if self._data is not None:
            self.images.append(bytes(self._data))
            self._data = None


def _multipart(content_type: str, body: bytes, max_images: int) -> ParsedInput:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequest("malformed multipart body: the Content-Type has no boundary")
    collector = _MultipartCollector(max_parts=max_images + 16)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError) as exc:
        raise InvalidRequest(f"malformed multipart body: {exc}") from None
    return ParsedInput(list(collector.images))


def _json(data: Any, max_images: int, texts: bool) -> ParsedInput:
    if not isinstance(data, dict):
        raise InvalidRequest('expected a JSON object: {"images": ["<base64>", ...]}')
    key = next((k for k in ("images", "texts", "input") if k in data), "images")
    items = data.get(key)
    if key == "input" and isinstance(items, str):
        items = [items]  # OpenAI's `input` may be one string
    what = "strings (texts)" if key == "texts" else "strings (texts, or images as data: URLs)" if texts else None
    what = what or "base64 strings or data URLs"
    if not isinstance(items, list):
        raise InvalidRequest(f'"{key}" must be a list of {what}')
    check_image_count(len(items), max_images)  # before any per-item work
    if not all(isinstance(x, str) for x in items):
        raise InvalidRequest(f'"{key}" must be a list of {what}')
    params = {k: v for k, v in data.items() if k != key}
    if key == "texts":
        return ParsedInput(list(items), params)
    if key == "input":
        return ParsedInput([_openai_input(x, i, texts) for i, x in enumerate(items)], params, openai=True)
    return ParsedInput([decode_base64(x, i, key) for i, x in enumerate(items)], params)


def _openai_input(text: str, index: int, texts: bool) -> bytes | str:
    """An OpenAI `input` string: a data: URL is an image; another string is a text where the
    model has a text tower, and a base64 image where it has not."""
    if _DATA_URL.match(text):
        return decode_base64(text, index, "input")
    if texts:
        return text
    try:
        return decode_base64(text, index, "input")
    except InvalidRequest:
        raise InvalidParameter(
            f"input[{index}] is neither a data: URL nor base64; it would be a text, and this model has no text tower"
        ) from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def decode_base64(text: str, index: int, key: str = "images") -> bytes:
    """base64 or a data URL -> bytes (also for /v2's BYTES tensors)."""
    payload = _DATA_URL.sub("", text, count=1)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{key}[{index}] is not valid base64") from None


def peer(request: Request) -> str:
    """The client's address: decode processes are shared out by it (service/decoding.py)."""
    return request.client.host if request.client else ""


async def client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
