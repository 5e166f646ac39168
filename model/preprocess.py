"""Image bytes -> uint8 pixels (docs/API.md, Preprocessing); normalisation runs later, on the device.

Decoding is limited to an allow-list of formats, and everything that would make a small file
cost much is refused from its headers before any pixel is decoded: the pixel count, TIFF tiles
larger than the pixel budget, JPEGs with more scans than any real encoder writes. What is
decoded never needs an intermediate larger than the image itself (extreme aspect ratios are
resized without one), and only the first frame of an animation is ever touched.

Pillow parses every image's headers (format, size, EXIF orientation, mode); the pixels of an
ordinary JPEG (RGB or greyscale, upright) are decoded by simplejpeg, libjpeg-turbo called without
Pillow's per-image overhead: the same pixels, faster for small photos (`python -m bench.probes.decoders`,
docs/BENCHMARKS.md). Everything else is decoded by Pillow.

This module needs only Pillow, simplejpeg and numpy, never torch: the service's decode processes
import it. Pixels become a model's input in model/tensors.py.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import simplejpeg
from PIL import Image, ImageOps

ResizeMode = Literal["squash", "crop"]
Interpolation = Literal["bilinear", "bicubic"]
CropOffset = Literal["round", "floor"]

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
# A progressive JPEG is decoded once per scan over the whole image: libjpeg's own progressions
# use at most ~10 scans, so more than this is a time bomb (thousands of scans in a few KB).
MAX_JPEG_SCANS = 64
# Pillow decodes a few formats in Python (`Image.DECODERS`; of the allowed ones, RLE-compressed
# BMP), at some 100 ns a pixel whatever the file's size: a 2 KB file can claim seconds of it. Images
# such a decoder would decode are limited to this many pixels (docs/RELIABILITY.md).
MAX_PYTHON_DECODER_PIXELS = 1_000_000
# Resizing a very tall image straight to S×S would first widen every one of its rows to S; above
# this many intermediate pixels, the vertical pass runs first instead (see `resize`).
_MAX_INTERMEDIATE_PIXELS = 1 << 22
# High-bit-depth modes are scaled to 8 bits this many values at a time, so the float temporaries
# stay small whatever the image size.
_CHUNK = 1 << 20
_ORIENTATION = 0x0112  # the EXIF tag

# Pillow warns, rather than raises, about corrupt TIFF tags and large images; this module decides
# itself what to refuse (open_image, load_image). Filters set once here, at import, rather than
# with catch_warnings around each call, which is not thread-safe (the benchmarks decode on threads).
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class ImageError(ValueError):
    """The bytes are not an image this service decodes (corrupt, truncated, not an image)."""


class UnsupportedImageFormat(ImageError):
    """A real image, but in a format outside the allow-list."""


class ImageTooLarge(ImageError):
    """The header claims more pixels than allowed."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes S×S pixels: `squash` resizes both sides (to S, or to `resize_size`
    and then the centre S×S: DeiT's processor); `crop` resizes the shorter side (to `resize_size`,
    or floor(S / crop_pct), timm's rule) and takes the centre S×S. The longer side is floored, as
    torchvision and transformers do; the crop's offset is rounded (torchvision, timm) or floored
    (transformers)."""

    resize_mode: ResizeMode = "squash"
    crop_pct: float = 0.9  # used by "crop" without resize_size: the shorter side goes to S / crop_pct
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resize_size: int = 0  # the side resized to before the centre crop; 0: see above
    crop_offset: CropOffset = "round"

    def __post_init__(self) -> None:
        if self.resize_mode not in ("squash", "crop"):
            raise ValueError(f"resize_mode must be 'squash' or 'crop', got {self.resize_mode!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need three values each (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if self.resize_size < 0 or self.crop_offset not in ("round", "floor"):
            raise ValueError("resize_size must be >= 0 and crop_offset 'round' or 'floor'")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        fields: dict[str, Any] = {k: tuple(v) if k in ("mean", "std") else v for k, v in data.items()}
        return cls(**fields)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and check format and size; nothing is decoded yet."""
    if not data:
        raise ImageError("empty image")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"image header claims more pixels than the limit ({max_pixels})") from None
    except Exception as exc:  # Pillow's parsers raise many exception types on hostile bytes
        raise ImageError("cannot identify image data") from exc
    if image.format not in ALLOWED_FORMATS:
        raise UnsupportedImageFormat(
            f"image format {image.format} is not allowed; allowed: {', '.join(sorted(ALLOWED_FORMATS))}"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}×{height} = {width * height} pixels; the limit is {max_pixels}")
    if image.format == "TIFF":
        tile = _tiff_tile_pixels(image)
        if tile > max_pixels:
            raise ImageTooLarge(f"a TIFF tile of {tile} pixels is over the limit ({max_pixels})")
    elif image.format == "JPEG" and data.count(b"\xff\xda") > MAX_JPEG_SCANS:  # SOS markers: an upper bound
        raise ImageError(f"a JPEG with more than {MAX_JPEG_SCANS} scans is refused")
    if image.tile and image.tile[0][0] in Image.DECODERS and width * height > MAX_PYTHON_DECODER_PIXELS:
        raise ImageTooLarge(
            f"a {image.format} of {width}×{height} pixels is refused: its decoder ({image.tile[0][0]}) runs in"
            f" Python, and is allowed at most {MAX_PYTHON_DECODER_PIXELS} pixels"
        )
    return image


def _tiff_tile_pixels(image: Image.Image) -> int:
    """The pixels of one TIFF tile (0 for a striped TIFF): libtiff allocates a whole tile at once."""
    tags = getattr(image, "tag_v2", {})
    width, length = tags.get(322), tags.get(323)  # TileWidth, TileLength
    try:
        return int(width) * int(length) if width is not None and length is not None else 0
    except (TypeError, ValueError):
        raise ImageError("TIFF tile size tags are malformed") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied, then RGB whatever the mode (alpha composited on white).

    No full-size copy is made where nothing changes: the orientation is applied in place (Pillow
    otherwise returns a copy of an image without one) and an RGB image is not converted (a copy
    too); the two copies were a quarter of a decode process's time for a 224×224 JPEG.
    An animation is opened on its first frame and stays there: counting or walking its frames
    would decode them all (thousands, in a small GIF or TIFF).
    """
    ImageOps.exif_transpose(image, in_place=True)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8bit(image)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale -> 8-bit "L", scaled by the range in use
    (65535, or 255 for 32-bit values that fit in a byte; 1.0 or 255 for floats, NaN as 0).
    Converted a chunk at a time, so that memory stays near the image's own size."""
    array = np.asarray(image)
    flat = array.reshape(-1)
    is_float = array.dtype.kind == "f"

    def values(start: int) -> np.ndarray:
        chunk = flat[start : start + _CHUNK]
        return np.nan_to_num(chunk, nan=0.0) if is_float else chunk

    starts = range(0, flat.size, _CHUNK)
    top = max((float(values(i).max()) for i in starts), default=0.0)
    wide = array.dtype.itemsize == 2 or top > 255  # 16-bit, or 32-bit values past a byte
    peak = (1.0 if top <= 1.0 else 255.0) if is_float else (65535.0 if wide else 255.0)
    out = np.empty(flat.size, dtype=np.uint8)
    for i in starts:
        out[i : i + _CHUNK] = (values(i).clip(0, peak) * (255 / peak) + 0.5).astype(np.uint8)
    return Image.fromarray(out.reshape(array.shape))


def shorter_side(size: int, cfg: PreprocessConfig) -> int:
    """The side `resize` scales an image's shorter side to (both sides, for squash): resize_size
    if set, else S (squash) or S / crop_pct (crop; timm's floor, so crop_pct=1 means S)."""
    if cfg.resize_size:
        return cfg.resize_size
    return size if cfg.resize_mode == "squash" else int(size / cfg.crop_pct)


def crop_geometry(width: int, height: int, size: int, cfg: PreprocessConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """The size a width×height image is resized to, and the offset of the S×S window taken from
    it: `squash` (to S×S, or to resize_size and its centre), or `crop` (the shorter side to
    `shorter_side`, the longer floored, as torchvision and transformers compute it; the centre)."""
    scale_to = shorter_side(size, cfg)
    if cfg.resize_mode == "squash":
        new_w = new_h = scale_to
    elif width <= height:
        new_w, new_h = scale_to, int(scale_to * height / width)
    else:
        new_w, new_h = int(scale_to * width / height), scale_to
    if cfg.crop_offset == "floor":
        return (new_w, new_h), ((new_w - size) // 2, (new_h - size) // 2)
    return (new_w, new_h), (round((new_w - size) / 2), round((new_h - size) / 2))


def needs_box(width: int, height: int, scaled: tuple[int, int]) -> bool:
    """Whether an intermediate image `scaled` would be larger than the source and
    `_MAX_INTERMEDIATE_PIXELS` (a 1×1,000,000 image cropped would first be 248×248,000,000)."""
    return scaled[0] * scaled[1] > max(width * height, _MAX_INTERMEDIATE_PIXELS)


def resize(image: Image.Image, size: int, cfg: PreprocessConfig) -> Image.Image:
    """Resized and cropped by `crop_geometry`, as the reference transforms do (PIL's resize, then
    the crop), exactly, unless the intermediate image `needs_box`: then the crop resamples only
    the source region under the S×S window (Pillow's `box`, with the same scale: equal up to ±2 of
    Pillow's rounding), and a tall squash runs its vertical pass first.
    """
    resample = _RESAMPLE[cfg.interpolation]
    width, height = image.size
    scaled, (left, top) = crop_geometry(width, height, size, cfg)
    if scaled == (size, size):
        if image.size == (size, size):
            return image
        if needs_box(width, height, (size, height)):  # Pillow's horizontal pass first would widen every row
            image = image.resize((width, size), resample)
        return image.resize((size, size), resample)
    if needs_box(width, height, scaled):
        return crop_box_resize(image, size, scaled, (left, top), resample)
    if scaled != image.size:
        image = image.resize(scaled, resample)
    return image.crop((left, top, left + size, top + size))


def crop_box_resize(
    image: Image.Image, size: int, scaled: tuple[int, int], offset: tuple[int, int], resample: Image.Resampling
) -> Image.Image:
    """The S×S crop at `offset` of `image` resized to `scaled`, resampling only the region under it."""
    sx, sy = image.width / scaled[0], image.height / scaled[1]  # source pixels per scaled pixel
    left, top = offset
    return image.resize((size, size), resample, box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))


def is_plain_jpeg(image: Image.Image) -> bool:
    """A JPEG whose decoder's RGB output is the image: RGB or greyscale, upright (no EXIF rotation)."""
    return image.format == "JPEG" and image.mode in ("RGB", "L") and image.getexif().get(_ORIENTATION, 1) == 1


def decode_image(
    data: bytes, size: int, cfg: PreprocessConfig, max_pixels: int = 40_000_000, draft: bool = False
) -> np.ndarray:
    """Decode, orient, convert and resize one image: uint8 (size, size, 3), C-contiguous.

    With `draft`, a JPEG at least twice the size the resize needs is decoded at 1/2, 1/4 or 1/8
    of its size by libjpeg's DCT scaling (never below twice that size): a large photo decodes several
    times faster (docs/BENCHMARKS.md), its pixels within a few levels of 255 of a full decode once resized.
    """
    image = open_image(data, max_pixels)
    needed = 2 * shorter_side(size, cfg) if draft and image.format == "JPEG" else 0
    try:
        if is_plain_jpeg(image):
            width, height = _draft_size(image.size, needed)
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=width, min_height=height)
            if pixels.shape[:2] == (size, size) and cfg.resize_mode == "squash" and shorter_side(size, cfg) == size:
                return pixels  # writable, C-contiguous: resizing would change nothing
            image = Image.fromarray(pixels)
        elif needed:
            image.draft(None, (needed, needed))  # square: the same whatever the EXIF orientation
        image = resize(to_rgb(image), size, cfg)
        return np.array(image, dtype=np.uint8)  # a copy of its own: writable, C-contiguous
    except MemoryError:
        raise ImageTooLarge("decoding this image needs more memory than allowed") from None
    except Exception as exc:  # any decoder failure on untrusted bytes means a bad image
        raise ImageError(f"image data is corrupt or truncated ({type(exc).__name__})") from exc


def _draft_size(size: tuple[int, int], needed: int) -> tuple[int, int]:
    """The size Pillow's draft mode decodes a JPEG of `size` at, for `needed` pixels a side (0:
    full size): scaled by the largest of 1/2, 1/4, 1/8 that keeps both sides at least `needed`.
    libjpeg-turbo also scales by 3/8, 5/8, …; asking simplejpeg for exactly this size keeps the
    two decoders' pixels the same."""
    width, height = size
    room = min(width, height) // needed if needed else 1
    scale = next((s for s in (8, 4, 2) if s <= room), 1)
    return -(-width // scale), -(-height // scale)
