"""Convolutional encoder/decoder pairs that keep a spatial (2-D, images) or temporal (1-D, log-mel
frames) grid of feature vectors, for discrete tokenizers: ``B,C,*size`` <-> ``B,D,*size/factor``.

Each halving of the grid is a strided 4x4 (or 4) convolution; a residual block at the bottom
gives every token a view of its neighbours before quantisation and after it.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_UPCONV = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}


def num_halvings(factor: int) -> int:
    """``log2(factor)`` for a power of two >= 2, else a ``ValueError`` naming ``downsample``."""
    if factor < 2 or factor & (factor - 1):
        raise ValueError(f"downsample must be a power of two >= 2, got {factor}")
    return int(math.log2(factor))


class ResidualBlock(nn.Module):
    """``x + conv(act(norm(conv(act(norm(x))))))`` at constant width (3-tap kernels)."""

    def __init__(self, channels: int, dims: int) -> None:
        super().__init__()
        conv = _CONV[dims]
        self.net = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), conv(channels, channels, 3, padding=1),
                                 nn.GroupNorm(8, channels), nn.SiLU(), conv(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class GridEncoder(nn.Module):
    """``B,in_channels,*size`` -> ``B,out_channels,*size/factor``.

    Args:
        in_channels: input channels (image channels, or mel bands for 1-D).
        out_channels: size of each grid vector (the quantizer's ``dim``).
        width: channels of the hidden layers.
        factor: downsampling factor per grid axis (a power of two).
        dims: 2 for images, 1 for sequences of frames.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int, factor: int, dims: int = 2) -> None:
        super().__init__()
        conv = _CONV[dims]
        layers: list[nn.Module] = [conv(in_channels, width, 3, padding=1)]
        for _ in range(num_halvings(factor)):
            layers += [nn.GroupNorm(8, width), nn.SiLU(), conv(width, width, 4, 2, 1)]
        layers += [ResidualBlock(width, dims), nn.GroupNorm(8, width), nn.SiLU(), conv(width, out_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class GridDecoder(nn.Module):
    """``B,in_channels,*grid`` -> ``B,out_channels,*grid*factor`` (unbounded; callers clamp).

    Args: as :class:`GridEncoder`, from the grid vectors back to the data.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int, factor: int, dims: int = 2) -> None:
        super().__init__()
        conv, upconv = _CONV[dims], _UPCONV[dims]
        layers: list[nn.Module] = [conv(in_channels, width, 3, padding=1), ResidualBlock(width, dims)]
        for _ in range(num_halvings(factor)):
            layers += [nn.GroupNorm(8, width), nn.SiLU(), upconv(width, width, 4, 2, 1)]
        layers += [nn.GroupNorm(8, width), nn.SiLU(), conv(width, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
