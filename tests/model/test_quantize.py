"""model/quantize.py: int8's fidelity gates (docs/BENCHMARKS.md has its speed): embeddings of a
random-weight ViT-S/16 within cosine 0.99 of float32, and vit-mnist's 1,000 held-out digits
classified as float32 classifies them (≥ 99%) and correctly (≥ 97%)."""

from __future__ import annotations

import copy

import torch

from model.checkpoints import load_checkpoint
from model.config import preset
from model.quantize import quantize_int8
from model.train import load_digits, split_indices, to_input
from model.vit import VisionTransformer
from service.engine.device import builtin_path


def test_only_the_blocks_linear_layers_become_int8() -> None:
    model = quantize_int8(VisionTransformer(preset("vit_test_tiny")).eval())
    kinds = {name: type(p).__name__ for name, p in model.named_parameters() if name.endswith("weight")}
    assert kinds["blocks.0.attn.qkv.weight"] == kinds["blocks.1.mlp.fc2.weight"] == "Int8Tensor"
    assert {kinds[name] for name in ("head.weight", "patch_embed.proj.weight", "norm.weight")} == {"Parameter"}


@torch.inference_mode()
def test_vit_s16_embeddings_stay_within_cosine_0_99_of_float32() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(preset("vit_small_patch16_224")).eval()
    int8 = quantize_int8(copy.deepcopy(model))
    pixels = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    cosine = torch.nn.functional.cosine_similarity(int8(pixels).embedding, model(pixels).embedding)
    print(f"int8 against float32, ViT-S/16 embeddings: cosine min {cosine.min():.5f}")
    assert cosine.min() >= 0.99


@torch.inference_mode()
def test_vit_mnist_held_out_digits_agree_with_float32_and_stay_accurate() -> None:
    images, labels = load_digits()
    _, held_out = split_indices(len(images), validate=False)
    pixels, truth = to_input(torch.from_numpy(images[held_out])), torch.from_numpy(labels[held_out])
    model = load_checkpoint(builtin_path()).model.eval()
    int8 = quantize_int8(copy.deepcopy(model))
    full, quantized = model(pixels).logits.argmax(-1), int8(pixels).logits.argmax(-1)
    agreement, accuracy = (full == quantized).float().mean().item(), (quantized == truth).float().mean().item()
    print(f"int8 vit-mnist, 1,000 held-out digits: agreement {agreement:.3f}, accuracy {accuracy:.3f}")
    assert agreement >= 0.99 and accuracy >= 0.97
