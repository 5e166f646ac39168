"""`VIT_GPU_DECODE`: a request's plain JPEGs decoded on the engine's GPU instead of in the decode
processes (docs/DESIGN.md, Decoding on the GPU; model/gpu_decode.py does the decoding).

It exists only where the model is in this process on CUDA and torchvision imports; otherwise the
service logs why and decodes on the CPU. Each request's JPEGs are read from their headers first
(`takes`: the rest go to the decode processes) and then decoded in one nvJPEG call, on a thread of
its own so that the event loop never waits for the GPU. nvJPEG's time is bounded by the pixel
limit the headers were checked against (no progressive scans, no Python decoder reaches it); a JPEG
it cannot decode fails its own request with a 400 that names the image, never the batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from model import gpu_decode
from model.preprocess import ImageError, PreprocessConfig
from service.decoding import DecodeFailed

log = logging.getLogger(__name__)


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
        path; DecodeFailed, naming the first, if one it took cannot be decoded."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._decode, images)

    def _decode(self, images: Sequence[bytes]) -> list[torch.Tensor | None]:
        size, cfg = self.image_size, self.preprocess
        taken = [i for i, data in enumerate(images) if gpu_decode.takes(data, size, cfg, self.max_pixels)]
        out: list[torch.Tensor | None] = [None] * len(images)
        if not taken:
            return out
        try:
            decoded = gpu_decode.decode_jpegs([images[i] for i in taken], size, cfg, self.device)
        except RuntimeError:  # one of them is corrupt: nvJPEG gives no partial results, so find it
            decoded = [self._one(i, images[i]) for i in taken]
        for i, pixels in zip(taken, decoded, strict=True):
            out[i] = pixels
        return out

    def _one(self, index: int, data: bytes) -> torch.Tensor:
        try:
            return gpu_decode.decode_jpegs([data], self.image_size, self.preprocess, self.device)[0]
        except RuntimeError as exc:
            raise DecodeFailed(index, ImageError(f"image data is corrupt or truncated ({exc})")) from None

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
