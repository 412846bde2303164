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
import soundfile
import torch
import torchaudio.functional as AF
from PIL import Image
from torch import Tensor

EXTENSIONS = {"image": ".png", "text": ".txt", "audio": ".wav", "video": ".gif", "label": ".txt"}


def _to_uint8(image: Tensor) -> np.ndarray:
    """``C,H,W`` in [-1, 1] -> ``H,W`` or ``H,W,3`` uint8."""
    array = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def save_image(image: Tensor, path: Path) -> None:
    Image.fromarray(_to_uint8(image)).save(path)


def save_video(video: Tensor, path: Path, fps: int = 8) -> None:
    frames = [Image.fromarray(_to_uint8(frame)) for frame in video]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)


def save_audio(audio: Tensor, path: Path, sample_rate: int) -> None:
    soundfile.write(str(path), audio.float().clamp(-1, 1).cpu().numpy(), sample_rate, subtype="PCM_16")


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
    path = Path(path)
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((image_size, image_size),
                                                                          Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32)
    except (OSError, ValueError) as error:
        raise ValueError(f"--image {path}: cannot read it as an image ({error})") from error
    tensor = torch.from_numpy(array / 127.5 - 1.0)
    return tensor[None] if channels == 1 else tensor.permute(2, 0, 1)


def load_audio(path: str | Path, sample_rate: int, length: int) -> Tensor:
    """A WAV/FLAC file -> mono ``T`` in [-1, 1], resampled and cut or zero-padded to ``length``."""
    path = Path(path)
    try:
        waveform, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise ValueError(f"--audio {path}: cannot read it as audio ({error})") from error
    audio = torch.from_numpy(waveform.mean(axis=1))
    if file_rate != sample_rate:
        audio = AF.resample(audio, file_rate, sample_rate)
    audio = audio[:length]
    return torch.nn.functional.pad(audio, (0, length - audio.shape[0])).clamp(-1, 1)
