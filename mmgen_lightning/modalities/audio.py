"""``audio: float B,T`` waveforms, and the log-mel spectrogram models read them through.

Models never see raw waveforms: :class:`LogMel` turns ``audio: B,T`` into ``B,n_mels,frames`` of scaled
log-mel energies, which is what encoders read and what audio likelihoods are defined on. It has no
parameters (its buffers are the STFT window and the mel filters), so it is preprocessing and lives here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgen_lightning.modalities.base import Modality
from mmgen_lightning.modalities.files import FileFormat
from mmgen_lightning.modalities.spec import need
from mmgen_lightning.modalities.tensorboard import TensorBoardView

LOG_FLOOR = 1e-3
LOG_SCALE = 4.0  # log-mel energies of [-1, 1] audio span about [-7, 9]; dividing keeps them O(1)


class LogMel(nn.Module):
    """``audio: B,T`` in [-1, 1] -> scaled log-mel ``B,n_mels,frames``, and back by Griffin-Lim."""

    def __init__(self, sample_rate: int, audio_length: int, n_mels: int = 64, n_fft: int | None = None,
                 frames: int = 32) -> None:
        import torchaudio.transforms as T  # here, not at the top: the CLI starts without torchaudio

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
        import torchaudio.transforms as T

        power = (torch.exp(log_mel.float() * LOG_SCALE) - LOG_FLOOR).clamp_min(0)
        inverse_mel = T.InverseMelScale(self.n_fft // 2 + 1, self.n_mels, self.sample_rate).to(power.device)
        griffin_lim = T.GriffinLim(self.n_fft, n_iter=iterations, hop_length=self.hop_length, power=2.0,
                                   length=self.audio_length).to(power.device)
        waveform = griffin_lim(inverse_mel(power))
        peak = waveform.abs().amax(dim=-1, keepdim=True).clamp_min(1.0)
        return waveform / peak


class AudioModality(Modality, FileFormat, TensorBoardView):
    """``audio: float B,T`` waveform in [-1, 1] at the data's ``sample_rate``, ``T = audio_length``; models
    read it as a scaled log-mel spectrogram (:meth:`log_mel`)."""

    name, ndim, judgeable = "audio", 2, True
    extension, from_files, columns, noun = ".wav", True, ("audio",), "audio files"
    default_sample_rate: ClassVar[int] = 16000
    logged_clips: ClassVar[int] = 4

    @staticmethod
    def log_mel(spec: Mapping[str, Any], n_mels: int = 64, frames: int = 32) -> LogMel:
        """The log-mel frontend ``B,T -> B,n_mels,frames'`` for this data's audio."""
        return LogMel(need(spec, "sample_rate"), need(spec, "audio_length"), n_mels, frames=frames)

    @staticmethod
    def fit_length(audio: Tensor, length: int) -> Tensor:
        """Cut or zero-pad ``...,T`` audio to ``length`` samples (the crop every clip gets)."""
        return F.pad(audio[..., :length], (0, max(0, length - audio.shape[-1])))

    def condition_frontend(self, spec, *, n_mels=64, frames=32):
        """:meth:`log_mel`: the spectrogram is computed once per batch for every embedder."""
        return self.log_mel(spec, n_mels, frames)

    def condition_inputs(self, batch, frontend=None):
        """The clip and its ``log_mel: B,n_mels,frames`` (``frontend``: :meth:`condition_frontend`), which
        the embedders read."""
        if frontend is None:
            raise ValueError("audio conditions are read through their log-mel frontend (condition_frontend)")
        return {self.name: batch[self.name], "log_mel": frontend(batch[self.name])}

    def scored_dimensions(self, batch, *, spectrogram_dims=None):
        """Samples of the waveform, or ``spectrogram_dims`` (``n_mels * frames``) when the likelihood
        is defined on the log-mel spectrogram."""
        if spectrogram_dims is None:
            return super().scored_dimensions(batch)
        audio = batch[self.name]
        return torch.full((audio.shape[0],), float(spectrogram_dims), dtype=torch.float64, device=audio.device)

    def to_data(self, values, spec=None, tokenizer=None):
        return [clip.float().clamp(-1, 1).cpu().numpy() for clip in values]

    # --- files --------------------------------------------------------------------------------------
    def read(self, path, spec, *, resample=True):
        """A WAV/FLAC/OGG file (``soundfile``; ``torchaudio.load`` would need FFmpeg) -> ``T`` in [-1, 1]:
        mixed to mono, resampled to ``sample_rate`` (or refused when ``resample`` is off and the rates
        differ), cut or zero-padded to ``audio_length`` (:meth:`fit_length`); empty, undecodable and
        NaN/Inf files refused."""
        import torchaudio.functional as AF

        sample_rate = need(spec, "sample_rate")
        try:
            waveform, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError) as error:
            raise ValueError(f"cannot decode the audio ({error})") from error
        if waveform.shape[0] == 0:
            raise ValueError("the audio has no samples")
        if not np.isfinite(waveform).all():
            raise ValueError("the audio holds NaN or Inf samples")
        if file_rate != sample_rate and not resample:
            raise ValueError(f"sample rate is {file_rate} Hz, expected {sample_rate} Hz (resample is off)")
        audio = torch.from_numpy(waveform.mean(axis=1))
        if file_rate != sample_rate:
            audio = AF.resample(audio, file_rate, sample_rate)
        # float WAVs may peak above full scale; the batch contract is [-1, 1]
        return self.fit_length(audio, need(spec, "audio_length")).clamp(-1.0, 1.0)

    def write(self, value, path, spec=None, tokenizer=None):
        """``T`` in [-1, 1] -> a 16-bit PCM WAV at the spec's ``sample_rate``."""
        if spec is None or spec.get("sample_rate") is None:
            raise ValueError("write_samples: sample_rate is required to write audio")
        waveform = value.float().clamp(-1, 1).cpu().numpy()
        soundfile.write(str(path), waveform, need(spec, "sample_rate"), subtype="PCM_16")
        return {}

    # --- drawing ------------------------------------------------------------------------------------
    def log(self, writer, tag, values, step, spec=None, tokenizer=None, conditions=None):
        rate = (spec or {}).get("sample_rate") or self.default_sample_rate
        for index, clip in enumerate(values.detach().float().cpu()[: self.logged_clips]):
            writer.add_audio(f"{tag}/{index}", clip.clamp(-1, 1)[None], step, sample_rate=rate)

    def pictures(self, values, size, *, log_mel=None):
        """The log-mel spectrogram (``log_mel``: the frontend the model reads through), low bands at
        the bottom, each clip scaled to [0, 1]."""
        if log_mel is None:
            raise ValueError("audio pictures need the log_mel frontend the model reads through")
        spectrogram = log_mel(values).float().flip(1)  # B,n_mels,frames, low bands at the bottom
        low = spectrogram.amin((1, 2), keepdim=True)
        spectrogram = (spectrogram - low) / (spectrogram.amax((1, 2), keepdim=True) - low).clamp_min(1e-6)
        pictures = F.interpolate(spectrogram.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
        return pictures.unsqueeze(1).expand(-1, -1, 3, -1, -1).cpu()
