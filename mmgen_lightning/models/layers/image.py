"""Convolutional image encoder/decoder for ``B,C,H,W`` images in [-1, 1], sizes 16-256 px."""

from __future__ import annotations

import math

from torch import Tensor, nn


IMAGE_SIZES = (16, 32, 64, 128, 256)
MAX_WIDTH_DOUBLINGS = 3  # channels stop growing at 8x width (reached at 64 px), so 128-256 px stay affordable


def _num_downsamples(image_size: int) -> int:
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"image_size must be one of {', '.join(map(str, IMAGE_SIZES))}, got {image_size}")
    return int(math.log2(image_size // 4))  # down to a 4x4 feature map


def _channels(width: int, level: int) -> int:
    return width * 2 ** min(level, MAX_WIDTH_DOUBLINGS)


class ImageEncoder(nn.Module):
    """``B,C,H,W`` -> ``B,out_dim``: strided 4x4 convs down to 4x4, then a linear head."""

    def __init__(self, channels: int, image_size: int, out_dim: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = channels
        for level in range(_num_downsamples(image_size)):
            out_channels = _channels(width, level)
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
        self.base_channels = _channels(width, levels - 1)
        self.project = nn.Sequential(nn.Linear(in_dim, self.base_channels * 16), nn.SiLU())
        layers: list[nn.Module] = []
        in_channels = self.base_channels
        for level in reversed(range(levels - 1)):
            out_channels = _channels(width, level)
            layers += [nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1), nn.GroupNorm(8, out_channels), nn.SiLU()]
            in_channels = out_channels
        layers.append(nn.ConvTranspose2d(in_channels, channels, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.project(z).view(z.shape[0], self.base_channels, 4, 4))
