"""Directories saved by transformers' `save_pretrained`: the family from config.json, its keys in
this project's layout, its preprocessing from preprocessor_config.json.

Families (docs/API.md, Model families): the paper's ViT (`ViTModel`, `ViTForImageClassification`),
CLIP (`CLIPVisionModel`, `CLIPVisionModelWithProjection`, `CLIPModel`), SigLIP (`SiglipVisionModel`,
`SiglipModel`, fixed-resolution SigLIP2), DINOv2 (`Dinov2Model`, `Dinov2WithRegistersModel`) and
DeiT (`DeiTModel`, `DeiTForImageClassificationWithTeacher`). Key names of transformers 4.x (vision
towers under `vision_model.`) and 5.x are both read. The text tower of a full CLIP or SigLIP
checkpoint is skipped by name here, and read by `load_hf_text` (model/text.py), as is a text-tower
checkpoint (`CLIPTextModelWithProjection`, `SiglipTextModel`); every other key must be the
tower's (load_strict).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from model.config import ViTConfig
from model.preprocess import PreprocessConfig
from model.text import Similarity, TextConfig, TextTower, TextTransformer
from model.vit import VisionTransformer
from model.weights import (
    Checkpoint,
    CheckpointError,
    StateDict,
    fuse_qkv,
    load_strict,
    read_json,
    read_weights,
    sha256_of,
)

_HF_RESAMPLE = {2: "bilinear", 3: "bicubic"}
_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# Each transformers image processor's defaults for the keys a preprocessor_config.json may leave
# out: resample, centre crop, mean and std, and whether an int `size` is the shortest edge (CLIP's
# legacy CLIPFeatureExtractor form, BiT) or a square (ViT, DeiT, SigLIP).
_HF_PROCESSORS: dict[str, dict[str, Any]] = {
    "ViT": {"resample": 2, "do_center_crop": False, "mean": (0.5,) * 3, "std": (0.5,) * 3, "int_is_short": False},
    "DeiT": {"resample": 3, "do_center_crop": True, "mean": (0.5,) * 3, "std": (0.5,) * 3, "int_is_short": False},
    "Siglip": {"resample": 3, "do_center_crop": False, "mean": (0.5,) * 3, "std": (0.5,) * 3, "int_is_short": False},
    "CLIP": {"resample": 3, "do_center_crop": True, "mean": _CLIP_MEAN, "std": _CLIP_STD, "int_is_short": True},
    "Bit": {"resample": 3, "do_center_crop": True, "mean": _CLIP_MEAN, "std": _CLIP_STD, "int_is_short": True},
}


def from_hf_processor(data: dict[str, Any]) -> tuple[PreprocessConfig, int]:
    """An HF `preprocessor_config.json` as this config and the size S it serves (the crop's, or
    the square resize's): the geometry of transformers' processors exactly (see PreprocessConfig)."""
    kind = str(data.get("image_processor_type") or data.get("feature_extractor_type") or "ViTImageProcessor")
    name = next((n for n in _HF_PROCESSORS if kind.startswith(n)), None)
    if name is None:
        raise ValueError(
            f"image processor {kind!r} is not one of: {', '.join(n + 'ImageProcessor' for n in _HF_PROCESSORS)}"
        )
    defaults = _HF_PROCESSORS[name]
    resample = data.get("resample", defaults["resample"])
    if resample not in _HF_RESAMPLE:
        raise ValueError(f"resample {resample} is not bilinear (2) or bicubic (3)")
    if not data.get("do_resize", True):
        raise ValueError("do_resize is false: images of any size would reach the model")
    if data.get("do_rescale", True) is not True or abs(data.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise ValueError("only rescaling by 1/255 is supported")
    normalize = data.get("do_normalize", True)
    short, side = _hf_size(data.get("size", 224), defaults["int_is_short"], "size")
    fields: dict[str, Any] = {
        "interpolation": _HF_RESAMPLE[resample],
        "mean": tuple(data.get("image_mean", defaults["mean"])) if normalize else (0.0, 0.0, 0.0),
        "std": tuple(data.get("image_std", defaults["std"])) if normalize else (1.0, 1.0, 1.0),
        "crop_offset": "floor",
        "resize_mode": "crop" if short else "squash",
    }
    served = short or side
    if data.get("do_center_crop", defaults["do_center_crop"]):
        crop_short, served = _hf_size(data.get("crop_size", 224), False, "crop_size")
        if crop_short or served > (short or side):
            raise ValueError(f"crop_size {data.get('crop_size')!r}: expected a square no larger than the resize")
        fields["resize_size"] = short or side
    elif short:
        raise ValueError("a shortest-edge resize without a centre crop leaves images of any shape")
    return PreprocessConfig(**fields), served


def _hf_size(value: Any, int_is_short: bool, key: str) -> tuple[int, int]:
    """(shortest edge, 0) or (0, square side) from an HF size: an int, or a dict of
    `shortest_edge` or `height` and `width`."""
    if isinstance(value, int):
        return (value, 0) if int_is_short else (0, value)
    if isinstance(value, dict) and isinstance(value.get("shortest_edge"), int):
        return value["shortest_edge"], 0
    if isinstance(value, dict) and isinstance(value.get("height"), int) and value.get("height") == value.get("width"):
        return 0, value["height"]
    raise ValueError(f"{key} {value!r}: expected an int, a shortest_edge, or a square height and width")


@dataclass(frozen=True)
class Family:
    name: str  # ViTConfig.family
    processor: str  # the image processor whose defaults apply without preprocessor_config.json
    flags: dict[str, Any]  # the ViTConfig fields that set it apart from the paper's ViT
    architectures: tuple[str, ...]  # the transformers classes it loads
    antialias: bool = False  # how transformers resamples its position embeddings (model/vit.py)


FAMILIES: dict[str, Family] = {
    "vit": Family("vit", "ViTImageProcessor", {}, ("ViTModel", "ViTForImageClassification")),
    "clip": Family(
        "clip",
        "CLIPImageProcessor",
        {"pre_norm": True, "patch_bias": False, "norm_tokens": False},
        ("CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel"),
    ),
    "siglip": Family(
        "siglip",
        "SiglipImageProcessor",
        {"class_token": False},  # nosec B105: bandit reads a flag named *_token as a password
        ("SiglipVisionModel", "SiglipModel"),
    ),
    "dinov2": Family("dinov2", "BitImageProcessor", {"layer_scale": True}, ("Dinov2Model",)),
    "dinov2_with_registers": Family(
        "dinov2", "BitImageProcessor", {"layer_scale": True}, ("Dinov2WithRegistersModel",), antialias=True
    ),
    "deit": Family(
        "deit",
        "DeiTImageProcessor",
        {"distill_token": True},  # nosec B105: a flag, not a password
        ("DeiTModel", "DeiTForImageClassificationWithTeacher"),
    ),
}
# model_type -> family; a full CLIP or SigLIP keeps its vision tower's config under vision_config.
_MODEL_TYPES = {
    "vit": "vit",
    "clip_vision_model": "clip",
    "clip": "clip",
    "siglip_vision_model": "siglip",
    "siglip": "siglip",
    "dinov2": "dinov2",
    "dinov2_with_registers": "dinov2_with_registers",
    "deit": "deit",
}
_OTHER_TOWER = ("text_model.", "text_projection.", "logit_scale", "logit_bias")  # full CLIP and SigLIP
_CLIP_EOS = 49407  # CLIP's end-of-text token
_VISION_TOWER = ("vision_model.", "visual_projection.", "logit_scale", "logit_bias")
# model_type -> family of the checkpoints whose text tower is served: full models and text towers.
_TEXT_TYPES: dict[str, Literal["clip", "siglip"]] = {
    "clip": "clip",
    "siglip": "siglip",
    "clip_text_model": "clip",
    "siglip_text_model": "siglip",
}
_UNUSED = ("pooler.", "embeddings.mask_token", "embeddings.position_ids")  # never read at inference
_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}

_BLOCK = r"(?:encoder\.layers?|layers)\.(\d+)\."
# (pattern anchored at the key's start, replacement): every family's names, first match wins.
_RENAMES: list[tuple[str, str]] = [
    (r"embeddings\.(?:cls_token|class_embedding)$", "cls_token"),
    (r"embeddings\.distillation_token$", "dist_token"),
    (r"embeddings\.register_tokens$", "reg_token"),
    (r"embeddings\.(?:position_embeddings|position_embedding\.weight)$", "pos_embed"),
    (r"embeddings\.(?:patch_embeddings\.projection|patch_embedding)\.", "patch_embed.proj."),
    (r"embeddings\.token_embedding\.", "tok_embed."),
    (r"pre_layrnorm\.", "norm_pre."),
    (r"(?:layernorm|post_layernorm|final_layer_norm)\.", "norm."),
    (_BLOCK + r"(?:layernorm_before|layer_norm1|norm1)\.", r"blocks.\1.norm1."),
    (_BLOCK + r"(?:layernorm_after|layer_norm2|norm2)\.", r"blocks.\1.norm2."),
    (_BLOCK + r"attention\.attention\.query\.", r"blocks.\1.attn.q."),
    (_BLOCK + r"attention\.attention\.key\.", r"blocks.\1.attn.k."),
    (_BLOCK + r"attention\.attention\.value\.", r"blocks.\1.attn.v."),
    (_BLOCK + r"(?:self_attn|attention)\.([qkv])_proj\.", r"blocks.\1.attn.\2."),
    (_BLOCK + r"(?:attention\.output\.dense|self_attn\.out_proj|attention\.o_proj)\.", r"blocks.\1.attn.proj."),
    (_BLOCK + r"(?:intermediate\.dense|mlp\.fc1|mlp\.weights_in)\.", r"blocks.\1.mlp.fc1."),
    (_BLOCK + r"mlp\.(gate|up)_proj\.", r"blocks.\1.mlp.\2."),
    (_BLOCK + r"(?:output\.dense|mlp\.fc2|mlp\.weights_out|mlp\.down_proj)\.", r"blocks.\1.mlp.fc2."),
    (_BLOCK + r"layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"(?:classifier|cls_classifier)\.", "head."),
    (r"distillation_classifier\.", "head_dist."),
    (r"(?:visual|text)_projection\.", "proj."),
    (r"head\.probe$", "attn_pool.probe"),
    (r"head\.attention\.out_proj\.", "attn_pool.proj."),
    (r"head\.attention\.in_proj_", "attn_pool.in_proj."),  # split into q and kv below
    (r"head\.layernorm\.", "attn_pool.norm."),
    (r"head\.mlp\.", "attn_pool.mlp."),
]


def hf_to_native(state: StateDict, cfg: ViTConfig | TextConfig, skip: tuple[str, ...] = ()) -> StateDict:
    """A transformers state dict in this layout, without the keys skipped by name (`skip`, and
    what inference never reads). q, k and v are fused into timm's qkv; HF ViT's pooler (a tanh
    layer after y) is not the ViT's y and is dropped with the rest of `_UNUSED`."""
    out: StateDict = {}
    for key, value in state.items():
        name = re.sub(r"^(?:vit|deit|vision_model|text_model)\.", "", key)
        if key.startswith(skip) or name.startswith(_UNUSED):
            continue
        for pattern, replacement in _RENAMES:
            new, n = re.subn(rf"^{pattern}", replacement, name)
            if n:
                name = new
                break
        out[name] = value
    if "cls_token" in out and out["cls_token"].ndim == 1:  # CLIP's class_embedding is (D,)
        out["cls_token"] = out["cls_token"].reshape(1, 1, -1)
    if out.get("pos_embed") is not None and out["pos_embed"].ndim == 2:  # an nn.Embedding's (T, D)
        out["pos_embed"] = out["pos_embed"].unsqueeze(0)
    for kind in ("weight", "bias"):  # nn.MultiheadAttention's packed q, k, v
        packed = out.pop(f"attn_pool.in_proj.{kind}", None)
        if packed is not None:
            out[f"attn_pool.q.{kind}"], out[f"attn_pool.kv.{kind}"] = packed.split([cfg.embed_dim, 2 * cfg.embed_dim])
    for i in range(cfg.depth):  # transformers 5's SwiGLU: gate and up projections, packed as [gate; up]
        for kind in ("weight", "bias"):
            gate, up = out.pop(f"blocks.{i}.mlp.gate.{kind}", None), out.pop(f"blocks.{i}.mlp.up.{kind}", None)
            if gate is not None and up is not None:
                out[f"blocks.{i}.mlp.fc1.{kind}"] = torch.cat([gate, up])
    return fuse_qkv(out, cfg.depth)


def load_hf(path: Path) -> Checkpoint:
    meta = read_json(path / "config.json")
    model_type = meta.get("model_type", "vit")
    family = FAMILIES.get(_MODEL_TYPES.get(model_type, ""))
    supported = ", ".join(sorted(_MODEL_TYPES))
    if family is None:
        raise CheckpointError(f"{path}: model_type {model_type!r} is not a supported family ({supported})")
    architectures = meta.get("architectures") or []
    unknown = [a for a in architectures if a not in family.architectures]
    if unknown:
        raise CheckpointError(
            f"{path}: architecture {unknown[0]} is not served; for {model_type}: {', '.join(family.architectures)}"
        )
    vision = meta.get("vision_config", meta) if model_type in ("clip", "siglip") else meta
    weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin")
    state = read_weights(weights)
    processor = read_json(path / "preprocessor_config.json") if (path / "preprocessor_config.json").is_file() else {}
    size = vision.get("image_size", 224)
    try:
        preprocess, served = from_hf_processor(
            processor or {"image_processor_type": family.processor, "size": size, "crop_size": size}
        )
    except ValueError as exc:
        raise CheckpointError(f"{path}/preprocessor_config.json: {exc}") from exc
    try:
        cfg = _config(family, vision, state, served)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}/config.json: {exc}") from exc
    model = VisionTransformer(cfg)
    skip = _OTHER_TOWER if model_type in ("clip", "siglip") else ()
    load_strict(
        model, hf_to_native(state, cfg, skip), f"{weights} (Hugging Face {model_type})", antialias=family.antialias
    )
    labels = _hf_labels(meta, cfg.num_classes)
    return Checkpoint(model, "huggingface", path, sha256_of(weights), labels, preprocess)


def load_hf_text(path: Path) -> TextTower | None:
    """The text tower of a full CLIP or SigLIP checkpoint (with the pair's similarity), or of a
    text-tower checkpoint (`CLIPTextModelWithProjection`, `SiglipTextModel`), loaded strictly; None
    for a checkpoint without one."""
    meta = read_json(path / "config.json")
    family = _TEXT_TYPES.get(meta.get("model_type", ""))
    if family is None:
        return None
    text = meta.get("text_config", meta)
    weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin")
    state = read_weights(weights)
    # CLIP's projection, or SigLIP's head (a text-tower checkpoint of transformers 5 has no prefix)
    names = ("text_projection.weight",) if family == "clip" else ("text_model.head.weight", "head.weight")
    output = next((state[name] for name in names if name in state), None)
    if output is None:
        raise CheckpointError(f"{path}: a {family} text tower without its projection is not served")
    try:
        cfg = _text_config(family, text, output.shape[0])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}/config.json: {exc}") from exc
    model = TextTransformer(cfg)
    load_strict(model, hf_to_native(state, cfg, _VISION_TOWER), f"{weights} (Hugging Face {family} text)")
    similarity = None
    if "logit_scale" in state:
        bias = float(state["logit_bias"].reshape(-1)[0]) if "logit_bias" in state else 0.0
        similarity = Similarity(family, float(state["logit_scale"].float().exp().reshape(-1)[0]), bias)
    return TextTower(model.eval(), similarity)


def _text_config(family: Literal["clip", "siglip"], text: dict[str, Any], proj_dim: int) -> TextConfig:
    act = text.get("hidden_act", "quick_gelu" if family == "clip" else "gelu_pytorch_tanh")
    if act not in _ACTIVATIONS:
        raise ValueError(f"hidden_act {act!r} is not one of {', '.join(_ACTIVATIONS)}")
    return TextConfig(
        family=family,
        vocab_size=text.get("vocab_size", 49408 if family == "clip" else 32000),
        context_length=text.get("max_position_embeddings", 77 if family == "clip" else 64),
        embed_dim=text.get("hidden_size", 512 if family == "clip" else 768),
        depth=text.get("num_hidden_layers", 12),
        num_heads=text.get("num_attention_heads", 8 if family == "clip" else 12),
        mlp_dim=text.get("intermediate_size", 2048 if family == "clip" else 3072),
        ln_eps=text.get("layer_norm_eps", 1e-5 if family == "clip" else 1e-6),
        ffn=_ACTIVATIONS[act],  # type: ignore[arg-type]
        proj_dim=proj_dim,
        eos_token_id=text.get("eos_token_id", _CLIP_EOS),  # what transformers' CLIPTextConfig defaults to
    )


def _config(family: Family, vision: dict[str, Any], state: StateDict, served: int) -> ViTConfig:
    """The ViTConfig of this checkpoint, served at `served` pixels (position embeddings are
    resampled to it at load, as transformers does at each call)."""
    act = vision.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ValueError(f"hidden_act {act!r} is not one of {', '.join(_ACTIVATIONS)}")
    dim = vision.get("hidden_size", 768)
    mlp = vision.get("intermediate_size") or int(dim * vision.get("mlp_ratio", 4))
    ffn = "swiglu" if vision.get("use_swiglu_ffn") else _ACTIVATIONS[act]
    if ffn == "swiglu":  # DINOv2's rule: two thirds of the MLP's width, rounded up to a multiple of 8
        mlp = (int(mlp * 2 / 3) + 7) // 8 * 8
    head = next((state[k] for k in ("classifier.weight", "cls_classifier.weight") if k in state), None)
    projection = next((v for k, v in state.items() if k.endswith("visual_projection.weight")), None)
    flags = dict(family.flags)
    if family.name == "siglip" and not vision.get("vision_use_head", True):
        flags["pool"] = "none"  # PaliGemma's tower: hidden states only
    elif family.name == "siglip":
        flags["pool"] = "map"
    return ViTConfig(
        image_size=served,
        patch_size=vision.get("patch_size", 16),
        in_chans=vision.get("num_channels", 3),
        embed_dim=dim,
        depth=vision.get("num_hidden_layers", 12),
        num_heads=vision.get("num_attention_heads", 12),
        mlp_dim=mlp,
        num_classes=head.shape[0] if head is not None else 0,
        ln_eps=vision.get("layer_norm_eps", 1e-12),
        qkv_bias=vision.get("qkv_bias", True),
        family=family.name,  # type: ignore[arg-type]  # one of FAMILIES' names
        reg_tokens=vision.get("num_register_tokens", 0),
        ffn=ffn,  # type: ignore[arg-type]
        proj_dim=projection.shape[0] if projection is not None else 0,
        **flags,
    )


def _hf_labels(meta: dict[str, Any], num_classes: int) -> list[str] | None:
    """id2label in index order, unless it is HF's placeholder LABEL_0…LABEL_{n-1}."""
    id2label = meta.get("id2label") or {}
    try:
        labels = [str(id2label[str(i)]) if str(i) in id2label else str(id2label[i]) for i in range(num_classes)]
    except KeyError:
        return None
    if not labels or labels == [f"LABEL_{i}" for i in range(num_classes)]:
        return None
    return labels
