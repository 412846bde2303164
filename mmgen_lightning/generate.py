"""Write generated tensors to files (``.png``, ``.txt``, ``.wav``, ``.gif``) and ``manifest.jsonl``.

Also reads the files a user gives as conditions (``--image``, ``--audio``) into batch-contract
tensors sized by the model's ``data_spec``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from mmgen_lightning.modalities import get_modality, to_uint8

EXTENSIONS = {"image": ".png", "text": ".txt", "audio": ".wav", "video": ".gif", "label": ".txt"}


def _to_uint8(image: Tensor) -> np.ndarray:
    """``C,H,W`` in [-1, 1] -> ``H,W`` or ``H,W,3`` uint8."""
    return to_uint8(image)


# the readers and writers live on the modality objects (``modalities.py``); these keep their names
def save_image(image: Tensor, path: Path) -> None:
    get_modality("image").write(image, path)


def save_video(video: Tensor, path: Path, fps: int = 8) -> None:
    get_modality("video").write(video, path, fps=fps)


def save_audio(audio: Tensor, path: Path, sample_rate: int) -> None:
    get_modality("audio").write(audio, path, {"sample_rate": sample_rate})


def write_samples(samples: dict[str, Tensor], to: str, out_dir: str | Path, conditions: Sequence[dict[str, Any]],
                  seed: int | None, texts: Sequence[str] | None = None, sample_rate: int | None = None,
                  start_index: int = 0) -> list[dict[str, Any]]:
    """Write one file per sample of modality ``to`` and append one manifest row per sample.

    ``conditions[i]`` is the JSON-able description of sample ``i``'s condition; ``texts`` are the
    decoded captions when ``to == "text"``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    values = samples[to]
    rows = []
    with open(out_dir / "manifest.jsonl", "a", encoding="utf-8") as manifest:
        for offset in range(values.shape[0]):
            index = start_index + offset
            name = f"{index:05d}_{to}{EXTENSIONS[to]}"
            row: dict[str, Any] = {"file": name, "to": to, "condition": conditions[offset], "seed": seed}
            if to == "image":
                save_image(values[offset], out_dir / name)
            elif to == "video":
                save_video(values[offset], out_dir / name)
            elif to == "audio":
                if sample_rate is None:
                    raise ValueError("write_samples: sample_rate is required to write audio")
                save_audio(values[offset], out_dir / name, sample_rate)
            elif to == "text":
                row["text"] = texts[offset]
                (out_dir / name).write_text(texts[offset] + "\n", encoding="utf-8")
            else:
                row["label"] = int(values[offset])
                (out_dir / name).write_text(f"{int(values[offset])}\n", encoding="utf-8")
            manifest.write(json.dumps(row) + "\n")
            rows.append(row)
    return rows


def load_image(path: str | Path, image_size: int, channels: int) -> Tensor:
    """An image file -> ``C,H,W`` in [-1, 1] at the model's size and channel count."""
    return get_modality("image").read(path, {"image_size": image_size, "image_channels": channels})


def load_audio(path: str | Path, sample_rate: int, length: int) -> Tensor:
    """A WAV/FLAC file -> mono ``T`` in [-1, 1], resampled and cut or zero-padded to ``length``."""
    return get_modality("audio").read(path, {"sample_rate": sample_rate, "audio_length": length})
