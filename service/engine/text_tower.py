"""A CLIP or SigLIP pair's text tower on the engine's device: texts arrive as token ids (the
front-end tokenized them: service/texts.py) and leave as embeddings, in forward passes of their
own within the same batches' queue as images (service/engine/batcher.py).

Texts are batched by length (`length_bucket`), so that a batch of short captions is not padded
to the longest text the tower reads. CLIP's tower is causal and pools at the end-of-text token,
so what follows it (padding) changes nothing: a batch is padded to its longest text.
SigLIP's pools the last position, a padding token's, under its tokenizer's attention mask, as
transformers' pipeline calls it: every text is padded to the tower's full length, one bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from model.hf import load_hf_text
from model.text import TextTower
from model.tokenizer import TextTokenizer
from model.weights import CheckpointError
from service.engine.card import TextCard

log = logging.getLogger(__name__)

TokenIds = tuple[int, ...]  # a text as its tower reads it: truncated, special tokens added, unpadded

_SHORTEST_BUCKET = 8


class TextEngine:
    """One text tower, resident beside its image tower, in inference mode."""

    def __init__(self, tower: TextTower, tokenizer: TextTokenizer, file: str, device: torch.device, dtype: torch.dtype):
        model = tower.model.eval().to(device=device, dtype=dtype)
        for p in model.parameters():
            p.requires_grad_(False)
        self.model, self.device, self.tokenizer = model, device, tokenizer
        cfg = model.cfg
        self.pad_to = cfg.context_length if cfg.family == "siglip" else None
        similarity = tower.similarity
        self.card = TextCard(
            tokenizer=file,
            max_tokens=tokenizer.max_length,
            pad_to=self.pad_to,
            dim=cfg.proj_dim,
            similarity="softmax" if cfg.family == "clip" else "sigmoid",
            scale=similarity.scale if similarity is not None else 1.0,
            bias=similarity.bias if similarity is not None else 0.0,
        )

    @classmethod
    def load(cls, path: Path, image_dim: int, device: torch.device, dtype: torch.dtype) -> TextEngine | None:
        """The text tower of the Hugging Face checkpoint directory `path` with its tokenizer, or
        None where it has none (a vision tower; a pair saved without its tokenizer is served for
        images only, with a warning). A tower whose embeddings are not the image tower's size is
        refused: the two would not share a space."""
        tower = load_hf_text(path)
        if tower is None:
            return None
        if tower.similarity is None:
            raise CheckpointError(f"{path}: a text tower alone is not served; serve the full CLIP or SigLIP model")
        if tower.model.cfg.proj_dim != image_dim:
            raise CheckpointError(
                f"{path}: the text tower's embeddings ({tower.model.cfg.proj_dim}) are not the size of the "
                f"image tower's ({image_dim})"
            )
        file = next((name for name in ("tokenizer.json", "spiece.model") if (path / name).is_file()), None)
        if file is None:
            log.warning("%s has a text tower but no tokenizer.json or spiece.model: serving images only", path)
            return None
        return cls(tower, TextTokenizer.from_dir(path, tower.model.cfg.context_length), file, device, dtype)

    def length_bucket(self, ids: TokenIds) -> int:
        """Which texts may share a batch: SigLIP's all (padded to its full length); CLIP's by
        length, up to the next power of two from 8 (or the tower's longest)."""
        if self.pad_to is not None:
            return self.pad_to
        bucket = _SHORTEST_BUCKET
        while bucket < len(ids):
            bucket *= 2
        return min(bucket, self.model.cfg.context_length)

    def stage(self, texts: Sequence[TokenIds]) -> torch.Tensor:
        """Token ids -> a (B, 2, T) int64 batch on the device: each text's ids and attention mask,
        padded as the tokenizer pads (SigLIP2's on the left). One tensor, so that the batcher
        can drop a departed client's rows from it as from pixels."""
        length = self.pad_to or max(map(len, texts))
        ids, mask = self.tokenizer.pad(texts, length), self.tokenizer.pad([(1,) * len(ids) for ids in texts], length, 0)
        return torch.stack([ids, mask], dim=1).to(self.device, non_blocking=True)

    def forward(self, staged: torch.Tensor) -> torch.Tensor:
        """A staged (B, 2, T) batch -> (B, dim) float32 embeddings on the CPU (transformers'
        get_text_features)."""
        return self.model(staged[:, 0], staged[:, 1]).float().cpu()

    def warmup(self) -> None:
        """One pass at the longest length: allocation before traffic (the text tower runs eagerly)."""
        self.forward(self.stage([(self.tokenizer.pad_id,) * self.model.cfg.context_length]))
