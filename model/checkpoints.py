"""Load ViT weights from every format people have, strictly, and save this project's own.

Each source format has one function that maps its tensors into this project's key layout
(timm's names); `load_strict` then checks every key and shape before copying anything.
Nothing here unpickles code: safetensors, `torch.load(weights_only=True)` and
`numpy.load(allow_pickle=False)` only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from model.config import ViTConfig, preset
from model.hf import load_hf
from model.preprocess import PreprocessConfig
from model.vit import VisionTransformer
from model.weights import (
    Checkpoint,
    CheckpointError,
    StateDict,
    fuse_qkv,
    load_strict,
    read_json,
    read_safetensors,
    read_weights,
    sha256_of,
)

NATIVE_META = "vit.json"
NATIVE_WEIGHTS = "model.safetensors"
NATIVE_FORMAT_VERSION = 1
TIMM_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

# Preprocessing of the formats that carry none (docs/API.md, Settings): the Google/big_vision
# recipe for .npz, timm's for timm files. HF directories carry theirs (model/hf.py).
GOOGLE_DEFAULTS = PreprocessConfig(resize_mode="squash", interpolation="bilinear")
TIMM_DEFAULTS = PreprocessConfig(resize_mode="crop", crop_pct=0.9, interpolation="bicubic")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with path.open("rb") as f, np.load(f, allow_pickle=False) as data:  # our handle: closed on errors too
            return {k: data[k] for k in data.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError for pickled object arrays, …
        raise CheckpointError(f"{path}: not a readable .npz of arrays ({exc})") from exc


# ------------------------------------------------------------------------ format mappings


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
    load_strict(model, read_safetensors(weights), f"{weights} (vit-serve)")
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
