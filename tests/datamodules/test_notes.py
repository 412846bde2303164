"""NotesDataModule: the SoundFont's notes at the asked pitch and loudness, captions that parse back, held-out
(instrument, octave) pairs, the render cache, bad input. Three instruments are rendered (216 notes)."""

import collections
import sys

import numpy as np
import pytest
import torch

from mmgen_lightning.batch import check_batch
from mmgen_lightning.datamodules import NotesDataModule
from mmgen_lightning.datamodules import notes as notes_module
from mmgen_lightning.datamodules.notes import (HELDOUT, INSTRUMENT_NAMES, OCTAVES, PITCHES, TEMPLATES, caption,
                                               parse_caption)
from mmgen_lightning.datamodules.notes import INSTRUMENTS as GM_INSTRUMENTS
from mmgen_lightning.errors import InputError

try:
    import fluidsynth  # noqa: F401  (pyfluidsynth, which loads the FluidSynth library)
    SYNTH = None
except ImportError as error:
    SYNTH = str(error)
needs_synth = pytest.mark.skipif(SYNTH is not None, reason=f"FluidSynth cannot be loaded ({SYNTH}): "
                                 "apt-get install libfluidsynth3")

INSTRUMENTS = ["flute", "electric piano", "violin"]
INSTRUMENTS_BY_NAME = {entry[0]: entry for entry in GM_INSTRUMENTS}
ALL = ["audio", "text", "label"]


def make(tmp_path, **options):
    options = {"modalities": ALL, "instruments": INSTRUMENTS, "cache_dir": str(tmp_path / "cache"), "batch_size": 8,
               **options}
    return NotesDataModule(**options)


@pytest.fixture(scope="module")
def notes(tmp_path_factory):
    if SYNTH is not None:
        pytest.skip(f"FluidSynth cannot be loaded ({SYNTH})")
    datamodule = make(tmp_path_factory.mktemp("notes"))
    datamodule.setup()
    return datamodule


def pairs(datamodule, split):
    attributes = datamodule.dataset(split).tensors["attributes"]
    return {(INSTRUMENT_NAMES[i], OCTAVES[p // 12]) for _, i, p, _ in attributes.tolist()}


def test_captions_parse_back_in_every_wording():
    for instrument in range(len(INSTRUMENT_NAMES)):
        for pitch in (PITCHES[0], 60, 61, PITCHES[-1]):
            for loudness in (0, 1):
                for template in range(len(TEMPLATES)):
                    parsed = parse_caption(caption(instrument, pitch, loudness, template))
                    assert (parsed["instrument"], parsed["pitch"], parsed["loudness"]) == (
                        instrument, pitch - PITCHES[0], loudness)
    assert caption(10, 72, 1) == "a violin playing a loud high C"
    assert caption(1, 61, 0, 1) == "a soft middle C sharp on the electric piano"
    assert parse_caption("a smiling cat") is None


def test_heldout_pairs_cover_every_family_once_and_every_octave(tmp_path):
    full = NotesDataModule(cache_dir=str(tmp_path))
    families = [INSTRUMENTS_BY_NAME[name][2] for name, _ in HELDOUT]
    assert sorted(families) == list(range(11))
    assert sorted(collections.Counter(octave for _, octave in HELDOUT).values()) == [3, 4, 4]
    assert np.bincount(full.split_of).tolist() == [1056, 132, 132, 264]
    assert not list(tmp_path.iterdir())  # splitting renders nothing


@needs_synth
def test_heldout_pairs_are_never_trained_on_but_their_parts_are(notes):
    held = {pair for pair in HELDOUT if pair[0] in INSTRUMENTS}
    assert held == {("electric piano", "high")}
    train = pairs(notes, "train")
    assert pairs(notes, "heldout") == held and not train & held
    for instrument, octave in held:
        assert any(i == instrument for i, _ in train) and any(o == octave for i, o in train if i != instrument)
    assert len(notes.dataset("heldout")) == 12 * 2 * len(held)
    assert sum(len(notes.dataset(s)) for s in ("train", "val", "test", "heldout")) == 3 * 36 * 2


@needs_synth
def test_each_clip_sounds_at_its_pitch_and_loudness(notes):
    audio = torch.from_numpy(notes.clips()).float() / 32768
    assert audio.shape == (216, 16000) and audio.abs().max() < 1
    for index, (instrument, pitch, loudness) in enumerate(notes.notes):
        if INSTRUMENT_NAMES[instrument] != "flute":
            continue
        spectrum = np.abs(np.fft.rfft(audio[index, :12000].numpy() * np.hanning(12000)))
        hertz = np.fft.rfftfreq(12000, 1 / 16000)
        expected = 440 * 2 ** ((pitch - 69) / 12)
        # the strongest partial is a harmonic of the note, and the note's own frequency sounds too (a low
        # flute's second harmonic can be the strongest)
        harmonic = hertz[np.argmax(spectrum)] / expected
        assert round(harmonic) in (1, 2, 3, 4) and abs(12 * np.log2(harmonic / round(harmonic))) < 0.5, (pitch, harmonic)
        near = np.abs(12 * np.log2(np.maximum(hertz, 1) / expected)) < 0.5
        assert spectrum[near].max() > 0.1 * spectrum.max(), pitch
    rms = audio[:, :12000].pow(2).mean(1).sqrt().view(-1, 2)  # (soft, loud) of each instrument and pitch
    assert (rms[:, 1] > 2 * rms[:, 0]).all()


@needs_synth
def test_batches_follow_the_contract_and_captions_state_the_attributes(notes):
    batch = next(iter(notes.train_dataloader()))
    check_batch(batch)
    assert batch["audio"].shape == (8, 16000) and batch["audio"].dtype == torch.float32
    assert torch.equal(batch["label"], batch["attributes"][:, 0])
    for split in ("train", "val", "test", "heldout"):
        tensors = notes.dataset(split).tensors
        for text, attributes in zip(notes.tokenizer.decode(tensors["text"]), tensors["attributes"].tolist()):
            parsed = parse_caption(text)
            assert [parsed[k] for k in ("family", "instrument", "pitch", "loudness")] == attributes, text
    spec = notes.spec
    assert (spec.sample_rate, spec.audio_length, spec.num_classes) == (16000, 16000, 11)
    assert spec.attribute_names == ["family", "instrument", "pitch", "loudness"]
    assert spec.attribute_sizes == [11, 22, 36, 2]


@needs_synth
def test_same_seed_same_data_and_the_cache_is_reused(notes, tmp_path, monkeypatch):
    assert [f.name for f in notes.cache_dir.iterdir()] == [notes.cache_path().name]
    monkeypatch.setattr(notes_module, "render_notes", lambda *a: pytest.fail("rendered again"))
    again = make(notes.cache_dir.parent)
    again.setup()
    for split in ("train", "val", "test", "heldout"):
        for key, value in notes.dataset(split).tensors.items():
            assert torch.equal(value, again.dataset(split).tensors[key]), (split, key)
    assert not np.array_equal(make(tmp_path, seed=1).split_of, notes.split_of)
    assert make(tmp_path, sample_rate=8000).cache_path() != notes.cache_path()


def test_a_missing_or_broken_soundfont_is_one_line_and_caches_nothing(tmp_path):
    with pytest.raises(InputError, match=r"SoundFont not found: .*nothing\.sf2 \(NotesDataModule soundfont\)"):
        make(tmp_path, soundfont=str(tmp_path / "nothing.sf2"))
    broken = tmp_path / "broken.sf2"
    broken.write_bytes(b"RIFF" + bytes(100))
    if SYNTH is None:
        with pytest.raises(InputError, match="broken.sf2: FluidSynth cannot load this file as a SoundFont"):
            make(tmp_path, soundfont=str(broken)).setup()
    assert not (tmp_path / "cache").exists()


@needs_synth
def test_a_render_that_fails_midway_names_the_note_and_caches_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(notes_module, "VELOCITIES", (64, 0))  # velocity 0 is a note-off: the loud notes are silent
    with pytest.raises(InputError, match=r"TimGM6mb\.sf2: program 73 plays nothing at MIDI key 48"):
        make(tmp_path, instruments=["flute"]).setup()
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_a_missing_synthesizer_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fluidsynth", None)
    with pytest.raises(InputError, match="renders notes with FluidSynth, which cannot be loaded.*libfluidsynth3") as error:
        make(tmp_path).setup()
    assert "\n" not in str(error.value) and not (tmp_path / "cache").exists()


def test_bad_options_name_themselves(tmp_path):
    with pytest.raises(ValueError, match="instruments: unknown 'kazoo'"):
        make(tmp_path, instruments=["kazoo"])
    with pytest.raises(ValueError, match="sample_rate: 44100 is not supported"):
        make(tmp_path, sample_rate=44100)
