"""The text towers of CLIP and SigLIP, which embed a caption in the space of their images'.

z_0 = E_tok[t] + E_pos                 t: token ids, right-padded to one length
z_l = the vision towers' pre-norm blocks (model/vit.py): causal for CLIP; for SigLIP both ways,
      over the tokens `mask` keeps
u   = LN(z_L)[i]                       CLIP: i is the first end-of-text token; SigLIP: the last
e   = u W_proj  (CLIP, no bias)  or  u W_head + b  (SigLIP)

e is transformers' `get_text_features`. Parameter names follow the vision tower's (blocks.*,
norm, proj, head), so one renaming table reads both towers of a checkpoint (model/hf.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from model.config import Ffn
from model.vit import Block

# CLIP configs written before transformers' PR #24773 say eos_token_id 2 and mean the largest id in
# each sequence (the end-of-text token is the vocabulary's last): transformers keeps that rule.
LEGACY_EOS = 2


@dataclass(frozen=True)
class TextConfig:
    """Everything that fixes the shapes of a text tower (its EncoderShape included)."""

    family: Literal["clip", "siglip"] = "clip"
    vocab_size: int = 49408
    context_length: int = 77  # position embeddings: the longest token sequence
    embed_dim: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_dim: int = 2048
    ln_eps: float = 1e-5
    ffn: Ffn = "quick_gelu"
    proj_dim: int = 512  # the embedding's size: CLIP's projection, SigLIP's head
    eos_token_id: int = LEGACY_EOS  # CLIP pools at the first token with this id
    qkv_bias: bool = True
    layer_scale: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        for name in ("vocab_size", "context_length", "embed_dim", "depth", "num_heads", "mlp_dim", "proj_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, cfg.embed_dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        if cfg.family == "clip":
            self.proj = nn.Linear(cfg.embed_dim, cfg.proj_dim, bias=False)
        else:
            self.head = nn.Linear(cfg.embed_dim, cfg.proj_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) token ids (T ≤ context_length), and for SigLIP the tokenizer's attention mask
        (1 for a token, 0 for padding; None: every token) -> (B, proj_dim) embeddings."""
        cfg = self.cfg
        x = self.tok_embed(ids) + self.pos_embed[:, : ids.shape[1]]
        causal = cfg.family == "clip"  # padding is after the end-of-text token, which never sees it
        keys = None if causal or mask is None else mask.bool()[:, None, None, :]
        for block in self.blocks:
            x = block(x, keys, causal)
        x = self.norm(x)
        if cfg.family == "siglip":
            return self.head(x[:, -1])
        end = ids.argmax(-1) if cfg.eos_token_id == LEGACY_EOS else (ids == cfg.eos_token_id).int().argmax(-1)
        return self.proj(x[torch.arange(x.shape[0], device=x.device), end])


@dataclass(frozen=True)
class Similarity:
    """How a pair scores an image against captions: CLIP's softmax over them, or SigLIP's sigmoid
    of each; `scale` is exp(logit_scale), `bias` SigLIP's logit_bias (0 for CLIP)."""

    family: Literal["clip", "siglip"]
    scale: float
    bias: float = 0.0

    def scores(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """(B, D) image and (L, D) text embeddings -> (B, L) scores, as transformers'
        zero-shot-image-classification pipeline computes them."""
        logits = self.scale * F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T + self.bias
        return logits.softmax(-1) if self.family == "clip" else logits.sigmoid()


@dataclass
class TextTower:
    """A checkpoint's text tower, and how it scores against the image tower (None for a text-tower
    checkpoint, which does not carry the pair's scale)."""

    model: TextTransformer
    similarity: Similarity | None
