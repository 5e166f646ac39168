"""model/tensors.py: decoded pixels normalised into exactly the tensor HF's image processor makes."""

from __future__ import annotations

import io

import torch
from PIL import Image
from transformers import ViTImageProcessorPil

from model.preprocess import PreprocessConfig, decode_image
from model.tensors import load_image, normalize
from tests.images import encode, photo

SQUASH = PreprocessConfig()


def test_matches_hf_image_processor_on_a_real_photo() -> None:
    ours = normalize(load_image(encode(photo(), "JPEG", quality=95), 224, SQUASH)[None], SQUASH.mean, SQUASH.std)
    jpeg_decoded = Image.open(io.BytesIO(encode(photo(), "JPEG", quality=95)))
    expected = ViTImageProcessorPil()(images=jpeg_decoded, return_tensors="pt")["pixel_values"]
    assert ours.shape == expected.shape == (1, 3, 224, 224)
    assert (ours - expected).abs().max() <= 1e-6


def test_bicubic_with_imagenet_statistics_matches_hf() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    cfg = PreprocessConfig(interpolation="bicubic", mean=mean, std=std)
    hf = ViTImageProcessorPil(resample=3, image_mean=list(mean), image_std=list(std), size={"height": 64, "width": 64})
    expected = hf(images=photo(), return_tensors="pt")["pixel_values"]
    ours = normalize(load_image(encode(photo()), 64, cfg)[None], cfg.mean, cfg.std)
    assert (ours - expected).abs().max() <= 1e-5


def test_normalize_runs_in_the_requested_dtype() -> None:
    batch = torch.tensor([[[[0, 255]]] * 3], dtype=torch.uint8)
    out = normalize(batch, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out[0, 0, 0].tolist() == [-1.0, 1.0]


def test_load_image_is_the_decoded_pixels_channels_first() -> None:
    data = encode(photo())
    out = load_image(data, 32, SQUASH)
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
    assert torch.equal(out.permute(1, 2, 0), torch.from_numpy(decode_image(data, 32, SQUASH)))
