"""The pitch a clip sounds, read from its spectrum: for a generated note, was it the asked one?

:func:`read_pitch` takes the sustained part of each clip (after the attack, before the release of a
note held for ``NOTE_SECONDS``), and scores every candidate fundamental ``f`` by the harmonic sum of
the log-magnitude spectrum, ``sum_h w_h log |X(h f)|`` for ``h = 1..harmonics`` (the harmonic product
spectrum of Noll 1969, in logs). Summing harmonics finds the fundamental of a note whose fundamental
is weak (low brass, bass), and the logs make a missing harmonic cost a candidate one octave too low.
The best candidate is turned into a MIDI number, ``69 + 12 log2(f / 440)``.

Written here rather than taken from ``torchaudio.functional.detect_pitch_frequency`` (autocorrelation):
on the Notes set's real renders that one reads 56% of the notes within a semitone, this one 94%
(``benchmarks/notes_quality.py`` prints the share beside every generated score). What it misses are
organs: the drawbar organ's 16-foot stop sounds an octave below the key, and the low church organ's
fundamental is weaker than its octave.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: where the sustained part of a Notes clip lies (its note is held 0.75 s from the start)
SUSTAIN_SECONDS = (0.05, 0.7)
#: candidate fundamentals, Hz: below the lowest note of a General MIDI bass (C2) to above the highest Notes pitch (B5)
FUNDAMENTAL_HZ = (60.0, 1500.0)


def midi_of_frequency(frequency: Tensor) -> Tensor:
    """MIDI note number (fractional) of ``frequency`` in Hz: A4 = 440 Hz = 69, 12 per octave."""
    return 69 + 12 * torch.log2(frequency / 440.0)


def frequency_of_midi(pitch: Tensor | float) -> Tensor:
    """Hz of a (fractional) MIDI note number."""
    return 440.0 * 2 ** ((torch.as_tensor(pitch, dtype=torch.float64) - 69) / 12)


@torch.no_grad()
def read_pitch(audio: Tensor, sample_rate: int, sustain: tuple[float, float] = SUSTAIN_SECONDS,
               fundamental_hz: tuple[float, float] = FUNDAMENTAL_HZ, harmonics: int = 6) -> Tensor:
    """The MIDI pitch ``float B`` each clip of ``audio: B,T`` (waveform in [-1, 1]) sounds.

    Args:
        audio: the clips, ``B,T`` (or ``T``) at ``sample_rate``.
        sample_rate: samples per second.
        sustain: ``(start, stop)`` seconds of the clip that are read (cut to the clip's end).
        fundamental_hz: the range the fundamental is searched in.
        harmonics: how many harmonics ``h f`` each candidate ``f`` is scored on.
    """
    if audio.ndim == 1:
        audio = audio.unsqueeze(0)
    start, stop = (round(seconds * sample_rate) for seconds in sustain)
    segment = audio[:, start:stop].float()
    if segment.shape[-1] < 2:
        raise ValueError(f"read_pitch: sustain {sustain} s holds no samples of a {audio.shape[-1]}-sample clip")
    segment = segment - segment.mean(-1, keepdim=True)
    # zero-padding to 8x the segment interpolates the spectrum finely enough (about 0.2 Hz at 16 kHz)
    # that h * f lands on the harmonic's peak, not beside it
    size = 2 ** math.ceil(math.log2(8 * segment.shape[-1]))
    magnitude = torch.fft.rfft(segment * torch.hann_window(segment.shape[-1]), n=size).abs()
    # a floor 60 dB under the loudest bin keeps silent bins finite without letting them dominate the sum
    log_magnitude = torch.log(magnitude + 1e-3 * magnitude.amax(-1, keepdim=True).clamp_min(1e-12))
    low, high = (round(hz * size / sample_rate) for hz in fundamental_hz)
    candidates = torch.arange(max(low, 1), high)
    last_bin = log_magnitude.shape[-1] - 1
    # lower harmonics weigh a little more: a pure tone at f scores as much at f / 2 (its second harmonic)
    # as at f, and the weights break that tie towards f
    score = sum((1 - 0.02 * (h - 1)) * log_magnitude[:, (h * candidates).clamp(max=last_bin)]
                for h in range(1, harmonics + 1))
    fundamental = candidates[score.argmax(-1)].double() * sample_rate / size
    return midi_of_frequency(fundamental).float()


def pitch_within(read: Tensor, asked: Tensor, semitones: float = 1.0) -> Tensor:
    """``bool B``: the read pitch lies within ``semitones`` of the asked MIDI pitch."""
    return (read.float() - asked.float()).abs() <= semitones
