"""The model on its device: loading by SPEC §2, staging uint8 batches, and the forward pass.

Everything that touches torch devices lives here, so the batcher and the routes never see a
state-dict key or a CUDA stream.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from importlib import resources
from pathlib import Path

import torch

from model.checkpoints import Checkpoint, load_checkpoint
from model.config import PRESETS, preset
from model.labels import resolve_labels
from model.preprocess import PreprocessConfig, normalize
from model.vit import VisionTransformer
from service.batching import BatchOutput
from service.settings import BUILTIN_MODEL, Settings

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def builtin_path(name: str = BUILTIN_MODEL) -> Path:
    return Path(str(resources.files("model").joinpath(f"builtin/{name}")))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"VIT_DEVICE={name} but no CUDA device is available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


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
        compile_model: bool = False,
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
        self.model = model
        self._forward = torch.compile(model, dynamic=False) if compile_model else model
        self._lock = threading.Lock()  # one forward pass at a time, whoever calls

    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
        """Load the model SPEC §2 describes for these settings."""
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
        device = resolve_device(settings.device)
        compile_model = settings.compile if settings.compile is not None else device.type == "cuda"
        return cls(
            ckpt,
            model_id,
            labels,
            replace(ckpt.preprocess, **overrides),
            device,
            resolve_dtype(settings.dtype, device),
            compile_model,
        )

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    @property
    def dtype_name(self) -> str:
        """ "float32", "bfloat16", …: as settings, metrics and /v1/models spell it."""
        return str(self.dtype).removeprefix("torch.")

    def stage(self, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 (3, S, S) images -> a normalised batch on the device.

        On CUDA the uint8 batch goes through pinned memory with a non-blocking copy (a quarter
        of the bytes of float32), and normalisation runs on the GPU.
        """
        batch = torch.stack(images)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return normalize(batch, self.preprocess.mean, self.preprocess.std, self.dtype)

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor) -> BatchOutput:
        """One forward pass; logits and y come from the same pass."""
        with self._lock:
            out = self._forward(pixels)
            probs = out.logits.float().softmax(dim=-1).cpu() if out.logits is not None else None
            return BatchOutput(probs=probs, embeddings=out.embedding.float().cpu())

    def warmup(self, batch_sizes: list[int]) -> None:
        """Run each batch size once so that allocation (and compilation) happen before traffic."""
        blank = torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8)
        for size in batch_sizes:
            self.forward(self.stage([blank] * size))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
