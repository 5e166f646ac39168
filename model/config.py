"""Architecture description of a Vision Transformer and its named presets (docs/API.md, Model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol

Family = Literal["vit", "clip", "siglip", "dinov2", "deit"]
Ffn = Literal["gelu", "quick_gelu", "gelu_tanh", "swiglu"]
Pool = Literal["token", "map", "none"]
FINAL = "final"  # the layer that names the final-normed tokens (transformers' last_hidden_state)
Layer = int | str  # 0 … L, -(L+1) … -1, or FINAL


class EncoderShape(Protocol):
    """What an encoder block is built from (model/vit.py's Block): ViTConfig and the text towers'
    TextConfig (model/text.py) both have it."""

    @property
    def embed_dim(self) -> int: ...
    @property
    def num_heads(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def mlp_dim(self) -> int: ...
    @property
    def ln_eps(self) -> float: ...
    @property
    def qkv_bias(self) -> bool: ...
    @property
    def layer_scale(self) -> bool: ...
    @property
    def ffn(self) -> Ffn: ...


@dataclass(frozen=True)
class ViTConfig:
    """Everything that fixes the shapes of a ViT; weights are not part of it.

    The fields after `qkv_bias` are the small, well-defined ways the encoders that vision-language
    and retrieval systems run differ from the paper's ViT (as timm's VisionTransformer has them);
    their defaults are the paper's. Token order is transformers': class, distillation or
    registers, then the patches.
    """

    image_size: int = 224  # H = W of the input, in pixels
    patch_size: int = 16  # P: each patch is P×P pixels
    in_chans: int = 3  # C
    embed_dim: int = 768  # D
    depth: int = 12  # L encoder blocks
    num_heads: int = 12
    mlp_dim: int = 3072  # hidden width of each block's MLP (4·D in every preset)
    num_classes: int = 1000  # 0: no head, embeddings only
    ln_eps: float = 1e-6
    qkv_bias: bool = True
    family: Family = "vit"  # what /v1/models reports; the flags below carry the differences
    class_token: bool = True  # SigLIP has none
    distill_token: bool = False  # DeiT-distilled: a second prefix token with a head of its own
    reg_tokens: int = 0  # DINOv2 with registers: prefix tokens without a position embedding
    patch_bias: bool = True  # CLIP's patch embedding has no bias
    pre_norm: bool = False  # CLIP: a LayerNorm on the encoder's input (hidden state 0 is after it)
    layer_scale: bool = False  # DINOv2: each branch scaled per channel before its residual
    ffn: Ffn = "gelu"  # the MLP's activation; swiglu: DINOv2-giant's gated SiLU MLP
    pool: Pool = "token"  # the embedding: the normed class token, SigLIP's attention pool, or none
    norm_tokens: bool = True  # the final norm applies to every token; CLIP: only to the class token
    proj_dim: int = 0  # CLIP's projection of the pooled token (no bias); 0: none

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        for name in ("image_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.reg_tokens < 0 or self.proj_dim < 0:
            raise ValueError("reg_tokens and proj_dim must be >= 0")
        if not self.class_token and (self.pool == "token" or self.distill_token or self.reg_tokens):
            raise ValueError("pooling the class token, a distillation token and registers need a class token")
        if self.distill_token and self.reg_tokens:
            raise ValueError("a distillation token and register tokens do not go together")
        if self.num_classes and self.pool != "token":
            raise ValueError("a classification head reads the class token (pool 'token')")

    @property
    def grid_size(self) -> int:
        """Patches along one side: H / P."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """N = HW / P²."""
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches: class, distillation, registers."""
        return self.class_token + self.distill_token + self.reg_tokens

    @property
    def num_tokens(self) -> int:
        """The tokens the encoder reads for one image."""
        return self.prefix_tokens + self.num_patches

    @property
    def pos_prefix(self) -> int:
        """Prefix tokens that have a position embedding (registers have none)."""
        return self.class_token + self.distill_token

    @property
    def embedding_dim(self) -> int:
        """The size of /v1/embeddings' vectors; 0 where the model has no pooled embedding."""
        return 0 if self.pool == "none" else self.proj_dim or self.embed_dim

    def layer_index(self, layer: Layer) -> int:
        """Normalise a hidden-state index: 0 is the encoder's input z_0, i block i's output,
        negatives count from z_L (-1); FINAL (the final-normed z_L) is L + 1."""
        if layer == FINAL:
            return self.depth + 1
        if not isinstance(layer, int) or not -(self.depth + 1) <= layer <= self.depth:
            raise ValueError(f"layer {layer} is outside -{self.depth + 1}..{self.depth} (or {FINAL!r})")
        return layer % (self.depth + 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ViT config fields: {', '.join(unknown)}")
        return cls(**data)

    def with_changes(self, **changes: Any) -> ViTConfig:
        return replace(self, **changes)


def _preset(image: int, patch: int, dim: int, depth: int, heads: int) -> ViTConfig:
    return ViTConfig(image_size=image, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, mlp_dim=4 * dim)


# timm's names; widths and depths from the ViT paper (Ti and S from DeiT).
PRESETS: dict[str, ViTConfig] = {
    "vit_tiny_patch16_224": _preset(224, 16, 192, 12, 3),
    "vit_small_patch16_224": _preset(224, 16, 384, 12, 6),
    "vit_base_patch16_224": _preset(224, 16, 768, 12, 12),
    "vit_base_patch32_224": _preset(224, 32, 768, 12, 12),
    "vit_base_patch16_384": _preset(384, 16, 768, 12, 12),
    "vit_large_patch16_224": _preset(224, 16, 1024, 24, 16),
    "vit_large_patch32_384": _preset(384, 32, 1024, 24, 16),
    "vit_huge_patch14_224": _preset(224, 14, 1280, 32, 16),
    # For benchmarks of the serving layer only: 224×224 input, width 8, one block, 4×4 patches of
    # 56 px (17 tokens: attention over 16 px patches' 197 would cost more than the rest); its
    # forward pass costs next to nothing, so what is measured is everything around it
    # (python -m bench.ceiling reports what it does cost).
    "vit_null_patch56_224": ViTConfig(
        image_size=224, patch_size=56, embed_dim=8, depth=1, num_heads=1, mlp_dim=32, num_classes=10
    ),
    # For tests only: a few thousand parameters, milliseconds per forward pass.
    "vit_test_tiny": ViTConfig(
        image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_dim=192, num_classes=10
    ),
}


def preset(name: str) -> ViTConfig:
    """The preset called `name`, or a ValueError listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown ViT preset {name!r}; known: {', '.join(PRESETS)}") from None
