"""Plain JPEGs decoded on the GPU (nvJPEG, through torchvision), with the CPU path's geometry.

Optional (`VIT_GPU_DECODE`, docs/DESIGN.md, Decoding on the GPU): where torchvision with CUDA is
installed, a request's ordinary JPEGs are decoded in one batched call on the model's device and
resized there, instead of in the decode processes. Only images that the CPU path would also decode
straight from libjpeg qualify (`plain_jpeg_size`): baseline JPEGs, RGB or greyscale, upright, within the pixel
limit, whose resize needs no oversized intermediate nor padding; everything else stays on the CPU path, with
its limits. Pixels differ from the CPU path's by the decoders' IDCT rounding and by the resampling
arithmetic (float on the device, Pillow's fixed point): a few levels of 255 (tests/model/test_gpu_decode.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from model.preprocess import PreprocessConfig, crop_geometry, is_plain_jpeg, needs_box, open_image


def unavailable(device: torch.device) -> str | None:
    """Why JPEGs cannot be decoded on `device`, or None when they can."""
    if device.type != "cuda":
        return f"the model is on {device.type}, not CUDA"
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception as exc:  # torchvision absent, or built for another torch
        return f"torchvision cannot be imported ({type(exc).__name__}: {exc})"
    return None


def plain_jpeg_size(data: bytes, size: int, cfg: PreprocessConfig, max_pixels: int) -> tuple[int, int] | None:
    """The (width, height) of a JPEG this module decodes, read from its headers only; None for
    anything else, or whose headers are refused: the CPU path takes those, and says why."""
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    try:
        image = open_image(data, max_pixels)
    except ValueError:
        return None
    scaled, _ = crop_geometry(image.width, image.height, size, cfg)
    progressive = image.info.get("progressive") or image.info.get("progression")
    fits = min(scaled) >= size  # else the CPU path pads the window (a resize_size below S)
    if is_plain_jpeg(image) and not progressive and fits and not needs_box(image.width, image.height, scaled):
        return image.size
    return None


def decode_jpegs(images: Sequence[bytes], size: int, cfg: PreprocessConfig, device: torch.device) -> list[torch.Tensor]:
    """`images` (each with a `plain_jpeg_size`) as uint8 (S, S, 3) tensors on `device`, decoded in one call;
    raises if any of them cannot be decoded (nvJPEG returns no partial results)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in images]
    decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    return [resize_on_device(pixels, size, cfg) for pixels in decoded]


def resize_on_device(pixels: torch.Tensor, size: int, cfg: PreprocessConfig) -> torch.Tensor:
    """uint8 (3, H, W) pixels -> uint8 (S, S, 3), resized and cropped as model.preprocess.resize
    does (the same `crop_geometry`; antialiased, as Pillow resamples), on the pixels' device."""
    _, height, width = pixels.shape
    (new_w, new_h), (left, top) = crop_geometry(width, height, size, cfg)
    image = pixels[None].float()
    if (new_w, new_h) != (width, height):
        image = F.interpolate(image, size=(new_h, new_w), mode=cfg.interpolation, antialias=True, align_corners=False)
    window = image[0, :, top : top + size, left : left + size]
    return window.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
