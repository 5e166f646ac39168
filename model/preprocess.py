"""Image bytes -> uint8 (3, S, S) tensors, per SPEC §3; normalisation runs later, on the device.

Decoding is limited to an allow-list of formats; the pixel count is read from the header
before any pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps

ResizeMode = Literal["squash", "crop"]
Interpolation = Literal["bilinear", "bicubic"]

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})

# Pillow warns, rather than raises, about corrupt TIFF tags and large images; this module decides
# itself what to refuse (open_image, load_image). Filters set once here, since catch_warnings is
# not thread-safe and decoding runs on a pool of threads.
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
    resize_mode: ResizeMode = "squash"
    crop_pct: float = 0.9  # used by "crop": the shorter side goes to S / crop_pct
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

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
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        fields: dict[str, Any] = {k: tuple(v) if k in ("mean", "std") else v for k, v in data.items()}
        return cls(**fields)


# Defaults by checkpoint format (SPEC §3); HF directories read preprocessor_config.json.
GOOGLE_DEFAULTS = PreprocessConfig(resize_mode="squash", interpolation="bilinear")
TIMM_DEFAULTS = PreprocessConfig(resize_mode="crop", crop_pct=0.9, interpolation="bicubic")
HF_DEFAULTS = PreprocessConfig(resize_mode="squash", interpolation="bilinear")

_HF_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def from_hf_processor(data: dict[str, Any], image_size: int) -> PreprocessConfig:
    """Map an HF `preprocessor_config.json` (ViT/DeiT image processors) onto this config."""
    resample = data.get("resample", 2)
    if resample not in _HF_RESAMPLE:
        raise ValueError(f"preprocessor_config.json: resample {resample} is not bilinear (2) or bicubic (3)")
    normalize = data.get("do_normalize", True)
    fields: dict[str, Any] = {
        "resize_mode": "squash",
        "interpolation": _HF_RESAMPLE[resample],
        "mean": tuple(data.get("image_mean", HF_DEFAULTS.mean)) if normalize else (0.0, 0.0, 0.0),
        "std": tuple(data.get("image_std", HF_DEFAULTS.std)) if normalize else (1.0, 1.0, 1.0),
    }
    size, crop = data.get("size", {}), data.get("crop_size", {})
    if data.get("do_center_crop") and "shortest_edge" in size and crop:  # DeiT-style: resize, then centre crop
        fields |= {"resize_mode": "crop", "crop_pct": crop.get("height", image_size) / size["shortest_edge"]}
    return PreprocessConfig(**fields)


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
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied, then RGB whatever the mode (alpha composited on white)."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # animated GIF/WebP/TIFF: the first frame
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.int64 if mode == "I" else np.uint16)
        peak = 65535.0 if mode != "I" or array.max() > 255 else 255.0
        image = Image.fromarray((array.clip(0, peak) * (255 / peak) + 0.5).astype(np.uint8), mode="L")
    elif mode == "F":
        floats = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
        peak = 1.0 if floats.max() <= 1.0 else 255.0
        image = Image.fromarray((floats.clip(0, peak) * (255 / peak) + 0.5).astype(np.uint8), mode="L")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize(image: Image.Image, size: int, cfg: PreprocessConfig) -> Image.Image:
    """`squash` to S×S, or `crop`: shorter side to S / crop_pct then the centre S×S."""
    resample = _RESAMPLE[cfg.interpolation]
    if cfg.resize_mode == "squash":
        return image if image.size == (size, size) else image.resize((size, size), resample)
    scale_to = int(size / cfg.crop_pct)  # timm's floor, so crop_pct=1 means no resampling at S
    width, height = image.size
    if width <= height:
        new_w, new_h = scale_to, max(size, round(height * scale_to / width))
    else:
        new_w, new_h = max(size, round(width * scale_to / height)), scale_to
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), resample)
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    return image.crop((left, top, left + size, top + size))


def load_image(data: bytes, size: int, cfg: PreprocessConfig, max_pixels: int = 40_000_000) -> torch.Tensor:
    """Decode, orient, convert and resize one image: uint8 (3, size, size)."""
    image = open_image(data, max_pixels)
    try:
        image = resize(to_rgb(image), size, cfg)
        array = np.asarray(image, dtype=np.uint8)
    except Exception as exc:  # any decoder failure on untrusted bytes means a bad image
        raise ImageError(f"image data is corrupt or truncated ({type(exc).__name__})") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def normalize(
    batch: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 (B, 3, S, S) on any device -> (x/255 - mean) / std in `dtype`, computed in float32."""
    m = torch.tensor(mean, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1)
    return ((batch.float() / 255 - m) / s).to(dtype)
