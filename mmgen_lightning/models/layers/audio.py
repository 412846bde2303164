"""Audio networks on the scaled log-mel spectrogram ``B,n_mels,frames`` that
:class:`~mmgen_lightning.modalities.audio.LogMel` (the audio modality's parameter-free frontend) computes:
an encoder, and a decoder back to the spectrogram (``LogMel.invert`` goes on to the waveform).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AudioEncoder(nn.Module):
    """Scaled log-mel ``B,n_mels,frames`` -> ``B,out_dim``.

    1-D convolutions over time with the mel bands as channels (cheap on a CPU, and a band's
    identity is the feature that matters), then mean and max pooling over time, so the feature
    knows *which* frequencies sound but not *when*: tones here start and stop at random times.
    """

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


class MelDecoder(nn.Module):
    """``B,in_dim`` -> scaled log-mel ``B,n_mels,frames`` (1-D transposed convolutions over time)."""

    def __init__(self, in_dim: int, n_mels: int, frames: int, width: int = 32) -> None:
        super().__init__()
        self.n_mels, self.frames = n_mels, frames
        self.channels, self.steps = 4 * width, -(-frames // 4)
        self.project = nn.Sequential(nn.Linear(in_dim, self.channels * self.steps), nn.SiLU())
        self.net = nn.Sequential(
            nn.ConvTranspose1d(self.channels, self.channels, 4, 2, 1), nn.GroupNorm(8, self.channels), nn.SiLU(),
            nn.ConvTranspose1d(self.channels, self.channels, 4, 2, 1), nn.GroupNorm(8, self.channels), nn.SiLU(),
            nn.Conv1d(self.channels, n_mels, 3, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        sequence = self.project(z).view(z.shape[0], self.channels, self.steps)
        return self.net(sequence)[:, :, : self.frames]
