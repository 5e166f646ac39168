"""What decoding an image will cost, read from its first bytes before it takes a decode process
(docs/RELIABILITY.md, "Decoding is admitted by its cost").

`expected_seconds` is a rough upper bound of one core's time to decode and resize an image, from
its format, its size in pixels and bytes, and what makes a decoder slow: a progressive JPEG's
scans, or a decoder written in Python (Pillow's RLE BMP). The decode pool uses it twice: cheap
images (at most `CHEAP_S`) have a decode process of their own that expensive ones never take, so
they never wait behind them; and every decode is killed at `MARGIN` times its expected time (at
least `FLOOR_S`, at most VIT_DECODE_TIMEOUT_S), so a small file that decodes for far longer than
its size allows is stopped early. The headers are read here with a few slices and a bounded walk,
never with Pillow's parsers, whose cost a hostile file controls; what cannot be read is costed as
the largest image the pixel limit allows.
"""

from __future__ import annotations

import struct

# One core's nanoseconds per pixel, decoding and resizing (the largest measured on scikit-image's
# photos and on flat images, rounded up; docs/RELIABILITY.md), and per byte of the file.
NS_PER_PIXEL = {"JPEG": 10.0, "PNG": 35.0, "GIF": 15.0, "WEBP": 40.0, "BMP": 10.0, "TIFF": 30.0}
NS_PER_PROGRESSIVE_SCAN_PIXEL = 1.5  # libjpeg runs over the whole image once per scan
NS_PER_PYTHON_PIXEL = 150.0  # Pillow's RLE BMP decoder, in Python (model/preprocess.py bounds it)
NS_PER_BYTE = 10.0
# Pillow walks some structures in Python, a few microseconds each whatever their size: a PNG's
# chunks (counted here by its IDAT chunks) and a TIFF's strips or tiles. A JPEG's segments before
# its first scan are walked too, and one with more than `_JPEG_SEGMENTS` is costed as unknown.
NS_PER_PNG_CHUNK = 1_000.0
NS_PER_TIFF_STRIP = 5_000.0
FIXED_S = 0.002  # opening, resizing to S×S and handing the pixels over
UNKNOWN_NS_PER_PIXEL = max(NS_PER_PIXEL.values())

CHEAP_S = 0.1  # at most this: decoded in the process kept for cheap images
MARGIN, FLOOR_S = 10.0, 0.5  # a decode is killed at MARGIN × its expected time, never sooner than FLOOR_S

_JPEG_SEGMENTS = 256  # markers walked to find the frame header; real files have a dozen
_TIFF_ENTRIES = 512  # tags read from the first directory; width and length are among the first


def expected_seconds(data: bytes, max_pixels: int) -> float:
    """The time one core takes to decode `data` and resize it, at most (see the module)."""
    pixels, per_pixel = sniff(data) or (max_pixels, UNKNOWN_NS_PER_PIXEL)
    return FIXED_S + (min(pixels, max_pixels) * per_pixel + len(data) * NS_PER_BYTE) * 1e-9


def deadline_s(expected: float, timeout_s: float) -> float:
    """How long a decode expected to take `expected` seconds may run before its process is killed."""
    return min(timeout_s, max(FLOOR_S, MARGIN * expected))


SIGNATURE_BYTES = 16  # enough of a file's start to tell its format


def image_format(data: bytes) -> str | None:
    """The accepted format (model/preprocess.py's ALLOWED_FORMATS) whose signature `data` starts
    with, or None: a file told by its content, not its name."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def sniff(data: bytes) -> tuple[int, float] | None:
    """(pixels, nanoseconds per pixel) from the headers, or None where they cannot be read."""
    try:
        kind = image_format(data)
        if kind == "PNG":
            if data[12:16] != b"IHDR":
                return None
            width, height = struct.unpack_from(">II", data, 16)
            pixels = max(width * height, 1)
            return pixels, NS_PER_PIXEL["PNG"] + NS_PER_PNG_CHUNK * data.count(b"IDAT") / pixels
        if kind == "GIF":
            width, height = struct.unpack_from("<HH", data, 6)
            return width * height, NS_PER_PIXEL["GIF"]
        reader = _READERS.get(kind or "")
        return reader(data) if reader is not None else None
    except (struct.error, IndexError):  # cut short inside a header
        return None


def _jpeg(data: bytes) -> tuple[int, float] | None:
    """Walk the segments to the first scan (SOS): the frame's size (SOFn), and whether it is
    progressive."""
    at, frame = 2, None
    for _ in range(_JPEG_SEGMENTS):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xDA:
            return frame
        (length,) = struct.unpack_from(">H", data, at + 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack_from(">HH", data, at + 5)
            per_pixel = NS_PER_PIXEL["JPEG"]
            if marker in (0xC2, 0xC6, 0xCA, 0xCE):  # progressive: one pass over the image per scan
                per_pixel += NS_PER_PROGRESSIVE_SCAN_PIXEL * data.count(b"\xff\xda")
            frame = width * height, per_pixel
        at += 2 + length
    return None


def _webp(data: bytes) -> tuple[int, float] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack_from("<HH", data, 26)
        width, height = width & 0x3FFF, height & 0x3FFF
    elif chunk == b"VP8L":
        (bits,) = struct.unpack_from("<I", data, 21)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    else:
        return None
    return width * height, NS_PER_PIXEL["WEBP"]


def _bmp(data: bytes) -> tuple[int, float] | None:
    (header,) = struct.unpack_from("<I", data, 14)
    if header == 12:  # OS/2's: no compression
        width, height = struct.unpack_from("<HH", data, 18)
        return width * height, NS_PER_PIXEL["BMP"]
    width, height, _, _, compression = struct.unpack_from("<iiHHI", data, 18)
    python = compression in (1, 2)  # RLE8, RLE4: decoded by Pillow in Python
    return abs(width * height), NS_PER_PYTHON_PIXEL if python else NS_PER_PIXEL["BMP"]


def _tiff(data: bytes) -> tuple[int, float] | None:
    """ImageWidth, ImageLength and the number of strips or tiles, from the first directory."""
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, offset)
    size, strips = {}, 1
    for i in range(min(count, _TIFF_ENTRIES)):
        tag, kind, values = struct.unpack_from(order + "HHI", data, offset + 2 + 12 * i)
        if tag in (256, 257):
            (size[tag],) = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, offset + 2 + 12 * i + 8)
        elif tag in (273, 324):  # StripOffsets, TileOffsets: one value each
            strips = values
    if len(size) < 2:
        return None
    pixels = max(size[256] * size[257], 1)
    return pixels, NS_PER_PIXEL["TIFF"] + NS_PER_TIFF_STRIP * strips / pixels


_READERS = {"JPEG": _jpeg, "WEBP": _webp, "BMP": _bmp, "TIFF": _tiff}
