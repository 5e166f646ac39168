"""service/engine/card.py: what routes know of the model, as a front-end receives it from the
engine process (JSON), and what /v1/models says the embedding is."""

from __future__ import annotations

import dataclasses

import pytest

from model.config import preset
from model.preprocess import PreprocessConfig
from service.engine.card import ModelCard, TextCard


def card(**cfg_changes: object) -> ModelCard:
    return ModelCard(
        model_id="m",
        cfg=preset("vit_test_tiny").with_changes(**cfg_changes),
        labels=("a", "b"),
        preprocess=PreprocessConfig(resize_mode="crop", crop_pct=0.9, interpolation="bicubic"),
        device="cuda:1",
        dtype="bfloat16",
        dtype_reason="auto: bfloat16 (the GPU has it)",
        checkpoint_format="huggingface",
        checkpoint_path="/models/m",
        checkpoint_sha256="0" * 64,
        compiled_buckets=(1, 2, 4, 8),
    )


def test_a_card_crosses_to_a_front_end_unchanged() -> None:
    original = card(proj_dim=16)
    crossed = ModelCard.from_json(original.to_json())
    assert crossed == original and isinstance(crossed.labels, tuple) and isinstance(crossed.compiled_buckets, tuple)
    assert [f.name for f in dataclasses.fields(crossed)] == [f.name for f in dataclasses.fields(original)]


def test_the_device_type_is_what_settings_resolve_by() -> None:
    assert card().device_type == "cuda" and card().image_size == 32


@pytest.mark.parametrize(
    ("changes", "meaning"),
    [
        ({}, "y = LN(z_L⁰)"),
        ({"proj_dim": 16}, "image_embeds"),
        ({"class_token": False, "pool": "map", "num_classes": 0}, "attention-pool"),
        ({"class_token": False, "pool": "none", "num_classes": 0}, "no pooling head"),
    ],
)
def test_what_the_embedding_is_for_each_head(changes: dict, meaning: str) -> None:
    assert meaning in card(**changes).embedding_meaning


def test_a_card_with_a_text_tower_crosses_unchanged() -> None:
    text = TextCard("spiece.model", 64, 64, 32, "sigmoid", 10.5, -2.25)
    original = dataclasses.replace(card(), text=text)
    crossed = ModelCard.from_json(original.to_json())
    assert crossed == original and crossed.text == text
