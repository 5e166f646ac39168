"""The text towers' tokenizers, read from the checkpoint directory with the library made for the
file it ships: HF `tokenizers` for `tokenizer.json` (CLIP; SigLIP2's Gemma tokenizer), and
`sentencepiece` for `spiece.model` (SigLIP, which ships only that), following
`tokenizer_config.json` for what the file leaves to transformers: the pad token, the longest
sequence, and for SigLIP its lower-casing and text canonicalisation. The ids are transformers'
(tests/model/test_tokenizer.py).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece
import torch
from tokenizers import Tokenizer

from model.weights import CheckpointError, read_json

Encode = Callable[[Sequence[str]], list[list[int]]]  # texts -> token ids, truncated, special tokens added


@dataclass(frozen=True)
class Tokens:
    """A batch of texts as a text tower reads it (model/text.py)."""

    ids: torch.Tensor  # (B, T) int64, right-padded
    mask: torch.Tensor  # (B, T) int64: 1 for a token, 0 for padding
    counts: list[int]  # each text's tokens, special tokens included, after truncation


# transformers' tokenizer classes that pad on the left unless their config says otherwise
_LEFT_PADDING = {"GemmaTokenizer", "GemmaTokenizerFast"}  # SigLIP2's


class TextTokenizer:
    def __init__(self, encode: Encode, pad_id: int, max_length: int, pad_left: bool = False) -> None:
        self.encode, self.pad_id, self.max_length, self.pad_left = encode, pad_id, max_length, pad_left

    @classmethod
    def from_dir(cls, path: Path, context_length: int) -> TextTokenizer:
        """The tokenizer of a checkpoint directory, for a tower of `context_length` positions."""
        config = read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
        # transformers writes a huge sentinel where the tokenizer has no limit of its own
        max_length = min(int(config.get("model_max_length", context_length)), context_length)
        pad = _content(config.get("pad_token"))
        if (path / "tokenizer.json").is_file():
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length)  # counting the special tokens the file adds
            pad_id = tokenizer.token_to_id(pad) if pad is not None else None
            encode: Encode = lambda texts: [e.ids for e in tokenizer.encode_batch(list(texts))]  # noqa: E731
        elif (path / "spiece.model").is_file():
            pieces = SigLIPPieces(path / "spiece.model", config, max_length)
            pad_id, encode = pieces.id_of(pad or "</s>"), pieces.encode
        else:
            raise CheckpointError(f"{path}: no tokenizer.json or spiece.model for the text tower")
        if pad_id is None:
            raise CheckpointError(f"{path}/tokenizer_config.json: pad_token {pad!r} is not in the vocabulary")
        side = config.get("padding_side") or ("left" if config.get("tokenizer_class") in _LEFT_PADDING else "right")
        return cls(encode, pad_id, max_length, pad_left=side == "left")

    def __call__(self, texts: Sequence[str], pad_to: int | None = None) -> Tokens:
        """`texts` tokenized, truncated to `max_length`, padded to the longest (or to `pad_to`)."""
        encoded = self.encode(texts)
        counts = [len(ids) for ids in encoded]
        length = max([pad_to or 0, *counts])
        mask = self.pad([[1] * count for count in counts], length, value=0)
        return Tokens(self.pad(encoded, length), mask, counts)

    def pad(self, encoded: Sequence[Sequence[int]], length: int, value: int | None = None) -> torch.Tensor:
        """Token ids -> one (B, length) int64 tensor, padded on the tokenizer's side with its pad
        id (or `value`)."""
        ids = torch.full((len(encoded), length), self.pad_id if value is None else value, dtype=torch.int64)
        for row, row_ids in enumerate(encoded):
            span = slice(length - len(row_ids), length) if self.pad_left else slice(0, len(row_ids))
            ids[row, span] = torch.tensor(row_ids, dtype=torch.int64)
        return ids


class SigLIPPieces:
    """transformers' SiglipTokenizer, step for step: the text after "▁", split at its special
    tokens; each part lower-cased, stripped of punctuation and runs of whitespace (big_vision's
    canonicalisation), and encoded by SentencePiece behind an `<unk>` that is then removed; a
    leading "▁" before a special token dropped; truncated, and `</s>` added unless it ends it."""

    def __init__(self, model: Path, config: dict[str, Any], max_length: int) -> None:
        self.model = sentencepiece.SentencePieceProcessor(model_file=str(model))
        self.lower, self.max_length = bool(config.get("do_lower_case", True)), max_length
        self.unk, self.eos = _content(config.get("unk_token")) or "<unk>", _content(config.get("eos_token")) or "</s>"
        added = [_content(token) for token in (config.get("added_tokens_decoder") or {}).values()]
        names = {self.unk, self.eos, _content(config.get("pad_token")) or self.eos, *filter(None, added)}
        self.special = {name: self.model.piece_to_id(name) for name in names}
        self.split = re.compile("(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + ")")
        self.unk_pieces = len(self.model.encode(self.unk, out_type=str))

    def id_of(self, piece: str) -> int | None:
        found = self.model.piece_to_id(piece)
        return None if found == self.model.unk_id() and piece != self.unk else found

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._one(text) for text in texts]

    def _one(self, text: str) -> list[int]:
        pieces: list[str] = []
        for part in self.split.split("▁" + text.replace("▁", " ")):
            if part in self.special:
                pieces.append(part)
            elif part:
                pieces.extend(self._pieces(part))
        if len(pieces) > 1 and pieces[0] == "▁" and pieces[1] in self.special:
            pieces = pieces[1:]
        ids = [self.special.get(piece, self.model.piece_to_id(piece)) for piece in pieces][: self.max_length - 1]
        return ids if ids and ids[-1] == self.special[self.eos] else [*ids, self.special[self.eos]]

    def _pieces(self, text: str) -> list[str]:
        text = text.lower() if self.lower else text
        text = re.sub(r"\s+", " ", text.translate(_NO_PUNCTUATION)).strip()
        pieces = self.model.encode(self.unk + text, out_type=str)
        return pieces[self.unk_pieces :] if len(pieces) >= self.unk_pieces else pieces


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _content(token: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken's dict."""
    return token.get("content") if isinstance(token, dict) else token
