"""Real files on disk for manifest tests and benchmarks: PNG images, WAV tones, GIF clips and captions.

Row ``i`` has label ``i % 4``: a square of colour ``COLORS[label]`` (its image has a grey corner of
its own, so every row's image differs), a tone of ``(label + 1) * 400`` Hz,
a GIF of the square moving right, and the caption "a <colour> square" (three tokens for every row,
so every batch has the same number of caption tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

COLORS = ("red", "green", "blue", "yellow")
RGB = ((230, 30, 30), (30, 200, 30), (40, 60, 230), (230, 220, 30))
#: options that size a ManifestDataModule to the corpus
DATA_OPTIONS = {"image_size": 16, "sample_rate": 8000, "audio_seconds": 0.25, "num_frames": 4,
                "max_text_length": 6}


def square(label: int, offset: int = 0, size: int = 20, mark: int = 0) -> Image.Image:
    """The square of ``label``, ``offset`` pixels right, with a grey corner of level ``mark`` (tells rows apart)."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[5:13, 2 + offset:10 + offset] = RGB[label]
    pixels[16:, 16:] = mark
    return Image.fromarray(pixels)


def write_corpus(folder: Path, rows: int, audio_rates: tuple[int, ...] = (8000, 11025)) -> Path:
    """Write ``rows`` samples under ``folder/files`` and ``folder/manifest.jsonl``; returns the manifest."""
    files = folder / "files"
    files.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(rows):
        label = index % 4
        square(label, mark=(index * 7) % 256).save(files / f"{index}.png")
        frames = [square(label, offset) for offset in (0, 3, 6, 9)]
        frames[0].save(files / f"{index}.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
        rate = audio_rates[index % len(audio_rates)]
        t = np.arange(int(0.3 * rate)) / rate
        soundfile.write(files / f"{index}.wav", (0.5 * np.sin(2 * np.pi * (label + 1) * 400 * t)).astype(np.float32),
                        rate, subtype="PCM_16")
        lines.append({"image": f"files/{index}.png", "audio": f"files/{index}.wav", "video": f"files/{index}.gif",
                      "caption": f"a {COLORS[label]} square", "label": label})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest
