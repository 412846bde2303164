"""3-D convolutional video encoder/decoder for ``B,F,C,H,W`` clips in [-1, 1]."""

from __future__ import annotations

import math

from torch import Tensor, nn


def _levels(size: int) -> int:
    if size not in (16, 32, 64):
        raise ValueError(f"video frame size must be one of 16, 32, 64, got {size}")
    return int(math.log2(size // 4))


class VideoEncoder(nn.Module):
    """``B,F,C,H,W`` -> ``B,out_dim``; space is downsampled to 4x4, time is kept (motion lives there)."""

    def __init__(self, channels: int, frames: int, size: int, out_dim: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = channels
        for level in range(_levels(size)):
            out_channels = width * 2**level
            layers += [nn.Conv3d(in_channels, out_channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)),
                       nn.GroupNorm(8, out_channels), nn.SiLU()]
            in_channels = out_channels
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(in_channels * frames * 16, out_dim)

    def forward(self, video: Tensor) -> Tensor:
        return self.head(self.net(video.transpose(1, 2)))


class VideoDecoder(nn.Module):
    """``B,in_dim`` -> ``B,F,C,H,W`` (unbounded mean)."""

    def __init__(self, in_dim: int, channels: int, frames: int, size: int, width: int = 16) -> None:
        super().__init__()
        levels = _levels(size)
        self.frames, self.base = frames, width * 2 ** (levels - 1)
        self.project = nn.Sequential(nn.Linear(in_dim, self.base * frames * 16), nn.SiLU())
        layers: list[nn.Module] = []
        in_channels = self.base
        for level in reversed(range(levels - 1)):
            out_channels = width * 2**level
            layers += [nn.ConvTranspose3d(in_channels, out_channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)),
                       nn.GroupNorm(8, out_channels), nn.SiLU()]
            in_channels = out_channels
        layers.append(nn.ConvTranspose3d(in_channels, channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        grid = self.project(z).view(z.shape[0], self.base, self.frames, 4, 4)
        return self.net(grid).transpose(1, 2)
