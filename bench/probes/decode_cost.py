"""`python -m bench.probes.decode_cost`: service/decode_cost.py's expected decode times against
measured ones, on one core, for the formats the service accepts.

Each image (scikit-image's photographs as the benchmark's JPEGs, a 3-megapixel photograph in every
format, flat 16–40 megapixel images) is decoded and resized to 224 as a decode process does it
(`decode_image`, draft scaling on, the service's default), `--rounds` times; the fastest time is
printed beside `expected_seconds` and their ratio. The expected time is meant as an upper bound:
a ratio (measured ÷ expected) above 1 is an image the cost model undercounts.
"""

from __future__ import annotations

import argparse
import io
import time

from PIL import Image
from skimage import data

from bench.procfs import cpu_model
from bench.workload import PHONE, PHONE_GRAIN, jpeg
from model.preprocess import PreprocessConfig, decode_image
from service.decode_cost import expected_seconds

CONFIG = PreprocessConfig(resize_mode="crop", crop_pct=0.875, interpolation="bicubic")
LIMIT = 40_000_000


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def images() -> dict[str, bytes]:
    photo = Image.fromarray(data.astronaut()).resize((2000, 1500))
    return {
        "JPEG 500×375": jpeg("500x375"),
        "JPEG 12 MP": jpeg(PHONE),
        "JPEG 12 MP, grain": jpeg(PHONE_GRAIN),
        "JPEG 3 MP": encode(photo, "JPEG", quality=90),
        "JPEG 3 MP, progressive": encode(photo, "JPEG", quality=90, progressive=True),
        "PNG 3 MP": encode(photo, "PNG"),
        "GIF 3 MP": encode(photo.convert("P"), "GIF"),
        "WebP 3 MP": encode(photo, "WEBP"),
        "WebP 3 MP, lossless": encode(photo, "WEBP", lossless=True),
        "BMP 3 MP": encode(photo, "BMP"),
        "TIFF 3 MP": encode(photo, "TIFF"),
        "TIFF 3 MP, LZW": encode(photo, "TIFF", compression="tiff_lzw"),
        "PNG 40 MP, flat": encode(Image.new("L", (8000, 5000)), "PNG"),
        "GIF 40 MP, flat": encode(Image.new("P", (8000, 5000)), "GIF"),
        "WebP 16 MP, flat": encode(Image.new("RGB", (4000, 4000)), "WEBP"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probes.decode_cost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{cpu_model()}, {time.strftime('%Y-%m-%d')}: decode and resize to 224, fastest of {args.rounds}")
    for name, image in images().items():
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            decode_image(image, 224, CONFIG, LIMIT, draft=True)
            times.append(time.perf_counter() - start)
        measured, expected = min(times), expected_seconds(image, LIMIT)
        print(
            f"{name:24s} {len(image) / 1e3:7.0f} KB  measured {measured * 1e3:7.1f} ms"
            f"  expected {expected * 1e3:7.1f} ms  ({measured / expected:.2f})"
        )


if __name__ == "__main__":
    main()
