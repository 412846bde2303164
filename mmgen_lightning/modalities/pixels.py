"""Preprocessing shared by the pixel modalities (``image: B,C,H,W`` and ``video: B,F,C,H,W``, in [-1, 1])."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def random_shift(pixels: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift every sample of ``B,...,H,W`` (images or videos in [-1, 1]; a video's frames alike) by
    its own offset in ``[-max_shift, max_shift]`` along y and x, filling the uncovered border with
    the background -1. Offsets are drawn from ``generator`` (default: the global RNG on the
    tensor's device); ``max_shift <= 0`` returns the input and draws nothing."""
    if max_shift <= 0:
        return pixels
    batch, height, width = pixels.shape[0], pixels.shape[-2], pixels.shape[-1]
    padded = F.pad(pixels, (max_shift,) * 4, value=-1.0).flatten(1, -3)  # B,M,H+2s,W+2s
    device = generator.device if generator is not None else pixels.device
    offsets = torch.randint(0, 2 * max_shift + 1, (batch, 2), generator=generator, device=device).to(pixels.device)
    rows = offsets[:, :1] + torch.arange(height, device=pixels.device)  # B,H
    cols = offsets[:, 1:] + torch.arange(width, device=pixels.device)  # B,W
    picked = padded[torch.arange(batch, device=pixels.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2).reshape(pixels.shape)  # advanced indexing put B,H,W first


def resize_frames(pixels: Tensor, size: int, antialias: bool = True) -> Tensor:
    """``...,C,H,W`` (images or videos) resized to ``size x size`` (bilinear); the input when it has that size."""
    if pixels.shape[-1] == size and pixels.shape[-2] == size:
        return pixels
    flat = pixels.flatten(0, -4)  # every frame of every clip, N,C,H,W
    resized = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    return resized.unflatten(0, pixels.shape[:-3])


def to_uint8(image: Tensor) -> np.ndarray:
    """``C,H,W`` in [-1, 1] -> ``H,W`` or ``H,W,3`` uint8."""
    array = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
