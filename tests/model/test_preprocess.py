"""docs/API.md, Preprocessing: decoding, orientation, colour modes, resize modes, and HF's processor's geometry."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model.preprocess import (
    ALLOWED_FORMATS,
    MAX_JPEG_SCANS,
    MAX_PYTHON_DECODER_PIXELS,
    ImageError,
    ImageTooLarge,
    PreprocessConfig,
    UnsupportedImageFormat,
    crop_box_resize,
    decode_image,
    resize,
    shorter_side,
)
from model.tensors import load_image
from tests.images import encode, gradient, photo, png_header_claiming
from tests.service.bombs import progressive_jpeg_with_scans, rle8_bmp, tiff_with_tile

SQUASH = PreprocessConfig()


def test_output_is_uint8_chw_at_model_size() -> None:
    out = load_image(encode(photo()), 28, SQUASH)
    assert out.dtype == torch.uint8 and out.shape == (3, 28, 28)


def test_squash_at_native_size_is_not_resampled() -> None:
    img = gradient(32, 32)
    out = load_image(encode(img), 32, SQUASH)
    assert np.array_equal(out.permute(1, 2, 0).numpy(), np.asarray(img))


def test_crop_takes_the_centre_after_scaling_the_shorter_side() -> None:
    img = gradient(40, 20)
    cfg = PreprocessConfig(resize_mode="crop", crop_pct=1.0)
    out = load_image(encode(img), 20, cfg)  # shorter side already 20: a pure centre crop
    assert np.array_equal(out.permute(1, 2, 0).numpy(), np.asarray(img)[:, 10:30])
    scaled = load_image(encode(photo()), 224, PreprocessConfig(resize_mode="crop", crop_pct=0.875))
    assert scaled.shape == (3, 224, 224)


def test_exif_orientation_is_applied() -> None:
    img = gradient(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated = load_image(
        encode(img, "JPEG", exif=exif, quality=100), 30, PreprocessConfig(resize_mode="crop", crop_pct=1)
    )
    upright = np.asarray(img.transpose(Image.Transpose.ROTATE_270))  # 30 wide, 40 high
    assert rotated.shape == (3, 30, 30)
    crop = upright[5:35]
    assert np.abs(rotated.permute(1, 2, 0).numpy().astype(int) - crop.astype(int)).mean() < 4  # JPEG noise


@pytest.mark.parametrize(
    ("image", "expected_rgb"),
    [
        (Image.new("RGBA", (4, 4), (255, 0, 0, 0)), (255, 255, 255)),  # transparent -> white
        (Image.new("RGBA", (4, 4), (255, 0, 0, 255)), (255, 0, 0)),
        (Image.new("LA", (4, 4), (0, 0)), (255, 255, 255)),
        (Image.new("L", (4, 4), 77), (77, 77, 77)),
        (Image.new("1", (4, 4), 1), (255, 255, 255)),
        (Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
        (Image.fromarray(np.full((4, 4), 65535, np.uint16)), (255, 255, 255)),  # 16-bit grey, scaled
        (Image.fromarray(np.full((4, 4), 32896, np.uint16)), (128, 128, 128)),
    ],
    ids=["rgba-clear", "rgba-opaque", "la", "grey", "1-bit", "cmyk", "16-bit-max", "16-bit-mid"],
)
def test_every_mode_becomes_rgb(image: Image.Image, expected_rgb: tuple[int, int, int]) -> None:
    fmt = "JPEG" if image.mode == "CMYK" else "TIFF" if image.mode.startswith("I") else "PNG"
    out = load_image(encode(image, fmt, **({"quality": 100} if fmt == "JPEG" else {})), 4, SQUASH)
    assert out[:, 0, 0].tolist() == list(expected_rgb)


def test_palette_with_transparency_is_composited_on_white() -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    data = encode(img, "PNG", transparency=1)
    assert load_image(data, 4, SQUASH)[:, 0, 0].tolist() == [255, 255, 255]


def test_gif_uses_the_first_frame() -> None:
    frames = [Image.new("P", (8, 8), i) for i in range(3)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    data = encode(frames[1], "GIF", save_all=True, append_images=[frames[0], frames[2]])
    assert load_image(data, 8, SQUASH)[:, 0, 0].tolist() == [255, 0, 0]


def test_disallowed_format_is_refused() -> None:
    with pytest.raises(UnsupportedImageFormat, match="ICO"):
        load_image(encode(Image.new("RGB", (16, 16)), "ICO"), 8, SQUASH)


def test_bomb_is_refused_from_the_header() -> None:
    with pytest.raises(ImageTooLarge, match="limit"):
        load_image(png_header_claiming(20_000, 20_000), 8, SQUASH, max_pixels=40_000_000)


def test_of_the_allowed_formats_only_rle_bmp_is_decoded_in_python() -> None:
    """Pillow's Python decoders are registered in Image.DECODERS; a new one in a plugin of an
    allowed format would get the Python decoders' pixel limit without being reviewed."""
    Image.init()
    plugins = {Image.OPEN[fmt][0].__module__ for fmt in ALLOWED_FORMATS}
    assert {name for name, decoder in Image.DECODERS.items() if decoder.__module__ in plugins} == {"bmp_rle"}


def test_an_image_decoded_in_python_is_limited_to_a_megapixel() -> None:
    assert load_image(rle8_bmp(1000, 1000), 8, SQUASH).shape == (3, 8, 8)
    with pytest.raises(ImageTooLarge, match=f"runs in Python, and is allowed at most {MAX_PYTHON_DECODER_PIXELS}"):
        load_image(rle8_bmp(1001, 1000), 8, SQUASH)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, world",
        b"<html><body>no</body></html>",
        encode(gradient(), "PNG")[:60],
        encode(photo(), "JPEG")[:500],
    ],
    ids=["empty", "text", "html", "truncated-png", "truncated-jpeg"],
)
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(ImageError):
        load_image(data, 8, SQUASH)


@pytest.mark.parametrize(
    ("field", "value"),
    [("resize_mode", "stretch"), ("interpolation", "nearest"), ("crop_pct", 0.0), ("std", (1, 0, 1))],
)
def test_bad_preprocess_settings(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field.split("_")[0]):
        PreprocessConfig(**{field: value})


def test_an_extreme_aspect_ratio_is_resized_without_a_huge_intermediate() -> None:
    """1×1,000,000 scaled for a crop would be ~248×248,000,000 pixels first; squashed, 224×1,000,000."""
    tall = encode(Image.new("RGB", (1, 1_000_000), (10, 200, 30)), "PNG")
    for cfg in (PreprocessConfig(resize_mode="crop"), SQUASH):
        out = load_image(tall, 224, cfg, max_pixels=40_000_000)
        assert out.shape == (3, 224, 224) and (torch.tensor([10, 200, 30]) == out.reshape(3, -1).T).all()


def test_the_bounded_crop_matches_the_reference_crop_within_rounding() -> None:
    img = photo().rotate(90, expand=True)  # 300×451, cropped at 224 / 0.9 as `resize` would
    scaled = (248, round(451 * 248 / 300))
    left, top = round((scaled[0] - 224) / 2), round((scaled[1] - 224) / 2)
    full = img.resize(scaled, Image.Resampling.BICUBIC).crop((left, top, left + 224, top + 224))
    reference = np.asarray(full, dtype=int)
    bounded = np.asarray(crop_box_resize(img, 224, scaled, (left, top), Image.Resampling.BICUBIC), dtype=int)
    assert np.abs(bounded - reference).max() <= 2 and np.abs(bounded - reference).mean() < 0.5  # Pillow's rounding


def test_sixteen_bit_images_are_scaled_the_same_in_chunks() -> None:
    values = np.random.default_rng(0).integers(0, 65536, (1100, 1000), dtype=np.uint16)  # over one chunk
    out = load_image(encode(Image.fromarray(values), "TIFF"), 1000, PreprocessConfig(resize_mode="crop", crop_pct=1))
    expected = (values[50:1050].astype(np.float64) * (255 / 65535) + 0.5).astype(np.uint8)
    assert np.array_equal(out[0].numpy(), expected)


def test_a_tiff_whose_tile_is_over_the_pixel_limit_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLarge, match="TIFF tile"):
        load_image(tiff_with_tile(65536), 8, SQUASH)


def test_a_jpeg_with_thousands_of_scans_is_refused_and_a_progressive_one_decodes() -> None:
    with pytest.raises(ImageError, match="scans"):
        load_image(progressive_jpeg_with_scans(MAX_JPEG_SCANS + 1, size=64), 8, SQUASH)
    assert load_image(progressive_jpeg_with_scans(1, size=64), 8, SQUASH).shape == (3, 8, 8)


def test_only_the_first_page_of_a_long_tiff_is_touched() -> None:
    pages = [Image.new("L", (4, 4), i % 256) for i in range(5000)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert load_image(data, 4, SQUASH)[:, 0, 0].tolist() == [0, 0, 0]


def test_jpeg_draft_decodes_a_large_photo_within_a_few_levels_of_a_full_decode() -> None:
    """DCT scaling (1/8 here: 4000×3000 for a 224 crop) against the full decode and resize."""
    data = encode(photo().resize((4000, 3000)), "JPEG", quality=90)
    for cfg in (PreprocessConfig(resize_mode="crop", crop_pct=0.875, interpolation="bicubic"), SQUASH):
        full = load_image(data, 224, cfg).numpy().astype(int)
        drafted = decode_image(data, 224, cfg, draft=True).transpose(2, 0, 1).astype(int)
        assert np.abs(drafted - full).max() <= 7 and np.abs(drafted - full).mean() < 1


def test_jpeg_draft_leaves_images_under_twice_the_needed_size_exact() -> None:
    data = encode(photo(), "JPEG", quality=90)  # 451×300: not twice a 224 crop's 256
    cfg = PreprocessConfig(resize_mode="crop", crop_pct=0.875)
    assert np.array_equal(decode_image(data, 224, cfg, draft=True), decode_image(data, 224, cfg))


def _pillow_only(data: bytes, needed: int) -> Image.Image:
    """Pillow's own decode (at the DCT scale for `needed` pixels, when given), in RGB."""
    image = Image.open(io.BytesIO(data))
    if needed:
        image.draft(None, (needed, needed))
    return image.convert("RGB")


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("draft", [False, True], ids=["full", "draft"])
def test_an_ordinary_jpeg_gets_pillows_pixels_from_simplejpeg(mode: str, draft: bool) -> None:
    """Upright RGB and greyscale JPEGs are decoded by simplejpeg: exactly Pillow's pixels (at the
    same DCT scale in draft mode: 2000×1400 at 1/2 for a 224 crop), resized as Pillow's would be."""
    data = encode(photo().resize((2000, 1400)).convert(mode), "JPEG", quality=90)
    cfg = PreprocessConfig(resize_mode="crop", crop_pct=0.875, interpolation="bicubic")
    expected = resize(_pillow_only(data, 2 * shorter_side(224, cfg) if draft else 0), 224, cfg)
    assert np.array_equal(decode_image(data, 224, cfg, draft=draft), np.asarray(expected))
