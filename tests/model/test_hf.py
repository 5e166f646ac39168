"""model/hf.py: every family's transformers checkpoints load strictly and compute what
transformers computes on the same weights (tests/families.py builds them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.checkpoints import load_checkpoint
from model.config import FINAL, Layer
from model.convert import main as convert
from model.hf import from_hf_processor
from model.weights import CheckpointError
from tests.families import CASES, Case, reference, save

LAYOUTS = [(case, False) for case in CASES] + [(case, True) for case in CASES if case.old_keys]


@pytest.mark.parametrize(
    ("case", "old_keys"), LAYOUTS, ids=[f"{c.name}{'-4.x-keys' if old else ''}" for c, old in LAYOUTS]
)
def test_each_family_matches_transformers(case: Case, old_keys: bool, tmp_path: Path) -> None:
    hf = save(case, tmp_path, old_keys)
    ckpt = load_checkpoint(tmp_path)
    cfg = ckpt.config
    assert (cfg.image_size, cfg.prefix_tokens, cfg.embedding_dim) == (32, case.prefix_tokens, case.embedding_dim)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = reference(hf, pixels)
    layers: list[Layer] = [*range(cfg.depth + 1), -2, FINAL]
    with torch.inference_mode():
        out = ckpt.model.eval()(pixels, layers)
    for layer in range(cfg.depth + 1):
        assert (out.hidden_states[layer] - expected.hidden_states[layer]).abs().max() <= 1e-4, layer
    assert (out.hidden_states[-2] - expected.hidden_states[-2]).abs().max() <= 1e-4
    assert (out.hidden_states[FINAL] - expected.last_hidden_state).abs().max() <= 1e-4
    if case.embedding_dim:
        assert expected.embedding is not None
        assert (out.embedding - expected.embedding).abs().max() <= 1e-4
    else:
        assert out.embedding.shape == (2, 0)
    if expected.probs is not None:
        assert out.logits is not None
        assert (out.logits.softmax(-1) - expected.probs).abs().max() <= 1e-5
        assert ckpt.labels == [f"class-{i}" for i in range(5)]


def test_an_unsupported_model_type_is_named_with_the_families(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "convnext"}))
    with pytest.raises(CheckpointError, match=r"model_type 'convnext' is not a supported family \(clip, "):
        load_checkpoint(tmp_path)


def test_an_unsupported_class_of_a_family_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPTextModel"]}))
    with pytest.raises(CheckpointError, match="architecture CLIPTextModel is not served; for clip: CLIPVisionModel"):
        load_checkpoint(tmp_path)


def test_a_stray_vision_key_is_named_while_the_text_tower_is_skipped(tmp_path: Path) -> None:
    """Strict stays strict: only the other tower of a full model is skipped, and by name."""
    from safetensors.torch import load_file, save_file

    save(next(c for c in CASES if c.name == "CLIPModel"), tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["vision_model.encoder.layers.0.extra.weight"] = torch.zeros(2)
    del state["vision_model.post_layernorm.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path)
    message = str(error.value)
    assert "missing keys (1): norm.bias" in message and "unexpected keys (1): encoder.layers.0.extra.weight" in message
    assert "text_model" not in message


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_vit_convert_keeps_each_family_and_its_preprocessing(case: Case, tmp_path: Path) -> None:
    save(case, tmp_path / "hf")
    assert convert([str(tmp_path / "hf"), str(tmp_path / "native")]) == 0
    hf, native = load_checkpoint(tmp_path / "hf"), load_checkpoint(tmp_path / "native")
    assert native.format == "native"
    assert (native.config, native.preprocess, native.labels) == (hf.config, hf.preprocess, hf.labels)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        a, b = hf.model.eval()(pixels, [-2]), native.model.eval()(pixels, [-2])
    assert torch.equal(a.embedding, b.embedding) and torch.equal(a.hidden_states[-2], b.hidden_states[-2])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bfloat16_stays_within_cosine_0_999_of_float32(case: Case, tmp_path: Path) -> None:
    """The service's bf16 path (weights and pixels in bf16, SDPA) for every family, on the CPU."""
    save(case, tmp_path)
    model = load_checkpoint(tmp_path).model.eval()
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = model(pixels, [-2, FINAL])
        half = model.to(torch.bfloat16)(pixels.bfloat16(), [-2, FINAL])
    pairs = [(full.hidden_states[k], half.hidden_states[k]) for k in (-2, FINAL)]
    if case.embedding_dim:
        pairs.append((full.embedding, half.embedding))
    for a, b in pairs:
        cosine = torch.nn.functional.cosine_similarity(a.flatten(1), b.float().flatten(1))
        assert cosine.min() >= 0.999


@pytest.mark.parametrize(
    ("processor", "expected", "served"),
    [
        (  # the legacy CLIPFeatureExtractor form: an int size is the shortest edge
            {"feature_extractor_type": "CLIPFeatureExtractor", "size": 224, "crop_size": 224},
            {"resize_mode": "crop", "resize_size": 224, "interpolation": "bicubic", "crop_offset": "floor"},
            224,
        ),
        (  # DeiT: an int size is a square, resized to before the centre crop
            {"image_processor_type": "DeiTImageProcessor", "size": 256, "crop_size": 224},
            {"resize_mode": "squash", "resize_size": 256, "interpolation": "bicubic"},
            224,
        ),
        (  # DINOv2's BiT processor: the served size is the crop's, whatever config.image_size says
            {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 256}, "crop_size": 224},
            {"resize_mode": "crop", "resize_size": 256, "mean": (0.48145466, 0.4578275, 0.40821073)},
            224,
        ),
        (
            {"image_processor_type": "SiglipImageProcessor", "size": {"height": 384, "width": 384}},
            {"resize_mode": "squash", "resize_size": 0, "mean": (0.5, 0.5, 0.5)},
            384,
        ),
    ],
)
def test_hf_processors_map_to_their_geometry(processor: dict, expected: dict, served: int) -> None:
    config, size = from_hf_processor(processor)
    assert size == served
    assert {k: getattr(config, k) for k in expected} == expected


@pytest.mark.parametrize(
    ("processor", "message"),
    [
        ({"image_processor_type": "ConvNextImageProcessor"}, "is not one of"),
        ({"image_processor_type": "CLIPImageProcessor", "do_center_crop": False}, "images of any shape"),
        ({"image_processor_type": "ViTImageProcessor", "size": {"height": 224, "width": 300}}, "square"),
        ({"image_processor_type": "ViTImageProcessor", "rescale_factor": 1 / 127.5}, "1/255"),
        ({"image_processor_type": "DeiTImageProcessor", "size": 200, "crop_size": 224}, "no larger than"),
    ],
)
def test_hf_processors_that_would_serve_other_pixels_are_refused(processor: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_hf_processor(processor)
