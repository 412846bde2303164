"""Convolutional image encoder/decoder for ``B,C,H,W`` images in [-1, 1], sizes 16-64 px."""

from __future__ import annotations

import math

from torch import Tensor, nn


def _num_downsamples(image_size: int) -> int:
    if image_size not in (16, 32, 64):
        raise ValueError(f"image_size must be one of 16, 32, 64, got {image_size}")
    return int(math.log2(image_size // 4))  # down to a 4x4 feature map


class ImageEncoder(nn.Module):
    """``B,C,H,W`` -> ``B,out_dim``: strided 4x4 convs down to 4x4, then a linear head."""

    def __init__(self, channels: int, image_size: int, out_dim: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = channels
        for level in range(_num_downsamples(image_size)):
            out_channels = width * 2**level
            layers += [nn.Conv2d(in_channels, out_channels, 4, 2, 1), nn.GroupNorm(8, out_channels), nn.SiLU()]
            in_channels = out_channels
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(in_channels * 16, out_dim)

    def forward(self, image: Tensor) -> Tensor:
        return self.head(self.features(image))


class ImageDecoder(nn.Module):
    """``B,in_dim`` -> ``B,C,H,W`` (unbounded mean; callers clamp or squash)."""

    def __init__(self, in_dim: int, channels: int, image_size: int, width: int = 32) -> None:
        super().__init__()
        levels = _num_downsamples(image_size)
        self.base_channels = width * 2 ** (levels - 1)
        self.project = nn.Sequential(nn.Linear(in_dim, self.base_channels * 16), nn.SiLU())
        layers: list[nn.Module] = []
        in_channels = self.base_channels
        for level in reversed(range(levels - 1)):
            out_channels = width * 2**level
            layers += [nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1), nn.GroupNorm(8, out_channels), nn.SiLU()]
            in_channels = out_channels
        layers.append(nn.ConvTranspose2d(in_channels, channels, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.project(z).view(z.shape[0], self.base_channels, 4, 4))
