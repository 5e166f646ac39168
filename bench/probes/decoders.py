"""`python -m bench.probes.decoders`: JPEG decoders compared: Pillow, the service's (simplejpeg for
ordinary JPEGs, model.preprocess.decode_image) and PyTurboJPEG.

Each decodes the benchmark's JPEGs (224×224, 500×375, and a 12-megapixel phone photo) and
resizes them to 224×224 as the service does (squash, bilinear, Pillow's resize for all, so only
the decoder differs); the phone photo also at reduced scale (Pillow's draft mode; the same
1/2, 1/4 or 1/8 factor in the others). Printed: CPU ms per image (median of `--rounds`, the
variants in turn) and the largest pixel difference from Pillow's full decode. A decoder that is
not installed is skipped with the reason: simplejpeg ships wheels with libjpeg-turbo inside,
PyTurboJPEG needs the system's libturbojpeg (3.x for PyTurboJPEG 2).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from bench.workload import PHONE, SIZES, jpeg
from model.preprocess import PreprocessConfig, decode_image, open_image, resize, shorter_side, to_rgb

CONFIG = PreprocessConfig()  # squash, bilinear: the service's default for a preset
SIZE = 224
Decoder = Callable[[bytes, bool], np.ndarray]


def _pillow(data: bytes, scaled: bool) -> np.ndarray:
    image = open_image(data, 40_000_000)
    if scaled:
        needed = 2 * shorter_side(SIZE, CONFIG)
        image.draft(None, (needed, needed))
    return np.array(resize(to_rgb(image), SIZE, CONFIG))


def _service(data: bytes, scaled: bool) -> np.ndarray:
    return decode_image(data, SIZE, CONFIG, draft=scaled)


def _resized(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(resize(Image.fromarray(rgb), SIZE, CONFIG))


def _decoders() -> tuple[dict[str, Decoder], dict[str, str]]:
    decoders: dict[str, Decoder] = {"pillow": _pillow, "service (simplejpeg)": _service}
    missing: dict[str, str] = {}
    try:
        from turbojpeg import TurboJPEG

        turbo = TurboJPEG()

        def _turbojpeg(data: bytes, scaled: bool) -> np.ndarray:
            factor = None
            if scaled:
                width, height, _, _ = turbo.decode_header(data)
                factor = max(
                    (f for f in turbo.scaling_factors if min(width, height) * f[0] // f[1] >= 2 * SIZE),
                    key=lambda f: f[1] / f[0],
                    default=(1, 1),
                )
            return _resized(turbo.decode(data, pixel_format=0, scaling_factor=factor))  # TJPF_RGB

        decoders["turbojpeg"] = _turbojpeg
    except (ImportError, RuntimeError, OSError) as exc:
        missing["turbojpeg"] = str(exc)
    return decoders, missing


def _ms(decode: Decoder, data: bytes, scaled: bool, repeat: int) -> float:
    start = time.process_time()
    for _ in range(repeat):
        decode(data, scaled)
    return (time.process_time() - start) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probes.decoders", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    decoders, missing = _decoders()
    for name, reason in missing.items():
        print(f"{name}: not measured ({' '.join(reason.split())})")
    cases = [(size, jpeg(size), False, 200) for size in SIZES]
    cases += [(f"{PHONE} full", jpeg(PHONE), False, 3), (f"{PHONE} scaled", jpeg(PHONE), True, 10)]
    for label, data, scaled, repeat in cases:
        reference = _pillow(data, False).astype(np.int16)
        times: dict[str, list[float]] = {name: [] for name in decoders}
        for _ in range(args.rounds):
            for name, decode in decoders.items():
                times[name].append(_ms(decode, data, scaled, repeat))
        shown = []
        for name, decode in decoders.items():
            diff = int(np.abs(decode(data, scaled).astype(np.int16) - reference).max())
            shown.append(f"{name} {statistics.median(times[name]):.2f} ms (max |Δ| {diff})")
        print(f"{label}: " + ", ".join(shown))


if __name__ == "__main__":
    main()
