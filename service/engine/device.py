"""The model on its device: loading (docs/API.md, Model), staging uint8 batches, the forward
pass, and what it returns (`BatchOutput`), a batch that runs out of memory split in halves.

Everything that touches torch devices lives here, so the batcher and the routes never see a
state-dict key or a CUDA stream.

All of an engine's torch work (loading, warm-up, forward passes, and on the CPU staging too)
runs on one thread of its own, `Engine.torch_thread`. torch's CPU kernels run on libgomp, which gives
every thread that opens a parallel region its own team of worker threads; once a process has
more such workers than cores, libgomp stops spin-waiting between regions and each of the ~100
regions of a forward pass pays a futex wake-up (`python -m bench.probes.threads` measures it:
docs/BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import cast

import numpy as np
import torch

from model.checkpoints import load_checkpoint
from model.config import PRESETS, Layer, preset
from model.labels import resolve_labels
from model.preprocess import PreprocessConfig
from model.quantize import quantize_int8
from model.tensors import normalize
from model.vit import VisionTransformer
from model.weights import Checkpoint
from service.engine.card import ModelCard
from service.engine.precision import Choice, choose_dtype, native_bf16, probe
from service.engine.text_tower import TextEngine, TokenIds
from service.settings import BUILTIN_MODEL, Settings

log = logging.getLogger(__name__)

# An image as decoded, until `stage` stacks and normalises it: uint8 (S, S, 3) pixels (a tensor on
# the model's device where it was decoded there: VIT_GPU_DECODE), or float32 (3, S, S) values
# already normalised (/v2's pixel_values). Nothing between permutes or copies it.
Image = np.ndarray | torch.Tensor
# What the batcher queues: an image, or a text as its token ids (a CLIP or SigLIP pair's text tower).
Input = Image | TokenIds


def builtin_path(name: str = BUILTIN_MODEL) -> Path:
    return Path(str(resources.files("model").joinpath(f"builtin/{name}")))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"VIT_DEVICE={name} but no CUDA device is available")
    return device


def use_compile_cache(path: Path) -> None:
    """Keep what torch.compile makes under `path` (VIT_COMPILE_CACHE_DIR), so that the next start
    on any machine that mounts it finds it, where torch's default cache lives under the temp
    directory, which a new container or pod starts without. Inductor keeps its generated kernels,
    their compiled binaries and its graphs there (Triton's too, on CUDA), each written aside and
    renamed, so processes and pods may share one directory. Set before the first compilation.

    Inductor's precompiled C++ header is the exception: it is placed under the temp directory
    when torch is imported, whatever the cache directory, and rebuilding it was most of a cached
    start's first batch size (BENCHMARKS.md, "Compiled start-up"). It moves into the cache too,
    through inductor's module globals: a torch without them only loses that saving."""
    root = path.resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root)
    from torch._inductor import codecache

    if hasattr(codecache, "_HEADER_DIR") and hasattr(codecache, "_HEADER_LOCK_DIR"):
        codecache._HEADER_DIR = str(root / "precompiled_headers")
        codecache._HEADER_LOCK_DIR = str(root / "precompiled_headers" / "locks")


@dataclass
class BatchOutput:
    """Per-image rows of one forward pass, on the CPU."""

    probs: torch.Tensor | None  # (B, classes)
    embeddings: torch.Tensor  # (B, D)
    hidden: dict[Layer, torch.Tensor] = field(default_factory=dict)  # layer -> (B, tokens, D), as asked


class Engine:
    """One ViT, resident on one device, in inference mode."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        model_id: str,
        labels: list[str],
        preprocess: PreprocessConfig,
        device: torch.device,
        dtype: torch.dtype,
        compile_model: bool,
        torch_thread: ThreadPoolExecutor,
        dtype_reason: str = "",
        int8: bool = False,
        text: TextEngine | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.model_id = model_id
        self.labels = labels
        self.preprocess = preprocess
        self.device = device
        self.dtype = dtype
        model: VisionTransformer = checkpoint.model.eval().to(device=device, dtype=dtype)
        for p in model.parameters():
            p.requires_grad_(False)
        self.int8 = int8
        if int8:  # after the move: moving int8 weights to a float dtype would undo them
            quantize_int8(model)
        self.model = model
        self.compiled = compile_model
        self._forward = torch.compile(model, dynamic=False) if compile_model else model
        self.buckets: list[int] = []  # the batch sizes warmed up; a compiled model runs only these
        self._lock = threading.Lock()  # one forward pass at a time, whoever calls
        self.torch_thread = torch_thread  # the thread it was loaded on: see the module docstring
        self.dtype_reason = dtype_reason  # why this dtype (engine/precision.py), for the log and /v1/models
        self.text = text
        self.card = ModelCard(
            model_id,
            model.cfg,
            tuple(labels),
            self.preprocess,
            str(device),
            self.dtype_name,
            dtype_reason,
            checkpoint.format,
            str(checkpoint.path) if checkpoint.path else None,
            checkpoint.sha256,
            text=text.card if text is not None else None,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
        """Load the model these settings name (docs/API.md, Model), on the engine's own thread."""
        torch_thread = ThreadPoolExecutor(1, thread_name_prefix="vit-torch")
        return torch_thread.submit(cls._load, settings, torch_thread).result()

    @classmethod
    def _load(cls, settings: Settings, torch_thread: ThreadPoolExecutor) -> Engine:
        if settings.checkpoint is not None:
            name = settings.model if settings.model in PRESETS else None
            ckpt = load_checkpoint(settings.checkpoint, name)
            model_id = settings.model if settings.model not in (BUILTIN_MODEL, *PRESETS) else settings.checkpoint.stem
        elif settings.model == BUILTIN_MODEL:
            ckpt = load_checkpoint(builtin_path())
            ckpt.format = "builtin"
            model_id = BUILTIN_MODEL
        else:
            ckpt = Checkpoint(VisionTransformer(preset(settings.model)), "random", None, None, None, PreprocessConfig())
            model_id = settings.model
            log.warning("serving %s with RANDOM weights (no VIT_CHECKPOINT): for benchmarks only", settings.model)
        num_classes = ckpt.config.num_classes
        labels = resolve_labels(num_classes, settings.labels, ckpt.labels) if num_classes else []
        overrides = {
            k: getattr(settings, k)
            for k in ("resize_mode", "crop_pct", "interpolation", "mean", "std")
            if getattr(settings, k) is not None
        }
        if {"resize_mode", "crop_pct"} & overrides.keys():  # the settings' geometry replaces the processor's
            overrides["resize_size"] = 0
        device = resolve_device(settings.device)
        resolved = settings.resolve(device.type)
        if resolved.compile and settings.compile_cache_dir is not None:
            use_compile_cache(settings.compile_cache_dir)
        size = ckpt.config.image_size
        int8 = settings.quantize == "int8"
        if int8 and device.type != "cpu":
            raise ValueError("VIT_QUANTIZE=int8 is for the CPU; on a GPU, VIT_DTYPE=bfloat16 is the fast path")
        if int8:
            choice = Choice(torch.float32, "VIT_QUANTIZE=int8: the blocks' matrix products in int8, float32 elsewhere")
        else:
            choice = choose_dtype(
                settings.dtype, device, native_bf16(), lambda: probe(ckpt.model, min(8, resolved.max_batch_size), size)
            )
        (log.warning if choice.emulated else log.info)("dtype: %s", choice.reason)
        text = None
        if ckpt.format == "huggingface" and ckpt.path is not None and ckpt.path.is_dir():
            text = TextEngine.load(ckpt.path, ckpt.config.embedding_dim, device, choice.dtype)
        return cls(
            ckpt,
            model_id,
            labels,
            replace(ckpt.preprocess, **overrides),
            device,
            choice.dtype,
            resolved.compile,
            torch_thread,
            choice.reason,
            int8,
            text,
        )

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    @property
    def pipelined(self) -> bool:
        """Whether staging the next batch can overlap the running one: on a GPU, yes; on the CPU
        both compete for the same cores, so the next batch is formed when the device frees."""
        return self.device.type == "cuda"

    @property
    def dtype_name(self) -> str:
        """ "float32", "bfloat16", …, or "int8": as settings, metrics and /v1/models spell it."""
        return "int8" if self.int8 else str(self.dtype).removeprefix("torch.")

    def batch_key(self, item: Input) -> int:
        """Which batches an input may share (the batcher's key): images one, texts by padded length."""
        return self.text.length_bucket(item) if isinstance(item, tuple) and self.text is not None else 0

    @torch.inference_mode()
    def stage(self, images: Sequence[Input]) -> torch.Tensor:
        """Images as decoded -> a normalised (B, 3, S, S) batch on the device, as an inference tensor;
        texts (a batch shares one key: all texts) -> their (B, T) token ids (engine/text_tower.py).

        The one place images are stacked and normalised: uint8 (S, S, 3) pixels are stacked as
        they lie (one copy, into pinned memory on CUDA, copied without blocking: a quarter of the
        bytes of float32), seen as NCHW and normalised on the device; float32 (3, S, S) values (an
        already-normalised tensor sent to /v2) are taken as they are. Staged in inference mode, as
        `forward` pads: a compiled graph on CUDA guards on that mode (a tensor's dispatch keys),
        so a batch staged in one mode and padded in the other would recompile a bucket that
        warm-up compiled.
        """
        if isinstance(images[0], tuple):
            if self.text is None:
                raise ValueError("texts were queued for a model without a text tower")
            return self.text.stage(images)  # type: ignore[arg-type]  # a batch is all texts
        images = cast(Sequence[Image], images)
        if any(isinstance(image, torch.Tensor) or image.dtype != np.uint8 for image in images):
            return torch.stack([self._stage_one(image) for image in images])  # each on the device first
        size = self.card.image_size
        batch = torch.empty((len(images), size, size, 3), dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        np.stack(images, out=batch.numpy())
        batch = batch.to(self.device, non_blocking=True)
        return normalize(batch.permute(0, 3, 1, 2), self.preprocess.mean, self.preprocess.std, self.dtype)

    def _stage_one(self, image: Image) -> torch.Tensor:
        if isinstance(image, torch.Tensor):  # uint8 (S, S, 3), decoded on the device (VIT_GPU_DECODE)
            return normalize(image.permute(2, 0, 1)[None], self.preprocess.mean, self.preprocess.std, self.dtype)[0]
        if image.dtype == np.uint8:
            return self.stage([image])[0]
        return torch.from_numpy(image).to(self.device, self.dtype)

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor, hidden_layers: Sequence[Layer] = ()) -> BatchOutput:
        """One forward pass; logits, y and the hidden states asked for come from the same pass
        (token ids, integers where pixels are floating point: the text tower's embeddings).
        A batch that runs out of device memory is run as two halves (recursively) before
        anything fails: only a single image that does not fit fails, alone."""
        if not pixels.is_floating_point() and self.text is not None:
            with self._lock:
                return BatchOutput(None, self.text.forward(pixels))
        try:
            return self._pass(pixels, hidden_layers)
        except torch.cuda.OutOfMemoryError:
            size = len(pixels)
            if size == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = size // 2
            log.warning("out of memory at batch %d: retrying as %d + %d", size, half, size - half)
            first, second = self.forward(pixels[:half], hidden_layers), self.forward(pixels[half:], hidden_layers)
            probs = None if first.probs is None or second.probs is None else torch.cat([first.probs, second.probs])
            hidden = {layer: torch.cat([first.hidden[layer], second.hidden[layer]]) for layer in hidden_layers}
            return BatchOutput(probs, torch.cat([first.embeddings, second.embeddings]), hidden)

    def _pass(self, pixels: torch.Tensor, hidden_layers: Sequence[Layer]) -> BatchOutput:
        """A compiled model is specialised to each batch size it sees, so a batch is padded up to
        the next warmed-up bucket: a handful of graphs compiled at start-up, none during traffic.
        A batch that asks for hidden states runs eagerly: each choice of layers would be a graph."""
        size = len(pixels)
        compiled = self.compiled and not hidden_layers
        if compiled:
            bucket = next((b for b in self.buckets if b >= size), size)
            if bucket > size:
                pixels = torch.cat([pixels, pixels.new_zeros(bucket - size, *pixels.shape[1:])])
        with self._lock:
            out = self._forward(pixels) if compiled else self.model(pixels, hidden_layers)
            probs = out.logits[:size].float().softmax(dim=-1).cpu() if out.logits is not None else None
            hidden = {layer: h.float().cpu() for layer, h in out.hidden_states.items()}
            return BatchOutput(probs, out.embedding[:size].float().cpu(), hidden)

    def gpu_memory(self) -> dict[str, int]:
        """Bytes allocated and reserved on the model's GPU, for /metrics; empty on the CPU."""
        if self.device.type != "cuda":
            return {}
        return {
            "allocated": torch.cuda.memory_allocated(self.device),
            "reserved": torch.cuda.memory_reserved(self.device),
        }

    def warmup(self, max_batch_size: int) -> None:
        """Run every bucket once (powers of two below `max_batch_size`, and it), so that
        allocation and compilation happen before traffic."""
        self.torch_thread.submit(self._warmup, max_batch_size).result()

    def _warmup(self, max_batch_size: int) -> None:
        self.buckets = sorted({1, *(2**i for i in range(1, 13) if 2**i < max_batch_size), max_batch_size})
        if self.compiled:  # one graph per bucket: more than dynamo's default limit of 8
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(self.buckets))
        blank = np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)
        for i, size in enumerate(self.buckets):
            started = time.perf_counter()
            self.forward(self.stage([blank] * size))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            if self.compiled:
                seconds = time.perf_counter() - started
                log.info("compiled batch size %d (%d of %d) in %.1f s", size, i + 1, len(self.buckets), seconds)
        if self.compiled:
            self.card = replace(self.card, compiled_buckets=tuple(self.buckets))
        if self.text is not None:
            self.text.warmup()
