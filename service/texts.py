"""Texts on the front-end's side of a CLIP or SigLIP pair: checked, tokenized (with the
checkpoint directory's own tokenizer, model/tokenizer.py), and the zero-shot label embeddings
kept in a bounded LRU, so that a stream of requests with the same labels encodes them once.

Tokenizing here, where images are decoded, keeps the engine to tensors: it receives token ids
and batches texts by their length (service/engine/text_tower.py).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.tokenizer import TextTokenizer
from service.engine.card import ModelCard, TextCard
from service.engine.text_tower import TokenIds
from service.errors import InvalidParameter, PayloadTooLarge
from service.metrics import Metrics

MAX_TEXT_CHARS = 16_384  # far past any tower's 64 or 77 tokens; bounds a text's tokenizing time
DEFAULT_TEMPLATE = "This is a photo of {}."  # transformers' zero-shot-image-classification pipeline's
_TOKENIZE_INLINE = 65_536  # characters in one call: more are tokenized on a thread, off the event loop


class LabelCache:
    """Unit-length label embeddings by (model, template, label), the least recently used out first."""

    def __init__(self, size: int, metrics: Metrics) -> None:
        self.size, self.metrics = size, metrics
        self._vectors: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
        self.hits = self.lookups = 0

    def get(self, key: tuple[str, str, str]) -> np.ndarray | None:
        vector = self._vectors.get(key)
        if vector is not None:
            self._vectors.move_to_end(key)
        self.lookups += 1
        self.hits += vector is not None
        self.metrics.label_cache.labels(result="hit" if vector is not None else "miss").inc()
        self.metrics.label_cache_hit_ratio.set(self.hits / self.lookups)
        return vector

    def put(self, key: tuple[str, str, str], vector: np.ndarray) -> None:
        if self.size == 0:
            return
        self._vectors[key] = vector
        self._vectors.move_to_end(key)
        while len(self._vectors) > self.size:
            self._vectors.popitem(last=False)

    def __len__(self) -> int:
        return len(self._vectors)


class Texts:
    """The served pair's tokenizer, what its text tower is (`card`), and its label cache."""

    def __init__(self, tokenizer: TextTokenizer, card: TextCard, cache: LabelCache) -> None:
        self.tokenizer, self.card, self.cache = tokenizer, card, cache

    @classmethod
    def load(cls, model: ModelCard, cache_size: int, metrics: Metrics) -> Texts | None:
        """The tokenizer of the served checkpoint directory, where its model has a text tower."""
        if model.text is None or model.checkpoint_path is None:
            return None
        tokenizer = TextTokenizer.from_dir(Path(model.checkpoint_path), model.text.max_tokens)
        return cls(tokenizer, model.text, LabelCache(cache_size, metrics))

    async def tokenize(self, texts: Sequence[str], what: str = "texts") -> list[TokenIds]:
        """Each text's token ids, truncated to the tower's length as its tokenizer truncates;
        422 for an empty text, 413 for one longer than MAX_TEXT_CHARS (naming `what`[index]). A
        text of spaces is a text: its tokenizer reads it as it reads any other."""
        for index, text in enumerate(texts):
            if not text:
                raise InvalidParameter(f"{what}[{index}] is empty: there is nothing to embed")
            if len(text) > MAX_TEXT_CHARS:
                raise PayloadTooLarge(
                    f"{what}[{index}] is {len(text)} characters; the limit is {MAX_TEXT_CHARS}"
                    f" (the text tower reads at most {self.card.max_tokens} tokens)"
                )
        if sum(map(len, texts)) <= _TOKENIZE_INLINE:
            encoded = self.tokenizer.encode(texts)
        else:
            encoded = await asyncio.to_thread(self.tokenizer.encode, texts)
        return [tuple(ids) for ids in encoded]


def zero_shot_scores(card: TextCard, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A unit image embedding against (L, D) unit label embeddings -> L scores, as transformers'
    zero-shot-image-classification pipeline computes them: exp(logit_scale) × cosine (+ SigLIP's
    logit_bias), then CLIP's softmax over the labels or SigLIP's sigmoid of each."""
    logits = (card.scale * (labels @ image) + card.bias).astype(np.float64)
    if card.similarity == "softmax":
        exp = np.exp(logits - logits.max())
        return exp / exp.sum()  # type: ignore[no-any-return]
    return 1 / (1 + np.exp(-logits))  # type: ignore[no-any-return]
