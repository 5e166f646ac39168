"""service/engine/text_tower.py: a pair's text tower loaded beside its image tower, texts padded
into batches by length as their tokenizer pads them, and what it refuses to serve."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as T

from model.hf import load_hf_text
from model.tokenizer import TextTokenizer
from model.weights import CheckpointError
from service.engine.text_tower import TextEngine
from tests.families import _text, save_pair

CPU = torch.device("cpu")


def engine(family: str, path: Path) -> TextEngine:
    save_pair(family, path)
    loaded = TextEngine.load(path, 16 if family == "clip" else 32, CPU, torch.float32)
    assert loaded is not None
    return loaded


def test_clip_texts_are_bucketed_by_length_and_padding_changes_nothing(tmp_path: Path) -> None:
    tower = engine("clip", tmp_path)
    assert [tower.length_bucket((1,) * n) for n in (1, 8, 9, 17, 40, 77)] == [8, 8, 16, 32, 64, 77]
    texts = [(0, 5, 6, 1), (0, 7, 1)]
    alone = tower.forward(tower.stage(texts[:1]))
    padded = tower.forward(tower.stage([texts[0], (0, *range(3, 40), 1)]))  # a batch padded to 39
    assert tower.stage(texts).shape == (2, 2, 4)  # the longest text's length
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_siglip_texts_are_padded_to_the_full_length_on_the_tokenizers_side(family: str, tmp_path: Path) -> None:
    tower = engine(family, tmp_path)
    assert {tower.length_bucket((1,) * n) for n in (1, 30, 64)} == {64}
    staged = tower.stage([(5, 6, 1)])
    ids, mask = staged[0, 0].tolist(), staged[0, 1].tolist()
    tokens = TextTokenizer.from_dir(tmp_path, 64)
    assert ids == tokens.pad([(5, 6, 1)], 64)[0].tolist() and sum(mask) == 3
    assert (ids[:3] == [5, 6, 1]) == (family == "siglip")  # SigLIP2's Gemma tokenizer pads on the left
    loaded = load_hf_text(tmp_path)
    assert loaded is not None
    with torch.inference_mode():
        want = loaded.model(staged[:, 0], staged[:, 1])
    torch.testing.assert_close(tower.forward(staged), want)
    assert tower.card.pad_to == 64 and tower.card.similarity == "sigmoid" and tower.card.bias == pytest.approx(0.2)


def test_a_pair_without_a_tokenizer_serves_images_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save_pair("clip", tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    assert TextEngine.load(tmp_path, 16, CPU, torch.float32) is None
    assert "serving images only" in caplog.text


def test_a_text_tower_alone_or_of_another_size_is_refused(tmp_path: Path) -> None:
    save_pair("siglip", tmp_path / "pair")
    with pytest.raises(CheckpointError, match="not the size of the image tower's"):
        TextEngine.load(tmp_path / "pair", 48, CPU, torch.float32)
    T.SiglipTextModel(T.SiglipTextConfig(**_text(), vocab_size=40)).save_pretrained(tmp_path / "alone")
    with pytest.raises(CheckpointError, match="a text tower alone is not served"):
        TextEngine.load(tmp_path / "alone", 32, CPU, torch.float32)
