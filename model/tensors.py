"""Decoded pixels as a model's input: a uint8 (3, S, S) tensor, and the normalisation that turns
a batch of them into float (x/255 - mean) / std on whatever device the model is on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model.preprocess import PreprocessConfig, decode_image


def load_image(
    data: bytes, size: int, cfg: PreprocessConfig, max_pixels: int = 40_000_000, draft: bool = False
) -> torch.Tensor:
    """`decode_image` as a uint8 (3, size, size) tensor."""
    return torch.from_numpy(decode_image(data, size, cfg, max_pixels, draft)).permute(2, 0, 1)


def normalize(
    batch: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """uint8 (B, 3, S, S) on any device, any strides -> (x/255 - mean) / std, contiguous, in
    `dtype` (default float32), computed in float32 as x · 1/(255·std) - mean/std in two passes
    over one float copy. On the CPU numpy does it, the first pass reading through the strides (a
    batch of (S, S, 3) images seen as (3, S, S)), faster than stacking the views and normalising
    with torch; on a GPU, torch."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    scale, shift = 1 / (255 * s), m / s
    if batch.device.type == "cpu":
        values = np.empty(tuple(batch.shape), np.float32)
        np.multiply(batch.numpy(), scale.numpy(), out=values)
        np.subtract(values, shift.numpy(), out=values)
        out = torch.from_numpy(values)
    else:
        out = batch.to(torch.float32, memory_format=torch.contiguous_format)
        out.mul_(scale.to(batch.device)).sub_(shift.to(batch.device))
    return out.to(dtype or torch.float32)
