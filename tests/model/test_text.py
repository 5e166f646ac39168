"""The text towers (model/text.py, loaded by model/hf.py's load_hf_text) against transformers'
`get_text_features`, on scrambled random weights, for every checkpoint class that has one; and
with the image tower and the tokenizer, zero-shot scores against transformers' pipeline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as T

from model.checkpoints import load_checkpoint
from model.hf import load_hf_text
from model.tensors import load_image, normalize
from model.text import TextTransformer
from model.tokenizer import TextTokenizer
from model.vit import Attention
from model.weights import CheckpointError
from tests.families import (
    CASES,
    PAIRS,
    _scrambled,
    _text,
    _vision,
    save_pair,
)
from tests.images import encode, photo

VOCAB = 99


def _clip_text(**extra: Any) -> dict[str, Any]:
    return {**_text(), "vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 1, **extra}


TOWERS: dict[str, Callable[[], Any]] = {
    "CLIPModel": next(c for c in CASES if c.name == "CLIPModel").build,
    "CLIPModel, legacy end-of-text id": lambda: _scrambled(
        T.CLIPModel(T.CLIPConfig(text_config=_clip_text(eos_token_id=2), vision_config=_vision(), projection_dim=8)),
        21,
    ),
    "CLIPTextModelWithProjection": lambda: _scrambled(
        T.CLIPTextModelWithProjection(T.CLIPTextConfig(**_clip_text(hidden_act="gelu"), projection_dim=12)), 22
    ),
    "SiglipModel": next(c for c in CASES if c.name == "SiglipModel").build,
    "SiglipTextModel": lambda: _scrambled(
        T.SiglipTextModel(T.SiglipTextConfig(**_text(), vocab_size=VOCAB, projection_size=20)), 23
    ),
}


def _tokens(eos: int, legacy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Three right-padded sequences of different lengths, each ended by `eos` (the largest id,
    for CLIP's legacy rule), and their attention mask."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB - 1, (3, 9), generator=generator)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for row, length in enumerate((9, 5, 2)):
        ids[row, length - 1] = VOCAB - 1 if legacy else eos
        ids[row, length:] = 0  # padding
        mask[row, :length] = 1
    return ids, mask


@pytest.mark.parametrize("name", TOWERS)
@torch.inference_mode()
def test_text_embeddings_match_transformers(name: str, tmp_path: Path) -> None:
    reference = TOWERS[name]()
    reference.save_pretrained(tmp_path)
    loaded = load_hf_text(tmp_path)
    assert loaded is not None and isinstance(loaded.model, TextTransformer)
    assert (loaded.similarity is None) == name.endswith(("WithProjection", "TextModel"))  # no pair, no scale
    tower = loaded.model
    text_config = getattr(reference.config, "text_config", reference.config)
    eos = text_config.eos_token_id if text_config.eos_token_id < VOCAB else 1  # SigLIP's default is CLIP's id
    ids, mask = _tokens(eos, eos == 2)
    if hasattr(reference, "get_text_features"):
        expected = reference.get_text_features(input_ids=ids, attention_mask=mask)
    else:
        out = reference(input_ids=ids, attention_mask=mask)
        expected = getattr(out, "text_embeds", None)
        expected = out.pooler_output if expected is None else expected
    expected = getattr(expected, "pooler_output", expected)
    got = tower(ids, mask)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    for module in tower.modules():  # the explicit softmax, with the same masks
        if isinstance(module, Attention):
            module.fused = False
    torch.testing.assert_close(tower(ids, mask), expected, atol=1e-4, rtol=1e-4)


def test_a_checkpoint_without_a_text_tower_has_none(tmp_path: Path) -> None:
    next(c for c in CASES if c.name == "CLIPVisionModelWithProjection").build().save_pretrained(tmp_path)
    assert load_hf_text(tmp_path) is None


def test_a_clip_text_model_without_its_projection_is_refused(tmp_path: Path) -> None:
    T.CLIPTextModel(T.CLIPTextConfig(**_clip_text())).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="without its projection"):
        load_hf_text(tmp_path)


def test_a_text_tower_that_does_not_fit_is_refused_naming_the_keys(tmp_path: Path) -> None:
    reference = TOWERS["SiglipTextModel"]()
    reference.config.num_hidden_layers = 2  # the config says two blocks; the weights hold one
    reference.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): blocks\.1\."):
        load_hf_text(tmp_path)


@pytest.mark.parametrize("family", PAIRS)
def test_zero_shot_scores_are_the_transformers_pipelines(family: str, tmp_path: Path) -> None:
    """Image tower, tokenizer, text tower and similarity together, against transformers'
    zero-shot-image-classification pipeline on the same directory, image, labels and template."""
    save_pair(family, tmp_path)
    labels, image = ["cat", "dog", "plane", "a photo of a lazy dog!"], photo()
    pipeline = T.pipeline("zero-shot-image-classification", model=str(tmp_path))
    expected = {answer["label"]: answer["score"] for answer in pipeline(image, candidate_labels=labels)}

    checkpoint = load_checkpoint(tmp_path)
    loaded = load_hf_text(tmp_path)
    assert loaded is not None and loaded.similarity is not None
    text_tokenizer = TextTokenizer.from_dir(tmp_path, loaded.model.cfg.context_length)
    with torch.inference_mode():
        pixels = load_image(encode(image, "PNG"), checkpoint.model.cfg.image_size, checkpoint.preprocess)
        embedding = checkpoint.model(normalize(pixels[None], checkpoint.preprocess.mean, checkpoint.preprocess.std))
        siglip = family != "clip"  # as the pipeline calls it: padded to its full length, with the mask
        tokens = text_tokenizer([f"This is a photo of {label}." for label in labels], 64 if siglip else None)
        scores = loaded.similarity.scores(embedding.embedding, loaded.model(tokens.ids, tokens.mask))[0]
    assert 0.05 < max(expected.values()) < 0.95  # scores that say something
    for label, score in zip(labels, scores.tolist(), strict=True):
        assert score == pytest.approx(expected[label], abs=1e-5), label
