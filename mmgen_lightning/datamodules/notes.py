"""Notes: a General MIDI SoundFont's sampled instruments, rendered note by note (an NSynth-like set).

The SoundFont is ``TimGM6mb.sf2``, which the ``pretty-midi`` package ships (pretty-midi's code is
MIT; the SoundFont is by Tim Brechbill (2004) and David Bolton (2010), **GPL-2.0**, as MuseScore
and Debian's ``timgm6mb-soundfont`` package distribute it; the file itself states no licence). It is
played by FluidSynth (LGPL-2.1) through ``pyfluidsynth`` (MIT), with reverb and chorus off, so each
clip is the instrument's own sample. FluidSynth is a system library: ``apt-get install libfluidsynth3``
(Debian/Ubuntu) or ``brew install fluid-synth`` (macOS).

Each item is one ``(instrument, pitch, loudness)`` of ``INSTRUMENTS`` (22 General MIDI programs, two
per family, eleven families named as NSynth names them) x ``PITCHES`` (MIDI 48-83, C3-B5: three
octaves, called low, middle and high, so MIDI 60 is "middle C") x ``LOUDNESS`` (velocity 64 soft,
127 loud):

* ``audio`` ``T``: the note held for ``NOTE_SECONDS`` then released, mono, at ``sample_rate``, cut
  at ``audio_seconds`` (a 10 ms fade at the cut); peaks stay below 1 at the fixed gain;
* ``text``: a caption from ``TEMPLATES`` ("a violin playing a loud high C"), one wording per item,
  drawn from ``(seed, item)``;
* ``label``: the instrument family.

``attributes`` are ``[family, instrument, pitch, loudness]`` (indices; pitch is MIDI - 48).

Splits. The ``(instrument, octave)`` pairs in ``HELDOUT`` (one per family, each octave three or four
times) are never trained on: their notes form the ``heldout`` split, while each instrument plays its
other two octaves in training and each octave is played by the other instruments. The other notes go
to train/val/test by a permutation seeded with ``seed`` cut by ``split_fractions``.

Every clip is rendered once per configuration and cached (:mod:`.rendered`) as int16, FluidSynth's
own output; the cache is keyed by the SoundFont's bytes and the settings, not by the FluidSynth
library's version (a cached set loads without the library), so delete it after changing FluidSynth.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmgen_lightning.datamodules.attributes import AttributeReading
from mmgen_lightning.datamodules.rendered import (RENDERED_SPLITS, RenderedDataModule, RenderedItems, cache_root,
                                                  check_fractions, check_readable, load_or_render,
                                                  split_by_permutation)
from mmgen_lightning.errors import InputError

ATTRIBUTE_NAMES = ("family", "instrument", "pitch", "loudness")
FAMILIES = ("keyboard", "mallet", "organ", "guitar", "bass", "string", "brass", "reed", "flute", "synth lead",
            "vocal")
#: (name, General MIDI program 0-127, family index in ``FAMILIES``)
INSTRUMENTS = (
    ("piano", 0, 0), ("electric piano", 4, 0),
    ("vibraphone", 11, 1), ("marimba", 12, 1),
    ("drawbar organ", 16, 2), ("church organ", 19, 2),
    ("nylon guitar", 24, 3), ("distorted guitar", 30, 3),
    ("acoustic bass", 32, 4), ("synth bass", 38, 4),
    ("violin", 40, 5), ("cello", 42, 5),
    ("trumpet", 56, 6), ("trombone", 57, 6),
    ("tenor sax", 66, 7), ("clarinet", 71, 7),
    ("flute", 73, 8), ("pan flute", 75, 8),
    ("square lead", 80, 9), ("sawtooth lead", 81, 9),
    ("choir", 52, 10), ("voice", 53, 10),
)
INSTRUMENT_NAMES = tuple(name for name, _, _ in INSTRUMENTS)
PITCHES = tuple(range(48, 84))
OCTAVES = ("low", "middle", "high")  # MIDI octaves 3, 4, 5
NOTE_NAMES = ("C", "C sharp", "D", "D sharp", "E", "F", "F sharp", "G", "G sharp", "A", "A sharp", "B")
LOUDNESS = ("soft", "loud")
VELOCITIES = (64, 127)
ADVERBS = ("softly", "loudly")
#: (instrument, octave) pairs never trained on
HELDOUT = (("electric piano", "high"), ("vibraphone", "low"), ("church organ", "middle"),
           ("nylon guitar", "high"), ("synth bass", "low"), ("cello", "middle"), ("trumpet", "high"),
           ("clarinet", "low"), ("pan flute", "middle"), ("sawtooth lead", "high"), ("voice", "low"))
TEMPLATES = (
    "{a} {instrument} playing a {loudness} {octave} {note}",
    "a {loudness} {octave} {note} on the {instrument}",
    "the {instrument} plays a {octave} {note} {adverb}",
    "{instrument}, {loudness}, {octave} {note}",
)
SAMPLE_RATES = (8000, 16000)
NOTE_SECONDS = 0.75
#: synth gain: the loudest note of the set peaks near 0.7
GAIN = 1.5
FADE_SECONDS = 0.01

_WORD = re.compile(r"[a-z]+")


def note_name(pitch: int) -> tuple[str, str]:
    """``(octave word, note name)`` of a MIDI pitch in ``PITCHES``: 60 -> ("middle", "C")."""
    return OCTAVES[(pitch - PITCHES[0]) // 12], NOTE_NAMES[pitch % 12]


def caption(instrument: int, pitch: int, loudness: int, template: int = 0) -> str:
    """The caption of a note (indices in ``INSTRUMENTS`` and ``LOUDNESS``, ``pitch`` a MIDI number)."""
    name = INSTRUMENT_NAMES[instrument]
    octave, note = note_name(pitch)
    return TEMPLATES[template % len(TEMPLATES)].format(
        a="an" if name[0] in "aeiou" else "a", instrument=name, loudness=LOUDNESS[loudness],
        adverb=ADVERBS[loudness], octave=octave, note=note)


def parse_caption(text: str) -> dict[str, int] | None:
    """``{family, instrument, pitch, loudness}`` (indices) stated by a caption of this grammar; what it does
    not state, or states twice differently, is left out; ``None`` when it states none."""
    words = _WORD.findall(text.lower())
    joined = " " + " ".join(words) + " "
    parsed: dict[str, int] = {}
    # longest names first, so "electric piano" is not read as "piano"
    for name in sorted(INSTRUMENT_NAMES, key=len, reverse=True):
        if f" {name} " in joined:
            parsed["instrument"] = INSTRUMENT_NAMES.index(name)
            parsed["family"] = INSTRUMENTS[parsed["instrument"]][2]
            break
    loudness = {index for index, (word, adverb) in enumerate(zip(LOUDNESS, ADVERBS)) if word in words or adverb in words}
    if len(loudness) == 1:
        parsed["loudness"] = loudness.pop()
    pitches = set()
    for index, word in enumerate(words[:-1]):
        if word in OCTAVES and len(words[index + 1]) == 1 and words[index + 1] in "abcdefg":
            sharp = index + 2 < len(words) and words[index + 2] == "sharp"
            note = NOTE_NAMES.index(words[index + 1].upper() + (" sharp" if sharp else ""))
            pitches.add(OCTAVES.index(word) * 12 + note)
    if len(pitches) == 1:
        parsed["pitch"] = pitches.pop()
    return parsed or None


def default_soundfont() -> Path:
    """``TimGM6mb.sf2`` from the installed ``pretty-midi``."""
    try:
        from importlib.resources import files

        return Path(str(files("pretty_midi") / "TimGM6mb.sf2"))
    except ModuleNotFoundError as error:
        raise InputError("NotesDataModule's default SoundFont is TimGM6mb.sf2 from pretty-midi, which is not installed",
                         None, "pip install pretty-midi==0.2.11.post0, or give soundfont: PATH") from error


def load_synthesizer(soundfont: Path, sample_rate: int):
    """A FluidSynth synthesizer with ``soundfont`` loaded, reverb and chorus off; returns ``(synth, id)``."""
    try:
        import fluidsynth
    except ImportError as error:  # pyfluidsynth missing, or present without the FluidSynth library it loads
        raise InputError(f"NotesDataModule renders notes with FluidSynth, which cannot be loaded ({error})", None,
                         "pip install pyfluidsynth==1.4.0 and install the FluidSynth library: "
                         "apt-get install libfluidsynth3, or brew install fluid-synth") from error
    if not soundfont.is_file():
        raise InputError(f"SoundFont not found: {soundfont}", "NotesDataModule soundfont")
    synth = fluidsynth.Synth(gain=GAIN, samplerate=float(sample_rate),
                             **{"synth.reverb.active": 0, "synth.chorus.active": 0})
    soundfont_id = synth.sfload(str(soundfont))
    if soundfont_id < 0:
        synth.delete()
        raise InputError(f"{soundfont}: FluidSynth cannot load this file as a SoundFont", "NotesDataModule soundfont")
    return synth, soundfont_id


def render_notes(soundfont: Path, notes: list[tuple[int, int, int]], sample_rate: int, length: int) -> np.ndarray:
    """``(program, pitch, velocity)`` notes -> ``int16 N,T`` mono clips; a note the SoundFont plays as
    silence (a program or key it has no sample for) raises, naming both."""
    synth, soundfont_id = load_synthesizer(soundfont, sample_rate)
    hold = min(length, round(NOTE_SECONDS * sample_rate))
    fade = np.linspace(1.0, 0.0, max(1, round(FADE_SECONDS * sample_rate)), dtype=np.float32)
    clips = np.empty((len(notes), length), dtype=np.int16)
    try:
        program = None
        for index, (wanted, pitch, velocity) in enumerate(notes):
            if wanted != program:
                synth.program_select(0, soundfont_id, 0, wanted)
                program = wanted
            synth.noteon(0, pitch, velocity)
            held = synth.get_samples(hold)
            synth.noteoff(0, pitch)
            released = synth.get_samples(length - hold) if length > hold else held[:0]
            synth.all_sounds_off(0)  # cuts the release tail, so the next note starts from silence
            synth.get_samples(64)
            stereo = np.concatenate([held, released]).reshape(-1, 2).astype(np.float32)
            mono = stereo.mean(axis=1)
            mono[-len(fade):] *= fade
            if np.abs(mono).max() < 32:  # below -60 dBFS: nothing was played
                raise InputError(f"{soundfont}: program {wanted} plays nothing at MIDI key {pitch} (no sample "
                                 "covers it)", "NotesDataModule instruments", "choose other instruments or pitches")
            clips[index] = np.round(mono).astype(np.int16)
    finally:
        synth.delete()
    return clips


class NotesDataModule(RenderedDataModule):
    """Sampled General MIDI instruments, note by note, with captions and held-out (instrument, octave) pairs.

    Args:
        modalities: which of ``audio``, ``text``, ``label`` each batch carries.
        instruments: keep only these names of ``INSTRUMENT_NAMES`` (``label`` stays the family index
            in ``FAMILIES``); by default all 22.
        sample_rate: audio samples per second: 8000 or 16000.
        audio_seconds: clip length in seconds (> ``NOTE_SECONDS`` keeps the release).
        split_fractions: train, val and test shares of the notes not held out (train > 0).
        soundfont: a General MIDI ``.sf2`` file; by default pretty-midi's ``TimGM6mb.sf2``.
        cache_dir: where renders are cached; by default ``$MMGEN_CACHE/data`` (``~/.cache/mmgen_lightning/data``).
        batch_size: samples per batch and per process.
        num_workers: ``DataLoader`` worker processes; 0 is fastest here, as every split is in memory.
        seed: seeds the split and the caption wordings (>= 0).
        max_text_length: padded caption length, ``[BOS]`` and ``[EOS]`` included.
        tokenizer_path: a local ``tokenizer.json`` to use instead of training one on the captions; a
            caption it cannot read (unknown words, too long) is refused.
    """

    available_modalities = ("audio", "text", "label")
    name = "notes"

    def __init__(self, modalities: list[str] | None = None, instruments: list[str] | None = None,
                 sample_rate: int = 16000, audio_seconds: float = 1.0,
                 split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), soundfont: str | None = None,
                 cache_dir: str | None = None, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 max_text_length: int = 16, tokenizer_path: str | None = None) -> None:
        super().__init__(["audio", "text"] if modalities is None else modalities, batch_size=batch_size,
                         num_workers=num_workers, seed=seed, max_text_length=max_text_length,
                         tokenizer_path=tokenizer_path)
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate: {sample_rate} is not supported; allowed: {', '.join(map(str, SAMPLE_RATES))}")
        if not audio_seconds > 0:
            raise ValueError(f"audio_seconds must be > 0, got {audio_seconds}")
        names = list(INSTRUMENT_NAMES) if instruments is None else list(instruments)
        unknown = [name for name in names if name not in INSTRUMENT_NAMES]
        if unknown or not names:
            raise ValueError(f"instruments: unknown {unknown[0]!r}; allowed: {', '.join(INSTRUMENT_NAMES)}" if unknown
                             else "instruments: give at least one")
        self.instruments = tuple(INSTRUMENT_NAMES.index(name) for name in INSTRUMENT_NAMES if name in names)
        self.sample_rate, self.audio_length = sample_rate, max(1, round(sample_rate * audio_seconds))
        self.split_fractions = check_fractions(split_fractions)
        self.soundfont = Path(soundfont) if soundfont else default_soundfont()
        if not self.soundfont.is_file():
            raise InputError(f"SoundFont not found: {self.soundfont}", "NotesDataModule soundfont")
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "data"
        #: every note as ``(instrument, pitch, loudness)``, instrument-major
        self.notes = [(instrument, pitch, loudness) for instrument in self.instruments for pitch in PITCHES
                      for loudness in range(len(LOUDNESS))]
        self.split_of = self._assign_splits()
        self.attribute_reading = AttributeReading(judged={"audio": ATTRIBUTE_NAMES}, parse_caption=parse_caption)

    def _assign_splits(self) -> np.ndarray:
        """Per note, its index in ``RENDERED_SPLITS``: held-out pairs 3, the others by a seeded permutation."""
        held = [(INSTRUMENT_NAMES[i], note_name(p)[0]) in HELDOUT for i, p, _ in self.notes]
        split_of = np.full(len(self.notes), RENDERED_SPLITS.index("heldout"), dtype=np.int64)
        rest = np.flatnonzero(~np.array(held))
        split_of[rest] = split_by_permutation(len(rest), self.split_fractions, self.seed)
        return split_of

    def templates(self) -> np.ndarray:
        """The wording (index in ``TEMPLATES``) of every note, drawn from ``(seed, note)``."""
        return np.array([np.random.default_rng([self.seed, i, p, l]).integers(len(TEMPLATES)) for i, p, l in self.notes])

    # --- the source ---------------------------------------------------------------------------
    def caption_corpus(self) -> list[str]:
        """Every caption of every note in every wording (a closed vocabulary)."""
        return [caption(i, p, l, t) for i, p, l in self.notes for t in range(len(TEMPLATES))]

    @functools.cached_property
    def soundfont_digest(self) -> str:
        return hashlib.sha256(self.soundfont.read_bytes()).hexdigest()[:12]

    def cache_path(self) -> Path:
        """The render's file: its name hashes the SoundFont's bytes and everything the clips depend on."""
        settings = (self.sample_rate, self.audio_length, NOTE_SECONDS, GAIN, FADE_SECONDS, VELOCITIES,
                    [(INSTRUMENTS[i][1], p, l) for i, p, l in self.notes])
        digest = hashlib.sha256(repr(settings).encode()).hexdigest()[:12]
        return self.cache_dir / f"notes-{self.soundfont.stem}-{self.soundfont_digest}-{self.sample_rate}hz-{digest}.npz"

    def clips(self) -> np.ndarray:
        """``int16 N,T`` of every note, rendered once and cached."""
        if not hasattr(self, "_clips"):
            notes = [(INSTRUMENTS[i][1], p, VELOCITIES[l]) for i, p, l in self.notes]
            render = lambda: {"audio": render_notes(self.soundfont, notes, self.sample_rate, self.audio_length)}  # noqa: E731
            self._clips = load_or_render(self.cache_path(), render)["audio"]
        return self._clips

    def build_split(self, split: str) -> Dataset:
        indices = np.flatnonzero(self.split_of == RENDERED_SPLITS.index(split))
        chosen = np.array(self.notes, dtype=np.int64).reshape(-1, 3)[indices]
        instrument, pitch, loudness = chosen.T
        family = np.array([INSTRUMENTS[i][2] for i in instrument], dtype=np.int64)
        tensors = {"attributes": torch.from_numpy(np.stack([family, instrument, pitch - PITCHES[0], loudness], axis=1))}
        if "audio" in self.modalities:
            tensors["audio"] = torch.from_numpy(self.clips()[indices])
        if "text" in self.modalities:
            wording = self.templates()[indices]
            captions = [caption(int(i), int(p), int(l), int(t)) for (i, p, l), t in zip(chosen, wording)]
            names = [f"note {INSTRUMENT_NAMES[i]} {p} {LOUDNESS[l]}" for i, p, l in chosen]
            check_readable(captions, names, self.tokenizer, self.tokenizer_path or "the tokenizer trained on the captions")
            tensors.update(self.tokenizer.encode(captions))
        if "label" in self.modalities:
            tensors["label"] = torch.from_numpy(family)
        return RenderedItems(tensors)

    def source_spec(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate, "audio_length": self.audio_length, "num_classes": len(FAMILIES),
                "attribute_names": list(ATTRIBUTE_NAMES),
                "attribute_sizes": [len(FAMILIES), len(INSTRUMENTS), len(PITCHES), len(LOUDNESS)]}


__all__ = ["ATTRIBUTE_NAMES", "FAMILIES", "HELDOUT", "INSTRUMENTS", "INSTRUMENT_NAMES", "LOUDNESS", "NotesDataModule",
           "PITCHES", "TEMPLATES", "caption", "note_name", "parse_caption", "render_notes"]
