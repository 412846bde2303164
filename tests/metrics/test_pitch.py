"""read_pitch: the fundamental of pure and harmonic tones (a weak or missing fundamental included) to MIDI,
and the pitch of a few real SoundFont renders."""

import math

import pytest
import torch

from mmgen_lightning.metrics.pitch import frequency_of_midi, midi_of_frequency, pitch_within, read_pitch

RATE = 16000


def tone(midi: float, amplitudes: list[float], seconds: float = 1.0, rate: int = RATE) -> torch.Tensor:
    """A sum of harmonics ``h f`` (``amplitudes[h-1]``) of the MIDI pitch, peak about 0.5."""
    time = torch.arange(round(seconds * rate), dtype=torch.float64) / rate
    frequency = float(frequency_of_midi(midi))
    wave = sum(a * torch.sin(2 * math.pi * (h + 1) * frequency * time + h) for h, a in enumerate(amplitudes))
    return (0.5 * wave / wave.abs().max()).float()


def test_midi_and_frequency_are_inverse():
    assert frequency_of_midi(69).item() == pytest.approx(440)
    assert midi_of_frequency(torch.tensor([261.6256, 880.0])).tolist() == pytest.approx([60, 81], abs=1e-4)


@pytest.mark.parametrize("amplitudes", [[1.0], [1.0, 0.5, 0.3, 0.2], [0.05, 1.0, 0.8, 0.6, 0.4],
                                        [0.0, 1.0, 1.0, 1.0, 1.0]], ids=["sine", "harmonic", "weak-fundamental",
                                                                          "missing-fundamental"])
def test_reads_the_fundamental_of_every_notes_pitch(amplitudes):
    pitches = torch.arange(48, 84, 5, dtype=torch.float32) + 0.3  # off the semitone grid, C3-B5
    audio = torch.stack([tone(float(p), amplitudes) for p in pitches])
    read = read_pitch(audio, RATE)
    assert read.shape == pitches.shape
    assert (read - pitches).abs().max() < 0.1


def test_a_quarter_tone_off_is_within_a_semitone_and_two_semitones_off_is_not():
    read = read_pitch(torch.stack([tone(60.25, [1, 0.5]), tone(62.0, [1, 0.5]), tone(58.0, [1, 0.5])]), RATE)
    assert pitch_within(read, torch.full((3,), 60.0)).tolist() == [True, False, False]


def test_one_clip_at_8_khz_under_light_noise():
    clean = tone(55.0, [1, 0.6, 0.4], rate=8000)
    noisy = clean + 0.01 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    assert read_pitch(noisy, 8000).item() == pytest.approx(55.0, abs=0.2)


def test_a_clip_shorter_than_the_sustain_window_is_one_line():
    with pytest.raises(ValueError, match="sustain"):
        read_pitch(torch.zeros(2, 100), RATE)


def test_real_renders_read_at_their_key():
    """A few real notes of the SoundFont (violin, flute, trumpet, acoustic bass, at C3, A4, B5)."""
    fluidsynth = pytest.importorskip("fluidsynth", reason="FluidSynth cannot be loaded")  # noqa: F841
    from mmgen_lightning.datamodules.notes import default_soundfont, render_notes

    keys = [48, 69, 83]
    notes = [(program, key, 127) for program in (40, 73, 56, 32) for key in keys]
    audio = torch.from_numpy(render_notes(default_soundfont(), notes, RATE, RATE)).float() / 32768
    read = read_pitch(audio, RATE)
    assert pitch_within(read, torch.tensor([key for _, key, _ in notes])).all(), read.round().tolist()
