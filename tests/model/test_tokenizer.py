"""The text towers' tokenizers (model/tokenizer.py): transformers' ids, attention masks and
truncation, from the files a checkpoint ships."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.tokenizer import TextTokenizer
from model.weights import CheckpointError
from tests.families import clip_tokenizer, siglip2_tokenizer, siglip_tokenizer

TEXTS = [
    "A photo of a CAT!",
    "dog",
    "",
    "ünïcode  spaces\tand\ntabs",
    "a photo of a dog " * 20,
    "a </s> b",  # a special token in the text
    "ends with </s>",
    "x▁y <unk>z",
    "  'quoted', (punctuated); text...  ",
]


@pytest.mark.parametrize("max_length", [77, 16])
def test_clip_ids_masks_and_truncation_are_transformers(tmp_path: Path, max_length: int) -> None:
    reference = clip_tokenizer(model_max_length=max_length)
    reference.save_pretrained(tmp_path)
    ours = TextTokenizer.from_dir(tmp_path, context_length=77)
    expected = reference(TEXTS, padding=True, truncation=True, return_tensors="pt")
    tokens = ours(TEXTS)
    assert tokens.ids.tolist() == expected["input_ids"].tolist()
    assert tokens.mask.tolist() == expected["attention_mask"].tolist()
    assert tokens.counts == expected["attention_mask"].sum(1).tolist() and max(tokens.counts) == max_length
    padded = reference(TEXTS[:2], padding="max_length", max_length=max_length, return_tensors="pt")
    assert ours(TEXTS[:2], pad_to=max_length).ids.tolist() == padded["input_ids"].tolist()


def test_siglip_ids_masks_and_truncation_are_transformers(tmp_path: Path) -> None:
    reference = siglip_tokenizer(tmp_path)
    tokens = TextTokenizer.from_dir(tmp_path, context_length=64)(TEXTS, pad_to=64)  # as its zero-shot pipeline pads
    expected = reference(TEXTS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    assert tokens.ids.tolist() == expected["input_ids"].tolist()
    assert tokens.mask.tolist() == expected["attention_mask"].tolist()
    assert max(tokens.counts) == 64  # the long text, truncated, its </s> kept


def test_the_tower_bounds_the_length_where_the_tokenizer_does_not(tmp_path: Path) -> None:
    clip_tokenizer().save_pretrained(tmp_path)  # model_max_length: transformers' "no limit" sentinel
    assert TextTokenizer.from_dir(tmp_path, context_length=12)(TEXTS).ids.shape[1] == 12


def test_a_directory_without_a_tokenizer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no tokenizer\.json or spiece\.model"):
        TextTokenizer.from_dir(tmp_path, context_length=77)


def test_siglip2_ids_and_left_padding_are_transformers(tmp_path: Path) -> None:
    reference = siglip2_tokenizer(tmp_path)
    tokens = TextTokenizer.from_dir(tmp_path, context_length=64)(TEXTS, pad_to=64)
    expected = reference(TEXTS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    assert tokens.ids.tolist() == expected["input_ids"].tolist()
    assert tokens.mask.tolist() == expected["attention_mask"].tolist()
    assert tokens.ids[0, 0] == reference.pad_token_id and tokens.ids[0, -1] == reference.eos_token_id  # on the left
