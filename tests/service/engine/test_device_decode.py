"""VIT_GPU_DECODE (service/engine/device_decode.py): which images the GPU takes, per-image errors
from a batched decode, and the request path through it. Its geometry: tests/model/test_gpu_decode.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
import torch

from model import gpu_decode
from model.preprocess import ImageError, PreprocessConfig
from service import lifecycle
from service.decoding import DecodeFailed
from service.engine.device_decode import DeviceDecoder, calls_within
from service.engine.handle import LocalEngine, in_process
from service.lifecycle import ServiceState
from service.pipeline import Serving, compute
from tests.images import encode, photo
from tests.service.servers import tiny_settings
from tests.service.test_pipeline import never

CFG = PreprocessConfig(resize_mode="crop", crop_pct=0.875, interpolation="bicubic")
JPEG, PNG = encode(photo(), "JPEG"), encode(photo())
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or gpu_decode.unavailable(torch.device("cuda")) is not None,
    reason="needs an NVIDIA GPU (CUDA) and torchvision built for it; neither is here",
)


def test_on_a_cpu_model_there_is_no_decoder_and_the_log_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "service.engine.device_decode"):
        assert DeviceDecoder.create(torch.device("cpu"), 224, CFG, 40_000_000) is None
    assert "VIT_GPU_DECODE: decoding on the CPU: the model is on cpu, not CUDA" in caplog.text


@contextlib.asynccontextmanager
async def started(**settings: object) -> AsyncIterator[Serving]:
    """The service's real start and stop around a Serving, in this process."""
    state = ServiceState(tiny_settings(**settings))
    loader = asyncio.create_task(lifecycle.start(state, in_process()))
    await loader
    assert state.engine is not None and state.resolved is not None and state.decode_pool is not None
    try:
        yield Serving(state.settings, state.resolved, state.metrics, state.engine, state.decode_pool, state.texts)
    finally:
        await lifecycle.stop(state, loader)


async def test_a_server_asked_to_decode_on_the_gpu_of_a_cpu_model_decodes_on_the_cpu() -> None:
    async with started(gpu_decode=True) as serving:
        assert isinstance(serving.engine, LocalEngine) and serving.engine.device_decoder is None
        [result] = await compute(serving, "/test", [JPEG], time.monotonic() + 30, None, never())
        assert result.probs is not None


def test_a_requests_jpegs_are_decoded_in_calls_of_bounded_pixels() -> None:
    assert calls_within([10, 0, 20, 30, 0, 5], budget=40) == [[0, 2], [3, 5]]
    assert calls_within([50, 10, 60], budget=40) == [[0], [1], [2]]  # one over the budget, alone
    assert calls_within([0, 0], budget=40) == []


@needs_gpu
async def test_the_gpu_takes_plain_jpegs_and_names_a_corrupt_one() -> None:
    decoder = DeviceDecoder(torch.device("cuda"), 224, CFG, 40_000_000)
    try:
        out = await decoder.decode([JPEG, PNG, JPEG])
        assert out[1] is None and all(pixels is not None and pixels.is_cuda for pixels in (out[0], out[2]))
        corrupt = JPEG[: len(JPEG) // 3]
        with pytest.raises(DecodeFailed, match=r"^image 2: ") as failure:
            await decoder.decode([JPEG, PNG, corrupt])
        assert failure.value.index == 2
        each = await decoder.decode_each([corrupt, JPEG, PNG])  # vit-serve embed's: each image's own outcome
        assert isinstance(each[0], ImageError) and each[1] is not None and each[1].is_cuda and each[2] is None
    finally:
        decoder.close()


@needs_gpu
async def test_a_cuda_server_classifies_gpu_decoded_jpegs_as_cpu_decoded_ones() -> None:
    answers = []
    for on_gpu in (False, True):
        torch.manual_seed(0)  # the same random weights in both starts
        async with started(device="cuda", compile=False, gpu_decode=on_gpu, jpeg_draft=False) as serving:
            assert isinstance(serving.engine, LocalEngine) and (serving.engine.device_decoder is not None) == on_gpu
            results = await compute(serving, "/test", [JPEG, PNG], time.monotonic() + 30, None, never())
            answers.append(torch.from_numpy(np.stack([r.embedding for r in results])).float())
    assert torch.nn.functional.cosine_similarity(answers[0], answers[1]).min() >= 0.999
