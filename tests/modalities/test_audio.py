"""The audio modality's preprocessing: the log-mel frontend and the crop of a clip
(mmgen_lightning/modalities/audio.py)."""

from __future__ import annotations

import math

import torch

from mmgen_lightning.modalities import DataSpec, get_modality
from mmgen_lightning.modalities.audio import LOG_FLOOR, LOG_SCALE
from tests.modalities import SPEC


def test_log_mel_is_sized_from_the_spec_and_silence_sits_at_the_floor():
    log_mel = get_modality("audio").log_mel(DataSpec.from_dict(SPEC), n_mels=16, frames=8)
    assert sum(p.numel() for p in log_mel.parameters()) == 0  # preprocessing: nothing to train
    silence = log_mel(torch.zeros(2, 4000))
    assert silence.shape == (2, 16, log_mel.frames) and log_mel.frames == 4000 // (4000 // 8) + 1
    assert torch.allclose(silence, torch.full_like(silence, math.log(LOG_FLOOR) / LOG_SCALE))


def test_log_mel_inverts_to_a_waveform_of_the_clip_length_with_the_tone_s_pitch():
    spec = DataSpec.from_dict(SPEC)
    log_mel = get_modality("audio").log_mel(spec, n_mels=32, frames=16)
    tone = 0.5 * torch.sin(2 * math.pi * 1000 * torch.arange(4000) / 8000)
    waveform = log_mel.invert(log_mel(tone[None]), iterations=16)
    assert waveform.shape == (1, 4000) and waveform.abs().max() <= 1.0
    spectrum = torch.fft.rfft(waveform[0]).abs()
    assert abs(spectrum.argmax().item() * 8000 / 4000 - 1000) < 100  # the peak stays near 1 kHz


def test_fit_length_cuts_or_zero_pads_every_clip():
    assert get_modality("audio").fit_length(torch.ones(2, 3), 5).tolist() == [[1, 1, 1, 0, 0]] * 2
    assert get_modality("audio").fit_length(torch.arange(6.0), 4).tolist() == [0, 1, 2, 3]
