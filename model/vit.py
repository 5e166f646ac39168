"""The Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021).

z_0 = [x_class; x_p^1 E; …; x_p^N E] + E_pos
z'_l = MSA(LN(z_{l-1})) + z_{l-1}
z_l  = MLP(LN(z'_l)) + z'_l
y    = LN(z_L^0), logits = y W_head + b

Parameter names follow timm's `VisionTransformer`, which is also this project's own
checkpoint layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ViTConfig


@dataclass
class ViTOutput:
    """All the service reads from one forward pass."""

    logits: torch.Tensor | None  # (B, num_classes), None without a head
    embedding: torch.Tensor  # y = LN(z_L^0), (B, D)
    hidden_states: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, N+1, D)


class PatchEmbed(nn.Module):
    """E as a P×P, stride-P convolution: the same linear map applied to each flattened patch."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, N, D)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.fused = True  # False: the explicit softmax(QKᵀ/√d)V, kept as a reference for tests

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, head_dim)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, T, D))


class Mlp(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.mlp_dim)
        self.act = nn.GELU()  # exact (erf) GELU, as in the paper's code, timm and HF
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """One pre-norm encoder block."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.embed_dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.head: nn.Module = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """timm-style initialisation: truncated normal (σ=0.02) weights, zero biases."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def set_fused_attention(self, fused: bool) -> None:
        """Switch every block between SDPA and the explicit-softmax reference."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.fused = fused

    def forward(self, pixels: torch.Tensor, hidden_layers: Sequence[int] = ()) -> ViTOutput:
        """`pixels` is normalised (B, C, H, W); `hidden_layers` names the z_l to return."""
        wanted: dict[int, list[int]] = {}
        for layer in hidden_layers:  # keyed by depth; each requested spelling (2, -1) gets its entry
            wanted.setdefault(self.cfg.layer_index(layer), []).append(layer)
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        hidden: dict[int, torch.Tensor] = dict.fromkeys(wanted.get(0, ()), x)
        for depth, block in enumerate(self.blocks, start=1):
            x = block(x)
            hidden.update(dict.fromkeys(wanted.get(depth, ()), x))
        embedding = self.norm(x[:, 0])  # LN is per token, so normalising z_L^0 alone is exact
        logits = self.head(embedding) if self.cfg.num_classes else None
        return ViTOutput(logits=logits, embedding=embedding, hidden_states=hidden)


def resample_pos_embed(pos_embed: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Bicubic resampling of the patch-grid part of (1, 1+n², D) to (1, 1+grid², D).

    The class token's embedding is kept as it is; at the native size this is the identity.
    """
    old_tokens = pos_embed.shape[1] - 1
    old_grid = math.isqrt(old_tokens)
    if old_grid * old_grid != old_tokens:
        raise ValueError(f"position embedding of {old_tokens} patches is not a square grid")
    if old_grid == grid_size:
        return pos_embed
    cls_pos, grid = pos_embed[:, :1], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    grid = grid.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_size * grid_size, dim).to(pos_embed.dtype)
    return torch.cat([cls_pos, grid], dim=1)
