"""Audio through a log-mel spectrogram (torchaudio): encoder, mel decoder, mel -> waveform.

Models never see raw waveforms: the frontend turns ``audio: B,T`` into ``B,n_mels,frames`` of
scaled log-mel energies, which is what encoders read and what audio likelihoods are defined on.
"""

from __future__ import annotations

import torch
import torchaudio.transforms as T
from torch import Tensor, nn

LOG_FLOOR = 1e-3
LOG_SCALE = 4.0  # log-mel energies of [-1, 1] audio span about [-7, 9]; dividing keeps them O(1)


class LogMel(nn.Module):
    """``audio: B,T`` in [-1, 1] -> scaled log-mel ``B,n_mels,frames``, and back by Griffin-Lim."""

    def __init__(self, sample_rate: int, audio_length: int, n_mels: int = 64, n_fft: int | None = None,
                 frames: int = 32) -> None:
        super().__init__()
        self.audio_length = audio_length
        self.hop_length = max(1, audio_length // frames)
        self.n_fft = n_fft or max(256, 2 * self.hop_length)
        self.n_mels = n_mels
        self.mel = T.MelSpectrogram(sample_rate, n_fft=self.n_fft, hop_length=self.hop_length, n_mels=n_mels,
                                    power=2.0)
        self.frames = audio_length // self.hop_length + 1
        self.sample_rate = sample_rate

    def forward(self, audio: Tensor) -> Tensor:
        # the STFT runs in float32 even under bf16 autocast: low precision ruins the log spectrum
        with torch.autocast(device_type=audio.device.type, enabled=False):
            return torch.log(self.mel(audio.float()) + LOG_FLOOR) / LOG_SCALE

    @torch.no_grad()
    def invert(self, log_mel: Tensor, iterations: int = 32) -> Tensor:
        """Scaled log-mel -> waveform ``B,T`` (inverse mel by least squares, then Griffin-Lim)."""
        power = (torch.exp(log_mel.float() * LOG_SCALE) - LOG_FLOOR).clamp_min(0)
        inverse_mel = T.InverseMelScale(self.n_fft // 2 + 1, self.n_mels, self.sample_rate).to(power.device)
        griffin_lim = T.GriffinLim(self.n_fft, n_iter=iterations, hop_length=self.hop_length, power=2.0,
                                   length=self.audio_length).to(power.device)
        waveform = griffin_lim(inverse_mel(power))
        peak = waveform.abs().amax(dim=-1, keepdim=True).clamp_min(1.0)
        return waveform / peak


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
