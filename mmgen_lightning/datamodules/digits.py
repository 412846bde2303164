"""Digits: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, no download).

Each item is one real image and renders it as

* ``image`` ``1,S,S``: the scan, ink 0..16 scaled to [-1, 1] (background -1), upsampled bilinearly;
* ``video`` ``F,1,V,V``: that image sliding across a ``V x V`` black canvas, edge to edge, in the
  item's direction (up, down, left, right), at a random offset across the motion;
* ``text``: a caption from ``TEMPLATES`` naming the digit in a word or a numeral, and, when the
  batches carry video, its direction ("the digit 7 going up");
* ``audio`` ``T``: the digit's DTMF dual tone (``DTMF_FREQUENCIES``) with random length, onset,
  phases, amplitudes and additive Gaussian noise;
* ``label``: the digit.

``attributes`` are ``[digit, direction]``. The 1,797 images are cut into train/val/test by a seeded
permutation, so no image is in two splits; every random choice of an item comes from
``(seed, split, index)``, and each split is rendered once, as tensors, in ``build_split``.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor
from torch.utils.data import Dataset

from mmgen_lightning.datamodules.attributes import AttributeReading
from mmgen_lightning.datamodules.base import SPLITS, MultimodalDataModule

ATTRIBUTE_NAMES = ("digit", "direction")
DIRECTIONS = ("up", "down", "left", "right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: (row, column) tone pair of each digit on a telephone keypad, in Hz
DTMF_FREQUENCIES: dict[int, tuple[int, int]] = {
    1: (697, 1209), 2: (697, 1336), 3: (697, 1477),
    4: (770, 1209), 5: (770, 1336), 6: (770, 1477),
    7: (852, 1209), 8: (852, 1336), 9: (852, 1477),
    0: (941, 1336),
}
#: ``{a}`` is "a"/"an" for the number as spoken, ``{number}`` is a word or a numeral
TEMPLATES = (
    "a handwritten {number}",
    "the digit {number}",
    "number {number}",
    "a picture of the number {number}",
    "handwritten digit {number}",
    "{a} {number}",
)
MOTION_PHRASES = ("moving {direction}", "going {direction}", "that moves {direction}", "heading {direction}")
MOTION_VERBS = ("moving", "going", "moves", "heading")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

_WORD = re.compile(r"[a-z]+|[0-9]+")


def caption(digit: int, direction: int | None = None, template: int = 0, numeral: bool = False,
            motion_phrase: int = 0) -> str:
    """The caption of ``digit`` (and of ``direction``, an index in ``DIRECTIONS``, when given)."""
    number = str(digit) if numeral else NUMBER_WORDS[digit]
    text = TEMPLATES[template].format(number=number, a="an" if digit == 8 else "a")
    if direction is not None:
        text += " " + MOTION_PHRASES[motion_phrase].format(direction=DIRECTIONS[direction])
    return text


def parse_caption(text: str) -> dict[str, int] | None:
    """``{"digit": d}``, plus ``"direction": k`` when the caption states one; ``None`` when the caption
    names no digit, or two different ones."""
    words = _WORD.findall(text.lower())
    digits = {int(w) if w.isdigit() else NUMBER_WORDS.index(w) for w in words
              if (w.isdigit() and int(w) < 10) or w in NUMBER_WORDS}
    directions = {DIRECTIONS.index(w) for before, w in zip([""] + words, words)
                  if w in DIRECTIONS and before in MOTION_VERBS}
    if len(digits) != 1 or len(directions) > 1:
        return None
    parsed = {"digit": digits.pop()}
    if directions:
        parsed["direction"] = directions.pop()
    return parsed


def dtmf_tone(digit: int, rng: np.random.Generator, sample_rate: int, length: int) -> np.ndarray:
    """``T`` float32 in [-1, 1]: the key's two tones, 0.3-0.9 of the clip long at a random onset, with
    random phases and amplitudes, plus Gaussian noise."""
    duration = int(rng.uniform(0.3, 0.9) * length)
    onset = int(rng.integers(0, length - duration + 1))
    phases = rng.uniform(0, 2 * np.pi, 2)
    amplitudes = rng.uniform(0.25, 0.45, 2)
    noise = rng.uniform(0.005, 0.03)
    cycles = np.asarray(DTMF_FREQUENCIES[digit], dtype=np.float64)[:, None] * np.arange(duration) / sample_rate
    # wrapped to one turn in float64 first, so the float32 (SIMD) sine keeps its precision
    angles = (2 * np.pi * (cycles - np.floor(cycles)) + phases[:, None]).astype(np.float32)
    note = amplitudes.astype(np.float32) @ np.sin(angles)
    edge = np.clip(np.minimum(np.arange(duration), np.arange(duration)[::-1]) / (0.005 * sample_rate), 0, 1)
    audio = np.float32(noise) * rng.standard_normal(length, dtype=np.float32)
    audio[onset:onset + duration] += note * edge.astype(np.float32)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def slide(images: Tensor, directions: np.ndarray, offsets: np.ndarray, num_frames: int, canvas: int) -> Tensor:
    """``N,1,S,S`` images -> ``N,F,1,canvas,canvas`` videos on -1, each image moving edge to edge in
    its direction (index in ``DIRECTIONS``), ``offsets`` pixels from the top/left across the motion."""
    count, _, size, _ = images.shape
    travel = np.rint(np.linspace(0, canvas - size, num_frames)).astype(np.int64)  # F
    forward = np.isin(directions, (1, 3))[:, None]  # down and right move away from the top/left
    along = np.where(forward, travel[None, :], travel[None, ::-1])  # N,F
    across = np.broadcast_to(offsets[:, None], along.shape)
    vertical = (directions < 2)[:, None]
    rows, cols = np.where(vertical, along, across), np.where(vertical, across, along)
    pixels = np.arange(size)
    # one scatter for every pixel of every frame: index arrays broadcast to N,F,S,S
    videos = np.full((count, num_frames, canvas, canvas), -1.0, dtype=np.float32)
    videos[np.arange(count)[:, None, None, None], np.arange(num_frames)[None, :, None, None],
           rows[:, :, None, None] + pixels[None, None, :, None],
           cols[:, :, None, None] + pixels[None, None, None, :]] = images[:, None, 0].numpy()
    return torch.from_numpy(videos)[:, :, None]


@functools.cache
def load_scans() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scans ``N,8,8`` (ink 0..16, float32) and their digits ``N`` (int64), loaded once."""
    data = load_digits()
    images, targets = data.images.astype(np.float32), data.target.astype(np.int64)
    images.flags.writeable = targets.flags.writeable = False
    return images, targets


class TensorItems(Dataset):
    """Items ``{key: tensors[key][index]}`` of per-split tensors with a shared first dimension."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.tensors = tensors
        self.size = next(iter(tensors.values())).shape[0]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}


class DigitsDataModule(MultimodalDataModule):
    """Real handwritten digits with captions, DTMF audio and moving-digit videos.

    Args:
        modalities: which of ``image``, ``text``, ``audio``, ``video``, ``label`` each batch carries.
        image_size: side of the upsampled images in pixels: 16 or 32.
        split_fractions: train, val and test shares of the 1,797 images (positive, summing to 1).
        sample_rate: audio samples per second: 8000 or 16000.
        audio_seconds: length of each audio clip in seconds (> 0).
        num_frames: frames per video (>= 2).
        video_canvas: side of the video frames in pixels, larger than ``image_size``: 32 or 64.
        batch_size: samples per batch and per process.
        num_workers: ``DataLoader`` worker processes; 0 is fastest here, as every split is precomputed.
        seed: seeds the split and the data (>= 0); every split derives its own stream from it.
        max_text_length: padded caption length, ``[BOS]`` and ``[EOS]`` included.
        tokenizer_path: a local ``tokenizer.json`` to use instead of training one on the captions.
    """

    available_modalities = ("image", "text", "audio", "video", "label")
    name = "digits"
    #: what each modality shows of ``[digit, direction]``: a still image or a tone only the digit; captions
    #: state the direction only when the batches carry video (see ``build_split``)
    attribute_reading = AttributeReading(
        judged={"image": ("digit",), "audio": ("digit",), "video": ("digit", "direction")},
        parse_caption=parse_caption,
        caption_states=lambda modalities: ATTRIBUTE_NAMES if "video" in modalities else ATTRIBUTE_NAMES[:1])
    image_sizes = (16, 32)
    video_canvases = (32, 64)
    sample_rates = (8000, 16000)

    def __init__(self, modalities: list[str] | None = None, image_size: int = 16,
                 split_fractions: tuple[float, float, float] = SPLIT_FRACTIONS, sample_rate: int = 8000,
                 audio_seconds: float = 1.0, num_frames: int = 8, video_canvas: int = 32, batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0, max_text_length: int = 24,
                 tokenizer_path: str | None = None) -> None:
        super().__init__(["image", "text"] if modalities is None else modalities, batch_size=batch_size,
                         num_workers=num_workers, seed=seed, max_text_length=max_text_length,
                         tokenizer_path=tokenizer_path)
        if image_size not in self.image_sizes:
            raise ValueError(f"image_size: {image_size} is not supported; allowed: "
                             f"{', '.join(map(str, self.image_sizes))}")
        fractions = tuple(split_fractions)
        if len(fractions) != 3 or any(not f > 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"split_fractions: give 3 positive numbers (train, val, test) summing to 1, "
                             f"got {split_fractions}")
        if sample_rate not in self.sample_rates:
            raise ValueError(f"sample_rate: {sample_rate} is not supported; allowed: "
                             f"{', '.join(map(str, self.sample_rates))}")
        if not audio_seconds > 0:
            raise ValueError(f"audio_seconds must be > 0, got {audio_seconds}")
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 (a video must move), got {num_frames}")
        if video_canvas not in self.video_canvases or video_canvas <= image_size:
            raise ValueError(f"video_canvas: {video_canvas} is not supported with image_size {image_size}; "
                             f"allowed: {', '.join(str(c) for c in self.video_canvases if c > image_size)}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.image_size, self.split_fractions = image_size, fractions
        self.sample_rate, self.audio_length = sample_rate, max(1, round(sample_rate * audio_seconds))
        self.num_frames, self.video_canvas = num_frames, video_canvas

    # --- the source ---------------------------------------------------------------------------
    def split_indices(self, split: str) -> np.ndarray:
        """Indices into ``load_scans()`` of ``split``: a seeded permutation cut by ``split_fractions``."""
        count = len(load_scans()[1])
        order = np.random.default_rng(self.seed).permutation(count)
        cuts = np.rint(np.cumsum(self.split_fractions) * count).astype(int)
        parts = np.split(order, cuts[:2])
        for name, part in zip(SPLITS, parts):
            if len(part) == 0:
                raise ValueError(f"split_fractions: {self.split_fractions} leaves the {name} split empty")
        return parts[SPLITS.index(split)]

    def caption_corpus(self) -> list[str]:
        """Every caption of every digit, with and without a direction (one vocabulary for all modalities)."""
        return [caption(digit, direction, template, numeral, phrase)
                for digit in range(10) for template in range(len(TEMPLATES)) for numeral in (False, True)
                for direction, phrase in [(None, 0)] + [(d, p) for d in range(len(DIRECTIONS))
                                                         for p in range(len(MOTION_PHRASES))]]

    def build_split(self, split: str) -> Dataset:
        images, targets = load_scans()
        indices = self.split_indices(split)
        split_id = SPLITS.index(split)
        digits = targets[indices]
        count = len(indices)
        rngs = [np.random.default_rng([self.seed, split_id, index]) for index in range(count)]
        # per item, in a fixed order: direction, offset across the motion, caption wording, then audio
        directions = np.array([rng.integers(len(DIRECTIONS)) for rng in rngs])
        offsets = np.array([rng.integers(0, self.video_canvas - self.image_size + 1) for rng in rngs])
        wording = [(int(rng.integers(len(TEMPLATES))), bool(rng.integers(2)), int(rng.integers(len(MOTION_PHRASES))))
                   for rng in rngs]

        tensors = {"attributes": torch.from_numpy(np.stack([digits, directions], axis=1)).long()}
        if "image" in self.modalities or "video" in self.modalities:
            scans = torch.from_numpy(images[indices])[:, None] / 8.0 - 1.0
            upsampled = F.interpolate(scans, size=self.image_size, mode="bilinear", align_corners=False)
            upsampled = upsampled.clamp(-1.0, 1.0).contiguous()
            if "image" in self.modalities:
                tensors["image"] = upsampled
            if "video" in self.modalities:
                tensors["video"] = slide(upsampled, directions, offsets, self.num_frames, self.video_canvas)
        if "text" in self.modalities:
            with_motion = "video" in self.modalities
            captions = [caption(int(d), int(k) if with_motion else None, *words)
                        for d, k, words in zip(digits, directions, wording)]
            tensors.update(self.tokenizer.encode(captions))
        if "audio" in self.modalities:
            tensors["audio"] = torch.from_numpy(np.stack(
                [dtmf_tone(int(d), rng, self.sample_rate, self.audio_length) for d, rng in zip(digits, rngs)]))
        if "label" in self.modalities:
            tensors["label"] = torch.from_numpy(digits).long()
        return TensorItems(tensors)

    def source_spec(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "image_channels": 1, "video_size": self.video_canvas,
                "sample_rate": self.sample_rate, "audio_length": self.audio_length, "num_frames": self.num_frames,
                "num_classes": 10, "attribute_names": list(ATTRIBUTE_NAMES),
                "attribute_sizes": [10, len(DIRECTIONS)]}
