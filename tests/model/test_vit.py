"""The architecture: parameter counts, attention paths, dtypes, hidden states, position embeddings."""

from __future__ import annotations

import pytest
import torch

from model.config import PRESETS, preset
from model.vit import VisionTransformer, resample_pos_embed

# Parameter counts (1000-class heads; 10 for the null and test presets), from the closed form
# P²CD + D + D + (N+1)D + L(4D + 4D² + 4D + 2DM + M + D) + 2D + DK + K; B/16 is the 86,567,656.
PARAMS = {
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
    "vit_base_patch32_224": 88_224_232,
    "vit_base_patch16_384": 86_859_496,
    "vit_large_patch16_224": 304_326_632,
    "vit_large_patch32_384": 306_632_680,
    "vit_huge_patch14_224": 632_045_800,
    "vit_null_patch56_224": 76_394,
    "vit_test_tiny": 67_258,
}


def test_every_preset_has_a_pinned_count() -> None:
    assert set(PARAMS) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count(name: str) -> None:
    with torch.device("meta"):  # shapes only: ViT-H would take 2.5 GB of real memory
        model = VisionTransformer(PRESETS[name])
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.fixture
def tiny() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(preset("vit_test_tiny")).eval()


def pixels(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@torch.inference_mode()
def test_one_pass_gives_logits_and_the_class_token_embedding(tiny: VisionTransformer) -> None:
    out = tiny(pixels(), hidden_layers=[-1])
    assert out.logits is not None and out.logits.shape == (4, 10)
    assert out.embedding.shape == (4, 48)
    # y = LN(z_L^0) and the head is one linear layer on y
    torch.testing.assert_close(out.embedding, tiny.norm(out.hidden_states[-1][:, 0]))
    torch.testing.assert_close(out.logits, tiny.head(out.embedding))


@torch.inference_mode()
def test_hidden_states_follow_hf_indexing(tiny: VisionTransformer) -> None:
    out = tiny(pixels(), hidden_layers=[0, 1, 2, -1, -2, -3])
    assert all(h.shape == (4, 17, 48) for h in out.hidden_states.values())  # N + 1 = 16 + 1 tokens
    torch.testing.assert_close(out.hidden_states[-1], out.hidden_states[2])
    torch.testing.assert_close(out.hidden_states[-2], out.hidden_states[1])
    torch.testing.assert_close(out.hidden_states[-3], out.hidden_states[0])
    with pytest.raises(ValueError, match="outside"):
        tiny(pixels(), hidden_layers=[3])


@torch.inference_mode()
def test_sdpa_equals_explicit_softmax(tiny: VisionTransformer) -> None:
    fused = tiny(pixels())
    tiny.set_fused_attention(False)
    explicit = tiny(pixels())
    torch.testing.assert_close(fused.logits, explicit.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused.embedding, explicit.embedding, atol=1e-5, rtol=0)


@torch.inference_mode()
def test_batch_rows_are_independent(tiny: VisionTransformer) -> None:
    x = pixels(6)
    together = tiny(x).embedding
    alone = torch.cat([tiny(x[i : i + 1]).embedding for i in range(6)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


# Half precision keeps ~3 (fp16) or ~2 (bf16) significant digits through two blocks.
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
@torch.inference_mode()
def test_half_precision_close_to_float32(tiny: VisionTransformer, dtype: torch.dtype, tol: float) -> None:
    ref = tiny(pixels())
    half = VisionTransformer(tiny.cfg).eval()
    half.load_state_dict(tiny.state_dict())
    out = half.to(dtype)(pixels().to(dtype))
    assert out.embedding.dtype == dtype
    scale = ref.embedding.abs().max()
    assert (out.embedding.float() - ref.embedding).abs().max() <= tol * scale
    assert (out.logits.float() - ref.logits).abs().max() <= tol * ref.logits.abs().max()


def test_pos_embed_resampling_is_identity_at_native_size() -> None:
    pos = torch.randn(1, 1 + 14 * 14, 8)
    assert resample_pos_embed(pos, 14) is pos


def test_pos_embed_resampling_keeps_class_token_and_grid() -> None:
    pos = torch.randn(1, 1 + 14 * 14, 8)
    out = resample_pos_embed(pos, 24)  # 224 weights at 384
    assert out.shape == (1, 1 + 24 * 24, 8)
    assert torch.equal(out[:, 0], pos[:, 0])
    assert torch.isfinite(out).all()
    # a constant grid stays constant under bicubic resampling
    flat = torch.ones(1, 1 + 4 * 4, 2)
    torch.testing.assert_close(resample_pos_embed(flat, 7), torch.ones(1, 1 + 7 * 7, 2))


@torch.inference_mode()
def test_interpolated_model_runs_at_the_new_size(tiny: VisionTransformer) -> None:
    big = VisionTransformer(tiny.cfg.with_changes(image_size=48)).eval()
    state = dict(tiny.state_dict())
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], 6)
    big.load_state_dict(state)
    out = big(pixels(2, 48))
    assert out.logits.shape == (2, 10) and torch.isfinite(out.logits).all()
