"""The Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021).

z_0 = [x_class; x_p^1 E; …; x_p^N E] + E_pos
z'_l = MSA(LN(z_{l-1})) + z_{l-1}
z_l  = MLP(LN(z'_l)) + z'_l
y    = LN(z_L^0), logits = y W_head + b

The same module runs the encoders built on it (CLIP, SigLIP, DINOv2, DeiT-distilled) from the
flags in ViTConfig: no class token, registers, a distillation token, a norm before the encoder,
LayerScale, other activations, an attention-pool head, a projection. Parameter names follow
timm's `VisionTransformer`, which is also this project's own checkpoint layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from model.config import EncoderShape, Layer, ViTConfig


@dataclass
class ViTOutput:
    """All the service reads from one forward pass."""

    logits: torch.Tensor | None  # (B, num_classes), None without a head
    embedding: torch.Tensor  # (B, embedding_dim): y = LN(z_L^0) for the paper's ViT
    hidden_states: dict[Layer, torch.Tensor] = field(default_factory=dict)  # layer -> (B, tokens, D)


class PatchEmbed(nn.Module):
    """E as a P×P, stride-P convolution: the same linear map applied to each flattened patch."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, N, D)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection; over every token (vision), or
    masked: causally (CLIP's text), or to the keys `mask` keeps (SigLIP's text, unpadded)."""

    def __init__(self, cfg: EncoderShape) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.fused = True  # False: the explicit softmax(QKᵀ/√d)V, kept as a reference for tests

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """`mask`: boolean (B, 1, 1, T), True for the keys attended to."""
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, head_dim)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        else:
            attn = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                attn = attn.masked_fill(~mask, float("-inf"))
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, T, D))


class QuickGELU(nn.Module):
    """x·σ(1.702x): OpenAI CLIP's approximation of GELU, which its weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    """fc2(act(fc1 x)); swiglu: fc1 yields [a, b] and the hidden layer is SiLU(a)·b (DINOv2-giant)."""

    def __init__(self, cfg: EncoderShape) -> None:
        super().__init__()
        self.gated = cfg.ffn == "swiglu"
        self.fc1 = nn.Linear(cfg.embed_dim, (2 if self.gated else 1) * cfg.mlp_dim)
        self.act: nn.Module = {
            "gelu": nn.GELU(),  # exact (erf) GELU, as in the paper's code, timm and HF
            "gelu_tanh": nn.GELU(approximate="tanh"),  # SigLIP
            "quick_gelu": QuickGELU(),
            "swiglu": nn.SiLU(),
        }[cfg.ffn]
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            a, b = self.fc1(x).chunk(2, dim=-1)
            return self.fc2(self.act(a) * b)
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """A learned per-channel scale on a residual branch (CaiT, DINOv2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """One pre-norm encoder block."""

    def __init__(self, cfg: EncoderShape) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.ls1 = LayerScale(cfg.embed_dim) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg)
        self.ls2 = LayerScale(cfg.embed_dim) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), mask, causal))
        return x + self.ls2(self.mlp(self.norm2(x)))


class AttentionPool(nn.Module):
    """SigLIP's multi-head attention pooling ("MAP"): one learned query attends over every token,
    then a residual MLP; its output is the image embedding."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.probe = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.q = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.kv = nn.Linear(cfg.embed_dim, 2 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q = self.q(self.probe).reshape(1, 1, self.num_heads, self.head_dim).transpose(1, 2).expand(B, -1, -1, -1)
        k, v = self.kv(x).reshape(B, T, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        pooled = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, D))
        return (pooled + self.mlp(self.norm(pooled)))[:, 0]


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        # Prefix tokens, each (1, n, D), in token order; each registered only where the family has it.
        self.prefix = [name for name, n in (("cls_token", cfg.class_token), ("dist_token", cfg.distill_token)) if n]
        for name in self.prefix:
            self.register_parameter(name, nn.Parameter(torch.zeros(1, 1, dim)))
        if cfg.reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_prefix + cfg.num_patches, dim))
        self.norm_pre = nn.LayerNorm(dim, eps=cfg.ln_eps) if cfg.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=cfg.ln_eps)
        if cfg.pool == "map":
            self.attn_pool = AttentionPool(cfg)
        if cfg.proj_dim:
            self.proj = nn.Linear(dim, cfg.proj_dim, bias=False)
        self.head: nn.Module = nn.Linear(dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        if cfg.num_classes and cfg.distill_token:
            self.head_dist = nn.Linear(dim, cfg.num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """timm-style initialisation: truncated normal (σ=0.02) weights, zero biases."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        tokens = [getattr(self, name) for name in self.prefix]
        if self.cfg.reg_tokens:
            tokens.append(self.reg_token)
        if self.cfg.pool == "map":
            tokens.append(self.attn_pool.probe)
        for token in tokens:
            nn.init.normal_(token, std=1e-6)
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

    def forward(self, pixels: torch.Tensor, hidden_layers: Sequence[Layer] = ()) -> ViTOutput:
        """`pixels` is normalised (B, C, H, W); `hidden_layers` names the hidden states to return
        (ViTConfig.layer_index: z_0 … z_L, and FINAL for the final-normed tokens)."""
        cfg = self.cfg
        wanted: dict[int, list[Layer]] = {}
        for layer in hidden_layers:  # keyed by depth; each requested spelling (2, -1) gets its entry
            wanted.setdefault(cfg.layer_index(layer), []).append(layer)
        x = self.patch_embed(pixels)
        batch = x.shape[0]
        x = torch.cat([getattr(self, name).expand(batch, -1, -1) for name in self.prefix] + [x], dim=1)
        x = x + self.pos_embed
        if cfg.reg_tokens:  # after the class token, without a position embedding (DINOv2)
            x = torch.cat([x[:, :1], self.reg_token.expand(batch, -1, -1), x[:, 1:]], dim=1)
        x = self.norm_pre(x)
        hidden: dict[Layer, torch.Tensor] = dict.fromkeys(wanted.get(0, ()), x)
        for depth, block in enumerate(self.blocks, start=1):
            x = block(x)
            hidden.update(dict.fromkeys(wanted.get(depth, ()), x))
        normed = self.norm(x) if cfg.pool == "map" or (cfg.norm_tokens and cfg.depth + 1 in wanted) else None
        hidden.update(dict.fromkeys(wanted.get(cfg.depth + 1, ()), x if normed is None else normed))
        # LN is per token, so normalising the class (and distillation) token alone is exact.
        first = self.norm(x[:, : 1 + cfg.distill_token]) if cfg.pool == "token" else None
        if cfg.pool == "map":
            embedding = self.attn_pool(normed)
        elif first is not None:
            embedding = self.proj(first[:, 0]) if cfg.proj_dim else first[:, 0]
        else:
            embedding = x.new_zeros(batch, 0)
        logits = None
        if cfg.num_classes and first is not None:
            logits = self.head(first[:, 0])
            if cfg.distill_token:  # DeiT-distilled: the mean of the class and distillation heads
                logits = (logits + self.head_dist(first[:, 1])) / 2
        return ViTOutput(logits=logits, embedding=embedding, hidden_states=hidden)


def resample_pos_embed(
    pos_embed: torch.Tensor, grid_size: int, prefix: int = 1, antialias: bool = False
) -> torch.Tensor:
    """Bicubic resampling of the patch-grid part of (1, prefix+n², D) to (1, prefix+grid², D), in
    float32, as transformers does it per family (`antialias`: Dinov2WithRegistersModel's).

    The prefix tokens' embeddings are kept as they are; at the native size this is the identity.
    """
    old_tokens = pos_embed.shape[1] - prefix
    old_grid = math.isqrt(old_tokens)
    if old_grid * old_grid != old_tokens:
        raise ValueError(f"position embedding of {old_tokens} patches is not a square grid")
    if old_grid == grid_size:
        return pos_embed
    prefix_pos, grid = pos_embed[:, :prefix], pos_embed[:, prefix:]
    dim = pos_embed.shape[-1]
    grid = grid.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_size * grid_size, dim).to(pos_embed.dtype)
    return torch.cat([prefix_pos, grid], dim=1)
