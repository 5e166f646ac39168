"""GPU JPEG decoding's geometry and choice of images (model/gpu_decode.py).

The resize runs wherever its tensor is, so its parity with the CPU path is checked here on the
CPU, from libjpeg's pixels (the decode the CPU path itself uses); nvJPEG's own pixels are checked
only where CUDA and torchvision are present.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import simplejpeg
import torch
from PIL import Image
from skimage import data

from model import gpu_decode
from model.config import preset
from model.preprocess import PreprocessConfig, decode_image
from model.vit import VisionTransformer
from tests.images import encode, gradient, photo
from tests.service.bombs import progressive_jpeg_with_scans

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # 512², 451×300, 600×400, 640×427
# The geometries of the families' processors: google (squash), timm (crop_pct), CLIP (the shorter
# side to S, bicubic, floored offset), DINOv2 (256 then the centre 224, bicubic).
CONFIGS = {
    "squash-bilinear": PreprocessConfig(),
    "crop-bicubic": PreprocessConfig(resize_mode="crop", crop_pct=0.875, interpolation="bicubic"),
    "crop-1.0-floor": PreprocessConfig(resize_mode="crop", crop_pct=1.0, interpolation="bicubic", crop_offset="floor"),
    "crop-256": PreprocessConfig(resize_mode="crop", resize_size=256, interpolation="bicubic"),
    "crop-bilinear": PreprocessConfig(resize_mode="crop", crop_pct=0.9),
}
# Pillow resamples in fixed point, the device in float: bilinear within one level; bicubic's
# overshoot is clamped at a different step (up to 9 levels, at a few pixels of sharp edges).
MAX_DIFF = {"bilinear": 1, "bicubic": 10}
needs_gpu = pytest.mark.skipif(
    gpu_decode.unavailable(torch.device("cuda")) is not None or not torch.cuda.is_available(),
    reason="needs an NVIDIA GPU (CUDA) and torchvision built for it; neither is here",
)


def jpeg(name: str) -> bytes:
    return encode(Image.fromarray(getattr(data, name)()), "JPEG", quality=90)


def on_device(jpeg_bytes: bytes, size: int, cfg: PreprocessConfig) -> np.ndarray:
    """The device path's resize, from libjpeg's pixels, on the CPU."""
    pixels = torch.from_numpy(simplejpeg.decode_jpeg(jpeg_bytes, colorspace="RGB")).permute(2, 0, 1)
    return gpu_decode.resize_on_device(pixels, size, cfg).numpy()


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("size", [32, 224])
def test_the_resize_on_the_device_matches_the_cpu_path(config: str, size: int) -> None:
    cfg = CONFIGS[config]
    for name in PHOTOS:
        image = jpeg(name)
        assert gpu_decode.plain_jpeg_size(image, size, cfg, 40_000_000) == Image.open(io.BytesIO(image)).size
        cpu = decode_image(image, size, cfg, draft=False).astype(int)
        device = on_device(image, size, cfg)
        assert device.shape == (size, size, 3) and device.dtype == np.uint8
        diff = np.abs(cpu - device)
        assert diff.max() <= MAX_DIFF[cfg.interpolation], (name, diff.max())
        assert diff.mean() < 0.25, (name, diff.mean())


@torch.inference_mode()
@pytest.mark.parametrize("config", CONFIGS)
def test_embeddings_of_device_resized_pixels_match_the_cpu_paths(config: str) -> None:
    cfg = CONFIGS[config]
    torch.manual_seed(0)
    model = VisionTransformer(dataclasses.replace(preset("vit_test_tiny"), image_size=224, patch_size=16)).eval()

    def embed(pixels: list[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
        return model((batch - 0.5) / 0.5).embedding

    images = [jpeg(name) for name in PHOTOS]
    cpu = embed([decode_image(image, 224, cfg, draft=False) for image in images])
    device = embed([on_device(image, 224, cfg) for image in images])
    assert torch.nn.functional.cosine_similarity(cpu, device).min() >= 0.999


def test_ordinary_jpegs_are_taken_and_everything_else_left_to_the_cpu_path() -> None:
    cfg, limit = PreprocessConfig(resize_mode="crop", crop_pct=0.875), 40_000_000
    rotated = photo().getexif()
    rotated[0x0112] = 6
    cases = {
        "baseline RGB": (encode(photo(), "JPEG"), True),
        "greyscale": (encode(photo().convert("L"), "JPEG"), True),
        "progressive": (encode(photo(), "JPEG", progressive=True), False),
        "many scans": (progressive_jpeg_with_scans(40), False),
        "EXIF-rotated": (encode(photo(), "JPEG", exif=rotated), False),
        "CMYK": (encode(photo().convert("CMYK"), "JPEG"), False),
        "PNG": (encode(photo()), False),
        "over the pixel limit": (encode(photo(), "JPEG"), False),
        "1000:1": (encode(gradient(4000, 4), "JPEG"), False),  # its crop would need an oversized intermediate
        "not an image": (b"\xff\xd8\xff" + b"\0" * 100, False),
    }
    for case, (image, expected) in cases.items():
        max_pixels = 1000 if case == "over the pixel limit" else limit
        assert (gpu_decode.plain_jpeg_size(image, 224, cfg, max_pixels) is not None) is expected, case


def test_a_window_the_cpu_path_would_pad_is_left_to_it() -> None:
    small = PreprocessConfig(resize_mode="crop", resize_size=200)  # the shorter side to 200 < S
    assert gpu_decode.plain_jpeg_size(encode(photo(), "JPEG"), 224, small, 40_000_000) is None


def test_jpegs_cannot_be_decoded_on_a_cpu_model() -> None:
    assert gpu_decode.unavailable(torch.device("cpu")) == "the model is on cpu, not CUDA"


@needs_gpu
@pytest.mark.parametrize("config", CONFIGS)
def test_nvjpeg_matches_the_cpu_path(config: str) -> None:
    cfg = CONFIGS[config]
    images = [jpeg(name) for name in PHOTOS]
    decoded = gpu_decode.decode_jpegs(images, 224, cfg, torch.device("cuda"))
    for image, pixels in zip(images, decoded, strict=True):
        assert pixels.device.type == "cuda" and pixels.shape == (224, 224, 3) and pixels.dtype == torch.uint8
        diff = np.abs(decode_image(image, 224, cfg, draft=False).astype(int) - pixels.cpu().numpy())
        # nvJPEG's IDCT and upsampling round differently from libjpeg-turbo's: a few more levels
        assert diff.max() <= MAX_DIFF[cfg.interpolation] + 8 and diff.mean() < 1.0
