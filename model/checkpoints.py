"""Load ViT weights from every format people have, strictly, and save this project's own.

Each source format has one function that maps its tensors into this project's key layout
(timm's names); `load_strict` then checks every key and shape before copying anything.
Nothing here unpickles code: safetensors, `torch.load(weights_only=True)` and
`numpy.load(allow_pickle=False)` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from model.config import ViTConfig, preset
from model.preprocess import GOOGLE_DEFAULTS, TIMM_DEFAULTS, PreprocessConfig
from model.vit import VisionTransformer, resample_pos_embed

StateDict = dict[str, torch.Tensor]

NATIVE_META = "vit.json"
NATIVE_WEIGHTS = "model.safetensors"
NATIVE_FORMAT_VERSION = 1
TIMM_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


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


# ---------------------------------------------------------------------------- reading files


def _read_safetensors(path: Path) -> StateDict:
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
    return _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with path.open("rb") as f, np.load(f, allow_pickle=False) as data:  # our handle: closed on errors too
            return {k: data[k] for k in data.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError for pickled object arrays, …
        raise CheckpointError(f"{path}: not a readable .npz of arrays ({exc})") from exc


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


# ------------------------------------------------------------------------ format mappings


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


def timm_to_native(state: StateDict) -> StateDict:
    """timm's `VisionTransformer` state dict is this layout already; only its
    pre-conv patch embedding (a flat Linear in early timm versions) is reshaped."""
    out = dict(state)
    weight = out.get("patch_embed.proj.weight")
    if weight is not None and weight.ndim == 2 and "cls_token" in out:
        dim, flat = weight.shape
        side = round((flat / 3) ** 0.5)
        out["patch_embed.proj.weight"] = weight.reshape(dim, 3, side, side)
    return out


def _dense(a: np.ndarray) -> np.ndarray:
    return a.T  # Flax (in, out) -> torch (out, in)


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _npz_table(depth: int, big_vision: bool) -> list[tuple[str, str, Callable[[np.ndarray], np.ndarray]]]:
    """(npz name, native name, transform) for every tensor of a `depth`-block Google ViT."""
    table = [
        ("embedding/kernel", "patch_embed.proj.weight", lambda a: a.transpose(3, 2, 0, 1)),  # HWIO -> OIHW
        ("embedding/bias", "patch_embed.proj.bias", _same),
        ("cls", "cls_token", _same),
        ("Transformer/encoder_norm/scale", "norm.weight", _same),
        ("Transformer/encoder_norm/bias", "norm.bias", _same),
        ("head/kernel", "head.weight", _dense),
        ("head/bias", "head.bias", _same),
    ]
    if big_vision:  # no class-token row: the class token gets a zero position embedding
        table.append(("pos_embedding", "pos_embed", lambda a: np.concatenate([np.zeros_like(a[:, :1]), a], 1)))
        ln1, mha, ln2, mlp = "LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"
    else:
        table.append(("Transformer/posembed_input/pos_embedding", "pos_embed", _same))
        ln1, mha, ln2, mlp = "LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"
    for i in range(depth):
        src, dst = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        table += [
            (f"{src}{ln1}/scale", f"{dst}norm1.weight", _same),
            (f"{src}{ln1}/bias", f"{dst}norm1.bias", _same),
            (f"{src}{ln2}/scale", f"{dst}norm2.weight", _same),
            (f"{src}{ln2}/bias", f"{dst}norm2.bias", _same),
            (f"{src}{mlp}/Dense_0/kernel", f"{dst}mlp.fc1.weight", _dense),
            (f"{src}{mlp}/Dense_0/bias", f"{dst}mlp.fc1.bias", _same),
            (f"{src}{mlp}/Dense_1/kernel", f"{dst}mlp.fc2.weight", _dense),
            (f"{src}{mlp}/Dense_1/bias", f"{dst}mlp.fc2.bias", _same),
            # (D, heads, head_dim) -> (D, D) -> transposed; (heads, head_dim, D) for the output
            (f"{src}{mha}/out/kernel", f"{dst}attn.proj.weight", lambda a: a.reshape(-1, a.shape[-1]).T),
            (f"{src}{mha}/out/bias", f"{dst}attn.proj.bias", _same),
        ]
        for name, alias in (("query", "q"), ("key", "k"), ("value", "v")):
            table += [
                (f"{src}{mha}/{name}/kernel", f"{dst}attn.{alias}.weight", lambda a: a.reshape(a.shape[0], -1).T),
                (f"{src}{mha}/{name}/bias", f"{dst}attn.{alias}.bias", lambda a: a.reshape(-1)),
            ]
    return table


def npz_to_native(arrays: Mapping[str, np.ndarray]) -> tuple[StateDict, list[str]]:
    """Google's .npz -> this layout; returns the state and the npz keys that were not used.

    Two public layouts: google-research/vision_transformer (`Transformer/posembed_input`,
    blocks of `LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3`,
    optionally under `opt/target/`) and big_vision (`params/` or `params/img/`, a top-level
    `pos_embedding` without a class-token row, blocks of `…_0, …_0, LayerNorm_1, MlpBlock_0`).
    Keys outside the prefix (optimizer state, a text tower) are not the ViT's and are ignored.
    """
    prefix = next((p for p in ("opt/target/", "params/img/", "params/") if f"{p}embedding/kernel" in arrays), "")
    scope = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    depth = 0
    while any(k.startswith(f"Transformer/encoderblock_{depth}/") for k in scope):
        depth += 1
    out: StateDict = {}
    for npz_name, native, transform in _npz_table(depth, big_vision=prefix.startswith("params/")):
        if npz_name in scope:  # absent ones surface as missing native keys in load_strict
            out[native] = torch.from_numpy(np.ascontiguousarray(transform(scope.pop(npz_name)))).float()
    out = fuse_qkv(out, depth)
    return out, sorted(prefix + k for k in scope)


# ------------------------------------------------------------------------------ strict load


def load_strict(
    model: VisionTransformer, state: StateDict, source: str, unused: Sequence[str] = (), antialias: bool = False
) -> None:
    """Copy `state` into `model` only if every key and shape matches; else one error naming all.

    A position embedding for another patch grid is resampled first (bicubic, prefix tokens kept;
    `antialias` as the family's transformers code does it).
    """
    expected = model.state_dict()
    pos = state.get("pos_embed")
    target = expected["pos_embed"].shape
    if pos is not None and pos.ndim == 3 and pos.shape != target and pos.shape[-1] == target[-1]:
        with contextlib.suppress(ValueError):  # not a square grid: reported as a shape mismatch below
            resampled = resample_pos_embed(pos, model.cfg.grid_size, model.cfg.pos_prefix, antialias)
            state = {**state, "pos_embed": resampled}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected)) + list(unused)
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not fit the model ({_describe(model.cfg)}):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(mismatched))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def _describe(cfg: ViTConfig) -> str:
    return (
        f"D={cfg.embed_dim}, depth={cfg.depth}, heads={cfg.num_heads}, patch={cfg.patch_size}, "
        f"image={cfg.image_size}, classes={cfg.num_classes}"
    )


# --------------------------------------------------------------------------- entry points


def detect_format(path: Path) -> str:
    """'native', 'huggingface', 'timm' or 'npz', from the files; never a silent guess."""
    if path.is_dir():
        if (path / NATIVE_META).is_file():
            return "native"
        if (path / "config.json").is_file():
            return "huggingface"
        raise CheckpointError(f"{path}: a directory with neither {NATIVE_META} (vit-serve) nor config.json (HF)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.suffix == ".npz":
        return "npz"
    if path.suffix in TIMM_SUFFIXES:
        return "timm"
    raise CheckpointError(f"{path}: unknown checkpoint type; expected a directory, .npz, or one of {TIMM_SUFFIXES}")


def load_checkpoint(path: str | Path, model_name: str | None = None) -> Checkpoint:
    """Load any supported checkpoint. `model_name` (a preset) gives the architecture of
    timm and .npz files, which carry none; the head's size always comes from the weights."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "native":
        return _load_native(path)
    if fmt == "huggingface":
        from model.hf import load_hf  # model.hf builds on this module's readers

        return load_hf(path)
    if not model_name:
        raise CheckpointError(f"{path}: a {fmt} file carries no architecture; name a preset (VIT_MODEL)")
    base = preset(model_name)
    if fmt == "timm":
        state = timm_to_native(read_weights(path))
        unused: list[str] = []
        prep = TIMM_DEFAULTS
    else:
        state, unused = npz_to_native(_read_npz(path))
        prep = GOOGLE_DEFAULTS
    head = state.get("head.weight")
    cfg = base.with_changes(num_classes=head.shape[0] if head is not None else 0)
    model = VisionTransformer(cfg)
    load_strict(model, state, f"{path} ({fmt}, preset {model_name})", unused)
    return Checkpoint(model, fmt, path, sha256_of(path), None, prep)


def _load_native(path: Path) -> Checkpoint:
    meta = read_json(path / NATIVE_META)
    if meta.get("format") != "vit-serve" or meta.get("version") != NATIVE_FORMAT_VERSION:
        raise CheckpointError(f"{path}/{NATIVE_META}: not a vit-serve v{NATIVE_FORMAT_VERSION} checkpoint")
    try:
        cfg = ViTConfig.from_dict(meta["config"])
        prep = PreprocessConfig.from_dict(meta["preprocess"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}/{NATIVE_META}: {exc}") from exc
    weights = path / NATIVE_WEIGHTS
    model = VisionTransformer(cfg)
    load_strict(model, _read_safetensors(weights), f"{weights} (vit-serve)")
    labels = meta.get("labels")
    return Checkpoint(model, "native", path, sha256_of(weights), labels, prep)


def save_native(
    path: str | Path, model: VisionTransformer, labels: list[str] | None, preprocess: PreprocessConfig
) -> None:
    """Write this project's format: model.safetensors plus vit.json (config, labels, preprocessing)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path / NATIVE_WEIGHTS))
    meta = {
        "format": "vit-serve",
        "version": NATIVE_FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "labels": labels,
        "preprocess": preprocess.to_dict(),
    }
    (path / NATIVE_META).write_text(json.dumps(meta, indent=2) + "\n")
