"""`VIT_GPU_DECODE`: a request's plain JPEGs decoded on the engine's GPU instead of in the decode
processes (docs/DESIGN.md, Decoding on the GPU; model/gpu_decode.py does the decoding).

It exists only where the model is in this process on CUDA and torchvision imports; otherwise the
service logs why and decodes on the CPU. Each request's JPEGs are read from their headers first
(`gpu_decode.plain_jpeg_size`: the rest go to the decode processes) and then decoded in batched
nvJPEG calls, on a thread of its own so that the event loop never waits for the GPU. nvJPEG's time
is bounded by the pixel limit the headers were checked against (no progressive scans, no Python
decoder reaches it), and its memory by decoding at most `CALL_PIXELS` in one call; a JPEG it
cannot decode fails its own request with a 400 that names the image, and one that finds the GPU
out of memory goes to the CPU.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from model import gpu_decode
from model.preprocess import ImageError, PreprocessConfig
from service.decoding import DecodeFailed

log = logging.getLogger(__name__)

# Pixels decoded in one nvJPEG call (one image over it, alone): bounds the GPU memory a request's
# decode holds, 3 bytes a pixel and nvJPEG's buffers; requests decode one at a time.
CALL_PIXELS = 48_000_000


def calls_within(pixels: Sequence[int], budget: int) -> list[list[int]]:
    """The indices of the images to decode (pixels > 0), in order, grouped into calls of at most
    `budget` pixels each (an image larger than that, alone)."""
    calls: list[list[int]] = []
    total = budget
    for i, count in enumerate(pixels):
        if count == 0:
            continue
        if total + count > budget:
            calls.append([])
            total = 0
        calls[-1].append(i)
        total += count
    return calls


class DeviceDecoder:
    def __init__(self, device: torch.device, image_size: int, preprocess: PreprocessConfig, max_pixels: int) -> None:
        self.device, self.image_size, self.preprocess, self.max_pixels = device, image_size, preprocess, max_pixels
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="vit-nvjpeg")

    @classmethod
    def create(
        cls, device: torch.device, image_size: int, preprocess: PreprocessConfig, max_pixels: int
    ) -> DeviceDecoder | None:
        """A decoder for `device`, or None (logged with its reason) where it cannot decode there."""
        if reason := gpu_decode.unavailable(device):
            log.warning("VIT_GPU_DECODE: decoding on the CPU: %s", reason)
            return None
        return cls(device, image_size, preprocess, max_pixels)

    async def decode(self, images: Sequence[bytes]) -> list[torch.Tensor | None]:
        """Each image's uint8 (S, S, 3) pixels on the device, or None for one it leaves to the CPU
        path; DecodeFailed, naming the first, if one it took cannot be decoded (a request fails
        whole)."""
        decoded: list[torch.Tensor | None] = []
        for index, out in enumerate(await self.decode_each(images)):
            if isinstance(out, ImageError):
                raise DecodeFailed(index, out)
            decoded.append(out)
        return decoded

    async def decode_each(self, images: Sequence[bytes]) -> list[torch.Tensor | ImageError | None]:
        """As `decode`, with an image it took but cannot decode as its ImageError, in its place
        (`vit-serve embed`: a bad image fails only its own row)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._decode, images)

    def _decode(self, images: Sequence[bytes]) -> list[torch.Tensor | ImageError | None]:
        sizes = [gpu_decode.plain_jpeg_size(data, self.image_size, self.preprocess, self.max_pixels) for data in images]
        out: list[torch.Tensor | ImageError | None] = [None] * len(images)
        for call in calls_within([math.prod(size) if size else 0 for size in sizes], CALL_PIXELS):
            for i, decoded in zip(call, self._call(call, images), strict=True):
                out[i] = decoded
        return out

    def _call(self, indices: list[int], images: Sequence[bytes]) -> list[torch.Tensor | ImageError | None]:
        """One nvJPEG call; on a failure, each image alone, to find the ones that fail. Out of GPU
        memory, the images go to the CPU path (None) instead: the request is not at fault."""
        try:
            return list(
                gpu_decode.decode_jpegs([images[i] for i in indices], self.image_size, self.preprocess, self.device)
            )
        except torch.OutOfMemoryError:
            return [None] * len(indices)
        except RuntimeError:  # one of them is corrupt: nvJPEG gives no partial results
            if len(indices) == 1:
                return [ImageError("JPEG data that the GPU's decoder cannot decode")]
            return [decoded for i in indices for decoded in self._call([i], images)]

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
