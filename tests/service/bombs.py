"""Hostile payloads: small files and bodies that would cost a naive server seconds or gigabytes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import tifffile
from PIL import Image

from model.preprocess import MAX_JPEG_SCANS
from tests.images import encode, gradient


def progressive_jpeg_with_scans(scans: int, size: int = 2000) -> bytes:
    """A progressive JPEG whose last scan is repeated: each repeat is decoded over the whole image
    (libjpeg only warns about the bogus progression), so a few KB cost seconds."""
    data = encode(Image.new("RGB", (size, size), (90, 30, 200)), "JPEG", progressive=True, quality=50)
    last = data.rindex(b"\xff\xda")
    return data[:last] + data[last:-2] * scans + b"\xff\xd9"


def slow_progressive_jpeg(size: int = 4000) -> bytes:
    """A progressive JPEG with as many scans as allowed (its last one repeated), upside down (EXIF),
    so that Pillow's libjpeg decodes it, once per scan over the whole image: every header check
    passes, and a few hundred KB cost seconds."""
    rotated = Image.new("RGB", (1, 1)).getexif()
    rotated[0x0112] = 3
    image = Image.new("RGB", (size, size), (90, 30, 200))
    data = encode(image, "JPEG", progressive=True, quality=50, exif=rotated)
    last = data.rindex(b"\xff\xda")
    repeats = MAX_JPEG_SCANS - data.count(b"\xff\xda")
    return data[:last] + data[last:-2] * (repeats + 1) + b"\xff\xd9"


def rle8_bmp(width: int, height: int) -> bytes:
    """An RLE8-compressed BMP of one-pixel runs: Pillow decodes RLE in Python, holding the GIL."""
    rows = (b"\x01\x07" * width + b"\x00\x00") * height + b"\x00\x01"  # runs of 1, end of line, end of bitmap
    return _rle8_bmp(width, height, rows)


def png_with_chunks(n: int) -> bytes:
    """A 1×1 PNG with n empty ancillary chunks before its data: Pillow walks them in Python, a few
    microseconds each, so 12 bytes cost what a megapixel does."""

    def chunk(kind: bytes, data: bytes = b"") -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    pixels = chunk(b"IDAT", zlib.compress(b"\x00\x7f"))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"zZZz") * n + pixels + chunk(b"IEND")


def tiff_with_strips(n: int) -> bytes:
    """A 1×n TIFF of one-row strips: Pillow decodes each strip in a Python loop."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((n, 1), np.uint8), rowsperstrip=1)
    return buffer.getvalue()


def rle8_bmp_of_blank_rows(width: int, height: int) -> bytes:
    """An RLE8 BMP whose every row is one pixel and an end of line: Pillow pads each row in a
    Python loop, a pixel at a time, so 250 rows in 2 KB cost seconds at 160,000 pixels wide."""
    return _rle8_bmp(width, height, b"\x01\x07\x00\x00" * height + b"\x00\x01")


def _rle8_bmp(width: int, height: int, rows: bytes) -> bytes:
    """A greyscale RLE8 BMP of `rows`, its compressed pixel data."""
    palette = b"".join(struct.pack("<BBBB", i, i, i, 0) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    header = struct.pack("<2sIHHI", b"BM", offset + len(rows), 0, 0, offset)
    return header + info + palette + rows


def tiff_with_tile(tile: int) -> bytes:
    """A 16×16 TIFF whose tile tags claim tile×tile pixels: libtiff would allocate a whole tile."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((16, 16), np.uint8), tile=(16, 16))
    data = bytearray(buffer.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * i
        tag = struct.unpack_from("<H", data, at)[0]
        if tag in (322, 323):  # TileWidth, TileLength: rewritten as LONGs
            struct.pack_into("<HHII", data, at, tag, 4, 1, tile)
    return bytes(data)


def png(image: Image.Image) -> bytes:
    return encode(image, "PNG", optimize=False, compress_level=9)


def tall_png(height: int) -> bytes:
    """1 pixel wide, `height` tall: a crop scales it to some 248 × 248·height first."""
    return png(Image.new("RGB", (1, height), (10, 200, 10)))


def gif_with_frames(n: int, size: int = 64) -> bytes:
    """An animation of n different frames: counting or walking them decodes every one."""
    frames = [Image.new("L", (size, size), 0) for _ in range(n)]
    for i, frame in enumerate(frames):
        frame.putpixel((i % size, (i // size) % size), 255)
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def small_png() -> bytes:
    return encode(gradient(24, 24), "PNG")
