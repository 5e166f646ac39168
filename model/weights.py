"""The ground every checkpoint format stands on: the loaded result, its one error type, the
readers of weight and JSON files, and the strict copy into a model that checks every key and
shape first. model/checkpoints.py (this project's format, timm, .npz) and model/hf.py
(transformers' families) each map their own layout onto this.

Nothing here unpickles code: safetensors and `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from model.config import ViTConfig
from model.preprocess import PreprocessConfig
from model.text import TextConfig, TextTransformer
from model.vit import VisionTransformer, resample_pos_embed

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says exactly why."""


@dataclass
class Checkpoint:
    """A loaded model with what its checkpoint says about serving it."""

    model: VisionTransformer
    format: str  # "native", "huggingface", "timm", "npz", "random"
    path: Path | None
    sha256: str | None
    labels: list[str] | None  # from the checkpoint itself (HF id2label, native JSON)
    preprocess: PreprocessConfig

    @property
    def config(self) -> ViTConfig:
        return self.model.cfg


def read_safetensors(path: Path) -> StateDict:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def _read_torch(path: Path) -> StateDict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code, RuntimeError for truncation
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused: the pickle holds more than tensors (code or custom objects), "
                "and checkpoints are loaded without running code"
            ) from exc
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    for wrapper in ("state_dict", "model", "module"):  # training scripts' usual envelopes
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_weights(path: Path) -> StateDict:
    return read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fuse_qkv(state: StateDict, depth: int) -> StateDict:
    """Concatenate separate `attn.q`, `attn.k`, `attn.v` tensors into timm's `attn.qkv`."""
    for i in range(depth):
        for kind in ("weight", "bias"):
            names = [f"blocks.{i}.attn.{part}.{kind}" for part in "qkv"]
            pieces = [state.pop(name) for name in names if name in state]
            if len(pieces) == 3:
                state[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(pieces)
            elif pieces:
                raise CheckpointError(f"block {i}: found {len(pieces)} of the q, k, v {kind} tensors")
    return state


def load_strict(
    model: VisionTransformer | TextTransformer,
    state: StateDict,
    source: str,
    unused: Sequence[str] = (),
    antialias: bool = False,
) -> None:
    """Copy `state` into `model` only if every key and shape matches; else one error naming all.

    A vision tower's position embedding for another patch grid is resampled first (bicubic,
    prefix tokens kept; `antialias` as the family's transformers code does it).
    """
    expected = model.state_dict()
    pos = state.get("pos_embed")
    target = expected["pos_embed"].shape
    cfg = model.cfg
    resizable = pos is not None and pos.ndim == 3 and pos.shape != target and pos.shape[-1] == target[-1]
    if isinstance(cfg, ViTConfig) and pos is not None and resizable:
        with contextlib.suppress(ValueError):  # not a square grid: reported as a shape mismatch below
            resampled = resample_pos_embed(pos, cfg.grid_size, cfg.pos_prefix, antialias)
            state = {**state, "pos_embed": resampled}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected)) + list(unused)
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not fit the model ({_describe(cfg)}):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(mismatched))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def _describe(cfg: ViTConfig | TextConfig) -> str:
    shape = f"D={cfg.embed_dim}, depth={cfg.depth}, heads={cfg.num_heads}"
    if isinstance(cfg, TextConfig):
        return f"{cfg.family} text, {shape}, vocabulary={cfg.vocab_size}, tokens={cfg.context_length}"
    return f"{shape}, patch={cfg.patch_size}, image={cfg.image_size}, classes={cfg.num_classes}"
