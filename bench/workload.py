"""The images and request bodies every system receives: real photographs as JPEG files."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image
from skimage import data

SIZES = {"224": (224, 224), "500x375": (500, 375)}  # a model-sized image, and an ImageNet-like photo
PHONE = "4000x3000"  # a 12-megapixel photo, for the decoder alone (python -m bench.probes.decode)
PHONE_GRAIN = PHONE + "+grain"  # the same with a phone's grain and weight (see `jpeg`)


def jpeg(size: str, index: int = 0) -> bytes:
    """scikit-image's bundled photographs, resized to `size` and saved as JPEG (quality 90).

    Upscaled to 4000x3000 such a photo is smooth, and compresses to 0.8 MB. `size` + "+grain"
    adds what a phone camera's photo has, grain (Gaussian noise, σ = 4 levels) saved at quality
    92: 2.3 MB at 4000x3000, the weight of a phone's JPEG. That weight is what costs in draft
    mode, which scales everything but libjpeg's entropy decoding."""
    photos = [data.chelsea(), data.astronaut(), data.coffee()]
    size, _, grain = size.partition("+")
    width, _, height = size.partition("x")
    shape = SIZES.get(size) or (int(width), int(height))
    image = Image.fromarray(photos[index % len(photos)]).convert("RGB").resize(shape, Image.Resampling.BICUBIC)
    quality = 90
    if grain == "grain":
        noise = np.random.default_rng(index).normal(0.0, 4.0, (shape[1], shape[0], 3))
        image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))
        quality = 92
    elif grain:
        raise ValueError(f"unknown image variant {grain!r}: the one known is +grain")
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def json_body(images: list[bytes]) -> bytes:
    """{"images": [base64, …]}: the one body every system here accepts."""
    return json.dumps({"images": [base64.b64encode(i).decode() for i in images]}).encode()
