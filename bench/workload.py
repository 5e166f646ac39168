"""The images and request bodies every system receives: real photographs as JPEG files."""

from __future__ import annotations

import base64
import io
import json

from PIL import Image
from skimage import data

SIZES = {"224": (224, 224), "500x375": (500, 375)}  # a model-sized image, and an ImageNet-like photo
PHONE = "4000x3000"  # a 12-megapixel phone photo, for the decoder alone (python -m bench.decode)


def jpeg(size: str, index: int = 0) -> bytes:
    """scikit-image's bundled photographs, resized to `size` and saved as JPEG (quality 90)."""
    photos = [data.chelsea(), data.astronaut(), data.coffee()]
    width, _, height = size.partition("x")
    shape = SIZES.get(size) or (int(width), int(height))
    image = Image.fromarray(photos[index % len(photos)]).convert("RGB").resize(shape, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def json_body(images: list[bytes]) -> bytes:
    """{"images": [base64, …]}: the one body every system here accepts."""
    return json.dumps({"images": [base64.b64encode(i).decode() for i in images]}).encode()
