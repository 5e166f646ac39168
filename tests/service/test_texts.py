"""service/texts.py: texts checked and tokenized, the label cache's bounds and its metrics, and
zero-shot scores as the pair's similarity (model/text.py) computes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import generate_latest

from model.text import Similarity
from model.tokenizer import TextTokenizer
from service.engine.card import TextCard
from service.errors import InvalidParameter, PayloadTooLarge
from service.metrics import Metrics
from service.texts import MAX_TEXT_CHARS, LabelCache, Texts, zero_shot_scores
from tests.families import clip_tokenizer

CLIP = TextCard("tokenizer.json", 77, None, 4, "softmax", 4.953, 0.0)
SIGLIP = TextCard("spiece.model", 64, 64, 4, "sigmoid", 10.0, -2.5)


def test_the_cache_keeps_the_most_recently_used_and_counts_hits() -> None:
    metrics = Metrics()
    cache = LabelCache(2, metrics)
    a, b, c = ("m", "t {}", "a"), ("m", "t {}", "b"), ("m", "t {}", "c")
    cache.put(a, np.ones(2))
    cache.put(b, np.zeros(2))
    assert cache.get(a) is not None  # a is now the most recent: b goes first
    cache.put(c, np.ones(2))
    assert cache.get(b) is None and cache.get(c) is not None and len(cache) == 2
    text = generate_latest(metrics.registry).decode()
    assert 'vit_label_cache_lookups_total{result="hit"} 2.0' in text
    assert 'vit_label_cache_lookups_total{result="miss"} 1.0' in text
    assert f"vit_label_cache_hit_ratio {2 / 3}" in text


def test_a_cache_of_size_zero_keeps_nothing() -> None:
    cache = LabelCache(0, Metrics())
    cache.put(("m", "{}", "a"), np.ones(2))
    assert cache.get(("m", "{}", "a")) is None and len(cache) == 0


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Texts:
    path: Path = tmp_path_factory.mktemp("clip")
    clip_tokenizer().save_pretrained(path)
    return Texts(TextTokenizer.from_dir(path, 77), CLIP, LabelCache(4, Metrics()))


async def test_texts_are_tokenized_as_their_tokenizer_does_long_ones_off_the_loop(texts: Texts) -> None:
    short = ["a photo of a cat", "dog"]
    assert await texts.tokenize(short) == [tuple(ids) for ids in texts.tokenizer.encode(short)]
    many = ["a photo of a dog " * 900] * 5  # 76,500 characters: tokenized on a thread
    assert [len(ids) for ids in await texts.tokenize(many)] == [77] * 5


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("", InvalidParameter, r"labels\[1\] is empty"),
        ("x" * (MAX_TEXT_CHARS + 1), PayloadTooLarge, rf"labels\[1\] is {MAX_TEXT_CHARS + 1} characters"),
    ],
)
async def test_a_text_that_cannot_be_embedded_is_refused_by_its_index(texts, text, error, message) -> None:
    with pytest.raises(error, match=message):
        await texts.tokenize(["fine", text], "labels")


@pytest.mark.parametrize("card", [CLIP, SIGLIP], ids=["clip", "siglip"])
def test_zero_shot_scores_are_the_similarity_of_the_pair(card: TextCard) -> None:
    rng = np.random.default_rng(0)
    image, labels = rng.normal(size=4).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    units = labels / np.linalg.norm(labels, axis=1, keepdims=True)
    family = "clip" if card.similarity == "softmax" else "siglip"
    want = Similarity(family, card.scale, card.bias).scores(torch.from_numpy(image)[None], torch.from_numpy(labels))
    image_unit = image / np.linalg.norm(image)
    np.testing.assert_allclose(zero_shot_scores(card, image_unit, units), want[0].numpy(), atol=1e-6)
