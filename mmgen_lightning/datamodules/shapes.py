"""Shapes: a procedural source whose five attributes are rendered in every modality.

Each item draws ``shape, color, size, position, motion`` from its own generator and renders

* ``image``  ``3,H,W``: the shape, anti-aliased from its signed distance, on black (-1);
* ``video``  ``F,3,H,W``: the same scene, the shape moving ``MOTION_TRAVEL`` of the canvas in the
  motion direction over the clip; ``image`` is its frame 0;
* ``text``: a caption from ``TEMPLATES`` stating all five attributes with varied wording;
* ``audio`` ``T``: a note whose waveform is the shape (circle sine, square square, triangle triangle,
  diamond sawtooth, band-limited), whose pitch is the color (``NOTES_HZ``), whose length is the size
  (``NOTE_LENGTHS`` of the clip), with an amplitude tremolo at ``TREMOLO_HZ[position]`` and a pitch
  contour for the motion: up glides one semitone below the note to one above, down the reverse,
  left holds the note, right adds a 6 Hz vibrato of half a semitone;
* ``label``: the shape index.

Nothing is read from disk, and every item is a pure function of ``(seed, split, index)``.
"""

from __future__ import annotations

import functools
import itertools
import re
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmgen_lightning.datamodules.attributes import AttributeReading
from mmgen_lightning.datamodules.base import SPLITS, MultimodalDataModule
from mmgen_lightning.tokenizer import CaptionTokenizer

ATTRIBUTE_NAMES = ("shape", "color", "size", "position", "motion")
SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = ("red", "green", "blue", "yellow", "purple", "cyan")
SIZES = ("small", "large")
POSITIONS = ("center", "left", "right", "top", "bottom")
MOTIONS = ("up", "down", "left", "right")
ATTRIBUTE_SIZES = (len(SHAPES), len(COLORS), len(SIZES), len(POSITIONS), len(MOTIONS))

#: RGB in [0, 1], one row per color
COLOR_RGB = np.array([[1.0, 0.1, 0.1], [0.1, 0.85, 0.1], [0.15, 0.35, 1.0],
                      [1.0, 0.95, 0.1], [0.65, 0.2, 0.95], [0.1, 0.95, 0.95]], dtype=np.float32)
#: shape centre (x, y) in canvas units, y down
POSITION_XY = np.array([[0.5, 0.5], [0.3, 0.5], [0.7, 0.5], [0.5, 0.3], [0.5, 0.7]])
#: unit step (x, y) per motion, y down
MOTION_XY = np.array([[0.0, -1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
#: "radius" per size in canvas units (each shape scales it to a similar area)
SIZE_RADIUS = (0.12, 0.21)
#: distance the shape travels over a video, in canvas units
MOTION_TRAVEL = 0.3

#: four semitones apart from A3, so notes stay apart under the +-1 semitone motion contours
NOTES_HZ = tuple(220.0 * 2 ** (4 * k / 12) for k in range(len(COLORS)))
NOTE_LENGTHS = (0.35, 0.8)
TREMOLO_HZ = (0.0, 4.0, 8.0, 12.0, 16.0)
WAVEFORMS = ("sine", "square", "triangle", "sawtooth")  # one per shape
MAX_HARMONICS = 12

# --- captions ---------------------------------------------------------------------------------
SIZE_WORDS = (("small", "little", "tiny"), ("large", "big"))
POSITION_PHRASES = (("in the center", "in the middle"), ("on the left",), ("on the right",),
                    ("at the top",), ("at the bottom",))
TEMPLATES = (
    "a {size} {color} {shape} {position} moving {motion}",
    "there is a {size} {color} {shape} {position} that moves {motion}",
    "{size} {color} {shape} {position}, heading {motion}",
    "a {size} {shape} in {color} {position}, drifting {motion}",
    "the {color} {shape} is {size} and sits {position}, going {motion}",
)
MOTION_VERBS = ("moving", "moves", "heading", "drifting", "going")

_SIZE_OF_WORD = {word: size for size, words in enumerate(SIZE_WORDS) for word in words}
_WORD = re.compile(r"[a-z]+")
_TOKEN = re.compile(r"\w+|[^\w\s]+")


def caption(attributes: tuple[int, ...] | Tensor, template: int = 0, size_word: int = 0,
            position_phrase: int = 0) -> str:
    """The caption of ``attributes`` (indices in ``ATTRIBUTE_NAMES`` order); the other arguments pick
    the wording and wrap around their number of choices."""
    shape, color, size, position, motion = (int(a) for a in attributes)
    sizes, phrases = SIZE_WORDS[size], POSITION_PHRASES[position]
    return TEMPLATES[template % len(TEMPLATES)].format(
        shape=SHAPES[shape], color=COLORS[color], size=sizes[size_word % len(sizes)],
        position=phrases[position_phrase % len(phrases)], motion=MOTIONS[motion])


@functools.cache
def _corpus() -> tuple[str, ...]:
    """Every caption the grammar produces: each scene in each template with each synonym."""
    captions = []
    for attributes in itertools.product(*(range(n) for n in ATTRIBUTE_SIZES)):
        size, position = attributes[2], attributes[3]
        for template, word, phrase in itertools.product(range(len(TEMPLATES)), range(len(SIZE_WORDS[size])),
                                                        range(len(POSITION_PHRASES[position]))):
            captions.append(caption(attributes, template, word, phrase))
    return tuple(captions)


@functools.cache
def _longest_caption() -> int:
    """Tokens in the longest caption, punctuation counted as the tokenizer's pre-tokenizer does."""
    return max(len(_TOKEN.findall(c)) for c in _corpus())


def parse_caption(text: str) -> dict[str, int] | None:
    """Recover ``{shape, color, size, position, motion}`` (indices) from a caption of this grammar.

    Every caption of the grammar states all five. Other text (a model's caption) gets the attributes
    it states once, or with one value: unstated or contradicted ones are left out, as metrics read
    them as "not said"; ``None`` when it states none.

    "left"/"right" are a position after "the" ("on the left") and a motion after a motion verb
    ("moving left"); "up"/"down" are only motions and "top"/"bottom"/"center"/"middle" only positions.
    """
    words = _WORD.findall(text.lower())
    found: dict[str, set[int]] = {name: set() for name in ATTRIBUTE_NAMES}
    for i, word in enumerate(words):
        before = words[i - 1] if i else ""
        if word in SHAPES:
            found["shape"].add(SHAPES.index(word))
        elif word in COLORS:
            found["color"].add(COLORS.index(word))
        elif word in _SIZE_OF_WORD:
            found["size"].add(_SIZE_OF_WORD[word])
        elif word in ("center", "middle"):
            found["position"].add(0)
        elif word in ("top", "bottom"):
            found["position"].add(POSITIONS.index(word))
        elif word in MOTIONS and before in MOTION_VERBS:
            found["motion"].add(MOTIONS.index(word))
        elif word in ("left", "right") and before == "the":
            found["position"].add(POSITIONS.index(word))
    parsed = {name: values.pop() for name, values in found.items() if len(values) == 1}
    return parsed or None


# --- rendering --------------------------------------------------------------------------------
def _signed_distance(shape: int, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (canvas units, negative inside) of a shape centred at the origin; y down."""
    if shape == 0:  # circle
        return np.hypot(x, y) - radius
    if shape == 1:  # axis-aligned square, half side 0.87 r (area close to the circle's)
        qx, qy = np.abs(x) - 0.87 * radius, np.abs(y) - 0.87 * radius
        outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
        return outside + np.minimum(np.maximum(qx, qy), 0.0)
    if shape == 2:  # equilateral triangle pointing up, half side 1.3 r (Quilez's exact 2D SDF)
        half, k = 1.3 * radius, np.sqrt(3.0)
        px, py = np.abs(x) - half, -y + half / k
        fold = px + k * py > 0
        px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
        px = px - np.clip(px, -2 * half, 0.0)
        return -np.hypot(px, py) * np.sign(py)
    # diamond: the square rotated 45 degrees, half diagonal 1.15 r
    return (np.abs(x) + np.abs(y) - 1.15 * radius) / np.sqrt(2.0)


def render_frames(shape: int, color: np.ndarray, radius: float, centres: np.ndarray, size: int) -> np.ndarray:
    """``F,3,size,size`` float32 in [-1, 1]: the shape at each centre (``F,2`` canvas units) on black."""
    grid = (np.arange(size) + 0.5) / size
    x = grid[None, None, :] - centres[:, 0, None, None]
    y = grid[None, :, None] - centres[:, 1, None, None]
    # coverage of a pixel by the shape, from the distance of its centre to the edge in pixels
    coverage = np.clip(0.5 - _signed_distance(shape, x, y, radius) * size, 0.0, 1.0).astype(np.float32)
    return coverage[:, None] * (2 * color[None, :, None, None]) - 1.0


def harmonic_weights(waveform: str, count: int) -> np.ndarray:
    """Fourier sine-series weights of harmonics ``1..count`` of a unit ``waveform``."""
    n = np.arange(1, count + 1, dtype=np.float64)
    if waveform == "sine":
        weights = (n == 1).astype(np.float64)
    elif waveform == "square":
        weights = np.where(n % 2 == 1, 4 / (np.pi * n), 0.0)
    elif waveform == "triangle":
        weights = np.where(n % 2 == 1, 8 / np.pi**2 * (-1.0) ** ((n - 1) // 2) / n**2, 0.0)
    else:  # sawtooth
        weights = 2 / np.pi * (-1.0) ** (n + 1) / n
    return weights.astype(np.float32)


def render_audio(attributes: tuple[int, ...], sample_rate: int, length: int, onset: float, amplitude: float,
                 phase: float) -> np.ndarray:
    """``T`` float32 in [-1, 1]; see the module docstring for what each attribute does.

    ``onset`` (fraction of the clip) delays the note, ``amplitude`` scales it, ``phase`` (radians)
    starts its oscillator."""
    shape, color, size, position, motion = attributes
    t = np.arange(length, dtype=np.float32) / np.float32(sample_rate)
    seconds = length / sample_rate
    start, duration = onset * seconds, NOTE_LENGTHS[size] * seconds
    if motion < 2:  # up: glide from a semitone below the note to a semitone above; down: the reverse
        progress = np.clip((t - np.float32(start)) / np.float32(duration), 0.0, 1.0)
        semitones = 2 * progress - 1 if motion == 0 else 1 - 2 * progress
    elif motion == 2:  # left: a held note
        semitones = np.zeros_like(t)
    else:  # right: a 6 Hz vibrato of half a semitone
        semitones = 0.5 * np.sin(np.float32(2 * np.pi * 6.0) * t)
    frequency = np.float32(NOTES_HZ[color]) * np.exp(semitones * np.float32(np.log(2) / 12))
    cycles = np.cumsum(frequency, dtype=np.float64) / sample_rate
    angle = (2 * np.pi * (cycles - np.floor(cycles)) + phase).astype(np.float32)
    # band-limited: only harmonics below Nyquist, summed with sin(n x) = 2 cos(x) sin((n-1) x) - sin((n-2) x)
    count = 1 if WAVEFORMS[shape] == "sine" else max(1, min(MAX_HARMONICS, int(0.45 * sample_rate / frequency.max())))
    weights = harmonic_weights(WAVEFORMS[shape], count)
    sine, twice_cosine = np.sin(angle), 2 * np.cos(angle)
    previous, current = np.zeros_like(angle), sine
    wave = weights[0] * sine
    for weight in weights[1:]:
        previous, current = current, twice_cosine * current - previous
        if weight:
            wave += weight * current
    # raised-cosine 10 ms edges so the note starts and stops without clicks
    ramp = np.minimum(t - np.float32(start), np.float32(start + duration) - t) * np.float32(100.0)
    envelope = 0.5 - 0.5 * np.cos(np.float32(np.pi) * np.clip(ramp, 0.0, 1.0))
    rate = TREMOLO_HZ[position]
    if rate:
        envelope *= 1 - 0.35 * (1 - np.cos(np.float32(2 * np.pi * rate) * (t - np.float32(start))))
    return np.clip(np.float32(amplitude) * envelope * wave, -1.0, 1.0)


class ShapesDataset(Dataset):
    """``size`` items of one split, each rendered on access in the requested modalities."""

    def __init__(self, size: int, seed: int, split_id: int, modalities: list[str], image_size: int,
                 num_frames: int, sample_rate: int, audio_length: int, tokenizer: CaptionTokenizer | None) -> None:
        self.size, self.seed, self.split_id = size, seed, split_id
        self.modalities = set(modalities)
        self.image_size, self.num_frames = image_size, num_frames
        self.sample_rate, self.audio_length = sample_rate, audio_length
        self.tokenizer = tokenizer
        self._encoded: dict[str, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return self.size

    def encode(self, text: str) -> tuple[Tensor, Tensor]:
        """``(text, text_mask)`` of one caption, each ``L``; cached, since the grammar is finite."""
        if text not in self._encoded:
            encoded = self.tokenizer.encode(text)
            self._encoded[text] = (encoded["text"][0], encoded["text_mask"][0])
        return self._encoded[text]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        # one draw for every choice, whatever the modalities, so an item is the same scene in every configuration
        u = np.random.default_rng([self.seed, self.split_id, index]).random(15)
        chosen = (u[:5] * ATTRIBUTE_SIZES).astype(np.int64)
        attributes = tuple(chosen.tolist())
        shape, color, size, position, motion = attributes
        start = POSITION_XY[position] + 0.06 * (u[5:7] - 0.5)
        radius = SIZE_RADIUS[size] * (0.92 + 0.16 * u[7])
        tint = COLOR_RGB[color] * np.float32(0.85 + 0.15 * u[8])
        wording = (int(u[9] * len(TEMPLATES)), int(u[10] * len(SIZE_WORDS[size])),
                   int(u[11] * len(POSITION_PHRASES[position])))
        onset, amplitude, phase = 0.1 * u[12], 0.5 + 0.4 * u[13], 2 * np.pi * u[14]

        item = {"attributes": torch.from_numpy(chosen)}
        if "video" in self.modalities or "image" in self.modalities:
            frames = self.num_frames if "video" in self.modalities else 1
            steps = MOTION_TRAVEL * np.arange(frames) / (self.num_frames - 1)
            centres = start[None, :] + steps[:, None] * MOTION_XY[motion][None, :]
            video = torch.from_numpy(render_frames(shape, tint, radius, centres, self.image_size))
            if "video" in self.modalities:
                item["video"] = video
            if "image" in self.modalities:
                item["image"] = video[0].clone() if "video" in self.modalities else video[0]
        if "text" in self.modalities:
            text, text_mask = self.encode(caption(attributes, *wording))
            item["text"], item["text_mask"] = text.clone(), text_mask.clone()
        if "audio" in self.modalities:
            item["audio"] = torch.from_numpy(render_audio(attributes, self.sample_rate, self.audio_length,
                                                          onset, amplitude, phase))
        if "label" in self.modalities:
            item["label"] = torch.tensor(shape, dtype=torch.long)
        return item


class ShapesDataModule(MultimodalDataModule):
    """Procedural shapes with known attributes, rendered as image, caption, audio and video.

    Args:
        modalities: which of ``image``, ``text``, ``audio``, ``video``, ``label`` each batch carries.
        image_size: side of images and video frames in pixels: 16, 32, 64, 128 or 256.
        num_frames: frames per video (>= 2).
        sample_rate: audio samples per second: 8000 or 16000.
        audio_seconds: length of each audio clip in seconds (> 0).
        train_size: items in the training split (> 0).
        val_size: items in the validation split (> 0).
        test_size: items in the test split (> 0).
        batch_size: samples per batch and per process.
        num_workers: ``DataLoader`` worker processes.
        seed: seeds the data (>= 0); every split derives its own stream from it.
        max_text_length: padded caption length, ``[BOS]`` and ``[EOS]`` included.
        tokenizer_path: a local ``tokenizer.json`` to use instead of training one on the captions.
    """

    available_modalities = ("image", "text", "audio", "video", "label")
    name = "shapes"
    #: what each modality shows of ``[shape, color, size, position, motion]``; captions state all of it.
    #: Position is a fast tremolo in the audio, which a judge's 32 frames/s log-mel does not resolve,
    #: so audio does not count as showing it
    attribute_reading = AttributeReading(judged={"image": ("shape", "color", "size", "position"),
                                                 "audio": ("shape", "color", "size", "motion"),
                                                 "video": ("shape", "color", "size", "position", "motion")},
                                         parse_caption=parse_caption)
    image_sizes = (16, 32, 64, 128, 256)
    sample_rates = (8000, 16000)

    def __init__(self, modalities: list[str] | None = None, image_size: int = 32, num_frames: int = 8,
                 sample_rate: int = 8000, audio_seconds: float = 1.0, train_size: int = 10000,
                 val_size: int = 500, test_size: int = 500, batch_size: int = 64, num_workers: int = 0,
                 seed: int = 0, max_text_length: int = 24, tokenizer_path: str | None = None) -> None:
        super().__init__(["image", "text"] if modalities is None else modalities, batch_size=batch_size,
                         num_workers=num_workers, seed=seed, max_text_length=max_text_length,
                         tokenizer_path=tokenizer_path)
        if image_size not in self.image_sizes:
            raise ValueError(f"image_size: {image_size} is not supported; allowed: "
                             f"{', '.join(map(str, self.image_sizes))}")
        if sample_rate not in self.sample_rates:
            raise ValueError(f"sample_rate: {sample_rate} is not supported; allowed: "
                             f"{', '.join(map(str, self.sample_rates))}")
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 (a video must move), got {num_frames}")
        if not audio_seconds > 0:
            raise ValueError(f"audio_seconds must be > 0, got {audio_seconds}")
        for argument, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if value < 1:
                raise ValueError(f"{argument} must be >= 1, got {value}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if "text" in self.modalities and max_text_length < _longest_caption() + 2:
            raise ValueError(f"max_text_length: {max_text_length} would cut captions; Shapes captions need "
                             f">= {_longest_caption() + 2} tokens with [BOS] and [EOS]")
        self.image_size, self.num_frames = image_size, num_frames
        self.sample_rate, self.audio_length = sample_rate, max(1, round(sample_rate * audio_seconds))
        self.split_sizes = {"train": train_size, "val": val_size, "test": test_size}

    def caption_corpus(self) -> list[str]:
        """Every caption the grammar produces (the same whatever the modalities, so vocabularies match)."""
        return list(_corpus())

    def build_split(self, split: str) -> Dataset:
        tokenizer = self.tokenizer if "text" in self.modalities else None
        return ShapesDataset(self.split_sizes[split], self.seed, SPLITS.index(split), self.modalities,
                             self.image_size, self.num_frames, self.sample_rate, self.audio_length, tokenizer)

    def source_spec(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "image_channels": 3, "video_size": self.image_size,
                "sample_rate": self.sample_rate, "audio_length": self.audio_length, "num_frames": self.num_frames,
                "num_classes": len(SHAPES), "attribute_names": list(ATTRIBUTE_NAMES),
                "attribute_sizes": list(ATTRIBUTE_SIZES)}
