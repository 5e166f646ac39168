"""The text towers' tokenizers, read from the checkpoint directory with the library made for the
file it ships: HF `tokenizers` for `tokenizer.json` (CLIP; SigLIP2's Gemma tokenizer), following
`tokenizer_config.json` for what the file leaves to transformers: the pad token and the longest
sequence. Its normalizer, pre-tokenizer, model and special tokens are the file's own, so the ids
are transformers' (tests/model/test_tokenizer.py). SigLIP's `spiece.model`: not yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from model.weights import CheckpointError, read_json


@dataclass(frozen=True)
class Tokens:
    """A batch of texts as a text tower reads it (model/text.py)."""

    ids: torch.Tensor  # (B, T) int64, right-padded
    mask: torch.Tensor  # (B, T) int64: 1 for a token, 0 for padding
    counts: list[int]  # each text's tokens, special tokens included, after truncation


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_id: int) -> None:
        self.tokenizer, self.max_length, self.pad_id = tokenizer, max_length, pad_id
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)  # counting the special tokens the file adds

    @classmethod
    def from_dir(cls, path: Path, context_length: int) -> TextTokenizer:
        """The tokenizer of a checkpoint directory, for a tower of `context_length` positions."""
        config = read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
        if not (path / "tokenizer.json").is_file():
            raise CheckpointError(f"{path}: no tokenizer.json for the text tower")
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        pad = _content(config.get("pad_token"))
        pad_id = tokenizer.token_to_id(pad) if pad is not None else None
        if pad_id is None:
            raise CheckpointError(f"{path}/tokenizer_config.json: pad_token {pad!r} is not in the vocabulary")
        # transformers writes a huge sentinel where the tokenizer has no limit of its own
        max_length = min(int(config.get("model_max_length", context_length)), context_length)
        return cls(tokenizer, max_length, pad_id)

    def __call__(self, texts: Sequence[str], pad_to: int | None = None) -> Tokens:
        """`texts` tokenized, truncated to `max_length`, padded to the longest (or to `pad_to`)."""
        encodings = self.tokenizer.encode_batch(list(texts))
        counts = [len(e.ids) for e in encodings]
        length = max([pad_to or 0, *counts])
        ids = torch.full((len(texts), length), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(texts), length), dtype=torch.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : counts[row]] = torch.tensor(encoding.ids, dtype=torch.int64)
            mask[row, : counts[row]] = 1
        return Tokens(ids, mask, counts)


def _content(token: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken's dict."""
    return token.get("content") if isinstance(token, dict) else token
