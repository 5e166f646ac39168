"""model/config.py: the shapes a config fixes (token counts per family), hidden-state indices,
and the round trip through the dict that checkpoints and the model card carry."""

from __future__ import annotations

import pytest

from model.config import FINAL, PRESETS, ViTConfig, preset


@pytest.mark.parametrize(
    ("changes", "prefix", "pos_prefix", "embedding_dim"),
    [
        ({}, 1, 1, 768),  # the paper's ViT: [class] and the patches
        ({"distill_token": True}, 2, 2, 768),  # DeiT-distilled: [class], [dist]
        ({"reg_tokens": 4}, 5, 1, 768),  # DINOv2 with registers: they have no position embedding
        ({"class_token": False, "pool": "map", "num_classes": 0}, 0, 0, 768),  # SigLIP: patches, an attention pool
        ({"proj_dim": 512}, 1, 1, 512),  # CLIP with its projection
        ({"class_token": False, "pool": "none", "num_classes": 0}, 0, 0, 0),  # a bare tower: no embedding
    ],
)
def test_each_familys_tokens_and_embedding(changes: dict, prefix: int, pos_prefix: int, embedding_dim: int) -> None:
    cfg = preset("vit_base_patch16_224").with_changes(**changes)
    assert (cfg.grid_size, cfg.num_patches, cfg.head_dim) == (14, 196, 64)
    assert (cfg.prefix_tokens, cfg.pos_prefix, cfg.num_tokens) == (prefix, pos_prefix, prefix + 196)
    assert cfg.embedding_dim == embedding_dim


def test_hidden_state_indices_count_from_the_input_and_from_the_end() -> None:
    cfg = preset("vit_test_tiny")  # depth 2: z_0, z_1, z_2, then the final-normed tokens
    assert [cfg.layer_index(k) for k in (0, 1, 2, -1, -2, -3, FINAL)] == [0, 1, 2, 2, 1, 0, 3]
    for outside in (3, -4, "last"):
        with pytest.raises(ValueError, match="outside"):
            cfg.layer_index(outside)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_survives_its_dict(name: str) -> None:
    assert ViTConfig.from_dict(preset(name).to_dict()) == preset(name)


def test_a_dict_with_a_field_this_version_does_not_know_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown ViT config fields: patch_dropout"):
        ViTConfig.from_dict(preset("vit_test_tiny").to_dict() | {"patch_dropout": 0.1})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"class_token": False}, "need a class token"),  # the default pool reads the class token
        ({"num_classes": -1}, "num_classes"),
        ({"reg_tokens": -1}, "reg_tokens"),
    ],
)
def test_inconsistent_families_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViTConfig(**changes)


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="vit_base_patch16_224"):
        preset("vit_gigantic")


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"image_size": 30}, "multiple of patch_size"), ({"num_heads": 5}, "divisible"), ({"depth": 0}, "depth")],
)
def test_config_rejects_impossible_shapes(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViTConfig(**{**PRESETS["vit_test_tiny"].to_dict(), **changes})
