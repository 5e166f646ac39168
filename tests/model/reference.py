"""Reference weights from Hugging Face `transformers`, and the public layouts written from them.

The timm and Google files are produced here directly from HF's tensors by the public key
mappings (never through this project's loaders), so that loading them back is a real check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import ViTConfig as HFViTConfig
from transformers import ViTForImageClassification

from model.vit import VisionTransformer

HEADS = 3


def hf_classifier(num_labels: int = 5, image_size: int = 32, seed: int = 0) -> ViTForImageClassification:
    """A small random `ViTForImageClassification`, shaped like the `vit_test_tiny` preset."""
    torch.manual_seed(seed)
    cfg = HFViTConfig(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=192,
        layer_norm_eps=1e-6,
        image_size=image_size,
        patch_size=8,
        num_labels=num_labels,
    )
    model = ViTForImageClassification(cfg).eval()
    with torch.no_grad():  # HF initialises biases and the class token to zero: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias") or "cls_token" in name or "position" in name:
                p.normal_(std=0.1)
    return model


def hf_tensors(model: ViTForImageClassification) -> dict[str, torch.Tensor]:
    """HF's state dict, in the names transformers ≥ 5 writes (`vit.layers.{i}.attention.q_proj`)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def hub_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors in the names of checkpoints on the Hub (`vit.encoder.layer.{i}.attention.attention.query`)."""
    renames = {
        "attention.q_proj": "attention.attention.query",
        "attention.k_proj": "attention.attention.key",
        "attention.v_proj": "attention.attention.value",
        "attention.o_proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    out = {}
    for key, value in state.items():
        key = key.replace("vit.layers.", "vit.encoder.layer.")
        for old, new in renames.items():
            key = key.replace(f".{old}.", f".{new}.")
        out[key] = value
    return out


def timm_layout(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """timm `VisionTransformer` names; `blocks.{i}.attn.qkv` = concat(q, k, v) along the output dim."""
    out = {
        "cls_token": state["vit.embeddings.cls_token"],
        "pos_embed": state["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": state["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["vit.layernorm.weight"],
        "norm.bias": state["vit.layernorm.bias"],
        "head.weight": state["classifier.weight"],
        "head.bias": state["classifier.bias"],
    }
    for i in range(depth):
        hf, t = f"vit.layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{t}norm1.{kind}"] = state[f"{hf}layernorm_before.{kind}"]
            out[f"{t}norm2.{kind}"] = state[f"{hf}layernorm_after.{kind}"]
            out[f"{t}attn.qkv.{kind}"] = torch.cat([state[f"{hf}attention.{x}_proj.{kind}"] for x in "qkv"])
            out[f"{t}attn.proj.{kind}"] = state[f"{hf}attention.o_proj.{kind}"]
            out[f"{t}mlp.fc1.{kind}"] = state[f"{hf}mlp.fc1.{kind}"]
            out[f"{t}mlp.fc2.{kind}"] = state[f"{hf}mlp.fc2.{kind}"]
    return out


def npz_layout(state: dict[str, torch.Tensor], depth: int, big_vision: bool = False) -> dict[str, np.ndarray]:
    """Flax names and shapes: Dense kernels (in, out); attention q/k/v kernels (D, heads, head_dim),
    the output kernel (heads, head_dim, D); the conv kernel HWIO.

    Original layout: `Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1,
    LayerNorm_2, MlpBlock_3}` and `Transformer/posembed_input/pos_embedding`.
    big_vision: under `params/`, blocks of `LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1,
    MlpBlock_0`, and a top-level `pos_embedding` without the class token's row.
    """
    a = {k: v.numpy() for k, v in state.items()}
    dim = a["vit.layernorm.weight"].shape[0]
    hd = dim // HEADS
    prefix = "params/" if big_vision else ""
    ln1, mha, ln2, mlp = (
        ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")
        if big_vision
        else ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    )
    pos = a["vit.embeddings.position_embeddings"]
    out = {
        "cls": a["vit.embeddings.cls_token"],
        "embedding/kernel": a["vit.embeddings.patch_embeddings.projection.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": a["vit.embeddings.patch_embeddings.projection.bias"],
        "Transformer/encoder_norm/scale": a["vit.layernorm.weight"],
        "Transformer/encoder_norm/bias": a["vit.layernorm.bias"],
        "head/kernel": a["classifier.weight"].T,
        "head/bias": a["classifier.bias"],
    }
    if big_vision:
        out["pos_embedding"] = pos[:, 1:]
    else:
        out["Transformer/posembed_input/pos_embedding"] = pos
    for i in range(depth):
        hf, g = f"vit.layers.{i}.", f"Transformer/encoderblock_{i}/"
        out[f"{g}{ln1}/scale"] = a[f"{hf}layernorm_before.weight"]
        out[f"{g}{ln1}/bias"] = a[f"{hf}layernorm_before.bias"]
        out[f"{g}{ln2}/scale"] = a[f"{hf}layernorm_after.weight"]
        out[f"{g}{ln2}/bias"] = a[f"{hf}layernorm_after.bias"]
        for name, x in (("query", "q"), ("key", "k"), ("value", "v")):
            out[f"{g}{mha}/{name}/kernel"] = a[f"{hf}attention.{x}_proj.weight"].T.reshape(dim, HEADS, hd)
            out[f"{g}{mha}/{name}/bias"] = a[f"{hf}attention.{x}_proj.bias"].reshape(HEADS, hd)
        out[f"{g}{mha}/out/kernel"] = a[f"{hf}attention.o_proj.weight"].T.reshape(HEADS, hd, dim)
        out[f"{g}{mha}/out/bias"] = a[f"{hf}attention.o_proj.bias"]
        for r in (0, 1):
            out[f"{g}{mlp}/Dense_{r}/kernel"] = a[f"{hf}mlp.fc{r + 1}.weight"].T
            out[f"{g}{mlp}/Dense_{r}/bias"] = a[f"{hf}mlp.fc{r + 1}.bias"]
    return {prefix + k: np.ascontiguousarray(v) for k, v in out.items()}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


DEPTH = 2
PRESET = "vit_test_tiny"  # same shapes as `hf_classifier()`, 5-class head from the weights
Reference = tuple[ViTForImageClassification, torch.Tensor, torch.Tensor, torch.Tensor]


def reference_outputs() -> Reference:
    """HF's classifier and its outputs on fixed pixels: (model, pixels, logits, y)."""
    model = hf_classifier()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    y = model.vit.layernorm(out.hidden_states[-1])[:, 0]  # HF's last_hidden_state[:, 0]
    return model, x, out.logits, y


def assert_matches(model: VisionTransformer, reference: Reference, atol: float = 1e-5) -> None:
    """`model` gives HF's logits and [class] embedding on the reference pixels."""
    _, x, logits, y = reference
    with torch.inference_mode():
        out = model.eval()(x)
    assert (out.logits - logits).abs().max() <= atol
    assert (out.embedding - y).abs().max() <= atol
