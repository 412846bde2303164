"""Draw docs/notes_spectrograms.png: for a few Notes captions, the real render's spectrogram above the one
the text -> audio recipe generated for the caption.

    python benchmarks/notes_figure.py [--config configs/flow/notes.yaml]

Reads the recipe's ``last.ckpt`` (train it with ``benchmarks/notes_quality.py``). Each column is one caption
(three of the test split, three of the held-out (instrument, octave) pairs, each a different family);
each spectrogram is the clip's STFT magnitude in dB, 0-4 kHz over its 1 s, with a dotted line at the asked
pitch's fundamental. Under the generated one: the pitch read by FFT (green within a semitone of the asked
one, red not) and the family the audio judge hears.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml
from notes_quality import whole_split
from PIL import Image, ImageDraw, ImageFont
from recipe_run import checkpoint_dir

from mmgen_lightning.datamodules.notes import FAMILIES, NOTE_NAMES, OCTAVES, PITCHES, caption
from mmgen_lightning.metrics.judges import get_judge
from mmgen_lightning.metrics.pitch import frequency_of_midi, pitch_within, read_pitch
from mmgen_lightning.metrics.report import load_datamodule
from mmgen_lightning.models.base import load_generator

ROOT = Path(__file__).resolve().parents[1]
#: (split, family) of each column: three families seen at that octave, three held-out pairs
COLUMNS = (("test", "string"), ("test", "brass"), ("test", "flute"),
           ("heldout", "keyboard"), ("heldout", "reed"), ("heldout", "synth lead"))
TOP_HZ, CELL = 4000, (220, 150)
FONT = ImageFont.load_default(size=13)
PAD, LINE = 6, 17
RIGHT, WRONG = (30, 150, 60), (200, 40, 40)


def spectrogram(audio: torch.Tensor, sample_rate: int) -> Image.Image:
    """``audio: T`` -> a ``CELL``-sized picture of its STFT in dB (60 dB range), low frequencies at the bottom."""
    stft = torch.stft(audio.float(), 1024, hop_length=128, window=torch.hann_window(1024), return_complex=True).abs()
    stft = stft[: round(TOP_HZ * 1024 / sample_rate)]
    decibels = 20 * torch.log10(stft + 1e-6)
    level = ((decibels - decibels.max() + 60) / 60).clamp(0, 1).flip(0).numpy()
    # a dark-to-bright ramp (black, purple, orange, pale yellow), like matplotlib's "magma"
    stops = np.array([[0, 0, 4], [120, 28, 109], [240, 96, 50], [252, 253, 191]], dtype=np.float32)
    positions = level * (len(stops) - 1)
    low = np.floor(positions).astype(int).clip(max=len(stops) - 2)
    colours = stops[low] + (positions - low)[..., None] * (stops[low + 1] - stops[low])
    return Image.fromarray(colours.astype(np.uint8)).resize(CELL, Image.BILINEAR)


def pitch_name(pitch: float) -> str:
    midi = int(round(pitch))
    octave = OCTAVES[(midi - PITCHES[0]) // 12] if PITCHES[0] <= midi <= PITCHES[-1] else f"MIDI {midi}"
    return f"{octave} {NOTE_NAMES[midi % 12]}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/flow/notes.yaml")
    parser.add_argument("--out", default="docs/notes_spectrograms.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load((ROOT / args.config).read_text())
    ckpt = ROOT / checkpoint_dir(config) / "last.ckpt"
    model = load_generator(ckpt).eval()
    datamodule = load_datamodule(ckpt, ROOT / args.config)
    judge, rate = get_judge(datamodule, "audio"), datamodule.sample_rate
    chosen = []
    for split, family in COLUMNS:
        batch = whole_split(datamodule, split)
        index = (batch["attributes"][:, 0] == FAMILIES.index(family)).nonzero()[0].item()
        chosen.append({key: value[index] for key, value in batch.items()})
    conditions = {key: torch.stack([item[key] for item in chosen]) for key in ("text", "text_mask")}
    with torch.no_grad():
        generated = model.generate(conditions, len(chosen), seed=0)["audio"]
    read = read_pitch(generated, rate)
    heard = judge.predict(generated)[:, 0].tolist()

    header = 3 * LINE + PAD
    width = PAD + 90 + len(chosen) * (CELL[0] + PAD)
    height = header + 2 * (CELL[1] + PAD) + 2 * LINE + PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, header + CELL[1] // 2), "real", fill="black", font=FONT)
    draw.text((PAD, header + CELL[1] + PAD + CELL[1] // 2), "generated", fill="black", font=FONT)
    for column, (item, (split, _)) in enumerate(zip(chosen, COLUMNS)):
        family, instrument, pitch, loudness = item["attributes"].tolist()
        left = PAD + 90 + column * (CELL[0] + PAD)
        words = caption(instrument, pitch + PITCHES[0], loudness)
        cut = words.rfind(" ", 0, len(words) // 2 + 6)
        draw.text((left, PAD), f"{split}:", fill="grey", font=FONT)
        draw.text((left, PAD + LINE), words[:cut], fill="black", font=FONT)
        draw.text((left, PAD + 2 * LINE), words[cut + 1:], fill="black", font=FONT)
        asked = pitch + PITCHES[0]
        row_of_fundamental = CELL[1] * (1 - float(frequency_of_midi(asked)) / TOP_HZ)
        for row, clip in enumerate((item["audio"], generated[column])):
            top = header + row * (CELL[1] + PAD)
            canvas.paste(spectrogram(clip, rate), (left, top))
            y = top + row_of_fundamental
            for x in range(left, left + CELL[0], 8):
                draw.line([(x, y), (x + 3, y)], fill="white")
        ok = bool(pitch_within(read[column:column + 1], torch.tensor([asked])).item())
        below = header + 2 * (CELL[1] + PAD)
        draw.text((left, below), f"pitch read: {pitch_name(read[column].item())}", fill=RIGHT if ok else WRONG, font=FONT)
        draw.text((left, below + LINE), f"judge hears: {FAMILIES[heard[column]]}",
                  fill=RIGHT if heard[column] == family else WRONG, font=FONT)
    out = ROOT / args.out
    canvas.save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
