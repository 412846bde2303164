"""The layers judges are built from, frozen here for them.

A judge is a measuring instrument cached on disk (``metrics/judges.py``): its weights are only
valid for the exact architecture they were trained with. These are copies of the model layers the
judges were first built from (``models/layers/image.py``'s ``ImageEncoder``, ``models/layers/audio.py``'s
``LogMel`` and ``AudioEncoder``, as of ``JUDGE_VERSION = 5``), with the same parameter and buffer
names, so cached judges keep loading, and a change to a model layer cannot silently change a judge.
Change a judge only here, and bump ``JUDGE_VERSION`` with it.
"""

from __future__ import annotations

import math

import torch
import torchaudio.transforms as T
from torch import Tensor, nn

LOG_FLOOR = 1e-3
LOG_SCALE = 4.0  # log-mel energies of [-1, 1] audio span about [-7, 9]; dividing keeps them O(1)


class LogMel(nn.Module):
    """``audio: B,T`` in [-1, 1] -> scaled log-mel ``B,n_mels,frames``."""

    def __init__(self, sample_rate: int, audio_length: int, n_mels: int = 64, frames: int = 32) -> None:
        super().__init__()
        self.hop_length = max(1, audio_length // frames)
        self.n_fft = max(256, 2 * self.hop_length)
        self.mel = T.MelSpectrogram(sample_rate, n_fft=self.n_fft, hop_length=self.hop_length, n_mels=n_mels,
                                    power=2.0)
        self.frames = audio_length // self.hop_length + 1

    def forward(self, audio: Tensor) -> Tensor:
        # the STFT runs in float32 even under bf16 autocast: low precision ruins the log spectrum
        with torch.autocast(device_type=audio.device.type, enabled=False):
            return torch.log(self.mel(audio.float()) + LOG_FLOOR) / LOG_SCALE


class AudioEncoder(nn.Module):
    """Scaled log-mel ``B,n_mels,frames`` -> ``B,out_dim``: 1-D convolutions over time with the mel
    bands as channels, then mean and max pooling over time (which bands sound, not when)."""

    def __init__(self, n_mels: int, out_dim: int, width: int = 32) -> None:
        super().__init__()
        channels = 4 * width
        self.net = nn.Sequential(
            nn.Conv1d(n_mels, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.SiLU(),
            nn.Conv1d(channels, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.SiLU(),
        )
        self.head = nn.Linear(2 * channels, out_dim)

    def forward(self, log_mel: Tensor) -> Tensor:
        features = self.net(log_mel)  # B,C,frames
        return self.head(torch.cat([features.mean(-1), features.amax(-1)], dim=1))


class ImageEncoder(nn.Module):
    """``B,C,H,W`` (side 16, 32 or 64) -> ``B,out_dim``: strided 4x4 convs down to 4x4, then a linear head."""

    def __init__(self, channels: int, image_size: int, out_dim: int, width: int = 32) -> None:
        super().__init__()
        if image_size not in (16, 32, 64):
            raise ValueError(f"image_size must be one of 16, 32, 64, got {image_size}")
        layers: list[nn.Module] = []
        in_channels = channels
        for level in range(int(math.log2(image_size // 4))):  # down to a 4x4 feature map
            out_channels = width * 2**level
            layers += [nn.Conv2d(in_channels, out_channels, 4, 2, 1), nn.GroupNorm(8, out_channels), nn.SiLU()]
            in_channels = out_channels
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(in_channels * 16, out_dim)

    def forward(self, image: Tensor) -> Tensor:
        return self.head(self.features(image))


class FrameSequenceEncoder(nn.Module):
    """``B,F,C,H,W`` -> ``B,out_dim``: strided convolutions shared by every frame, then 1-D
    convolutions over the frames. Each frame gives what it shows (its feature map max-pooled over
    space, so wherever the content is) and where (the map flattened); time turns "where" into motion.
    A fraction of the cost of 3-D convolutions."""

    def __init__(self, channels: int, frames: int, size: int, out_dim: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = channels
        for level in range(int(math.log2(size // 4))):  # down to a 4x4 map
            out_channels = width * 2**level
            layers += [nn.Conv2d(in_channels, out_channels, 4, 2, 1), nn.GroupNorm(8, out_channels), nn.SiLU()]
            in_channels = out_channels
        self.frame = nn.Sequential(*layers)
        self.where = nn.Linear(in_channels * 16, in_channels)
        self.time = nn.Sequential(nn.Conv1d(2 * in_channels, 2 * in_channels, 3, padding=1),
                                  nn.GroupNorm(8, 2 * in_channels), nn.SiLU())
        self.head = nn.Linear(2 * in_channels * frames, out_dim)

    def forward(self, video: Tensor) -> Tensor:
        batch, frames = video.shape[:2]
        maps = self.frame(video.flatten(0, 1))  # B*F,C,4,4
        per_frame = torch.cat([maps.amax((-2, -1)), self.where(maps.flatten(1))], dim=1).view(batch, frames, -1)
        return self.head(self.time(per_frame.transpose(1, 2)).flatten(1))
