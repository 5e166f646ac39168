"""Image bytes for tests, made with Pillow or taken from scikit-image's bundled photos."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from skimage import data


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def photo() -> Image.Image:
    """A real 451×300 RGB photograph (scikit-image's `chelsea`, a cat)."""
    return Image.fromarray(data.chelsea())


def gradient(width: int = 40, height: int = 30) -> Image.Image:
    """An RGB image whose every pixel differs, so orientation and crops are visible."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width×height: a decompression bomb's header."""
    good = encode(Image.new("L", (1, 1)))
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    ihdr_chunk = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return good[:8] + ihdr_chunk + good[8 + 25 :]


def pixels(seed: int = 0, size: int = 32) -> np.ndarray:
    """Random uint8 (S, S, 3) pixels, as the decode processes hand images over."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def normalised(seed: int = 0, size: int = 32) -> np.ndarray:
    """Random float32 (3, S, S) values, as /v2's pixel_values sends them (taken as they are)."""
    return np.random.default_rng(seed).standard_normal((3, size, size), dtype=np.float32)
