"""Which skin tone an emoji image shows, read from OpenMoji's skin-tone palette.

OpenMoji fills skin with one colour per Fitzpatrick modifier (``TONE_COLOURS``, light to dark) and draws
hair darker than the skin it goes with (light skin: the medium-dark colour; medium skin: the dark one;
darker skin: black). So a pixel is counted for the tone whose colour it is nearest, when it is within
``radius`` (RGB, 0-255: the five colours are 62-79 apart, so a radius of 30 never counts a pixel twice);
a tone is *present* when it has at least ``share`` of the most-counted tone's pixels and ``min_pixels``
in all; and the skin is the **lightest** present tone (hair, a brown horse or a firefighter's coat may be
counted more, but are darker). No tone present reads as ``none`` (OpenMoji's yellow default).

Written from the real renders, not learned: on them it reads the one-tone emoji's tone right 0.976 of
the time in the training split and 0.985 in the held-out (figure, tone) split at 64 px, and finds both
tones of a two-person emoji of two tones 0.89 of the time (``python
benchmarks/emoji_quality.py`` prints this ceiling beside the samples'). A judge network trained on the
same renders read the held-out pairs' tone right only 0.71-0.74 of the time: it learns the figures'
tones, not the palette.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate

from mmgen_lightning.datamodules.rendered import RENDERED_SPLITS
from mmgen_lightning.metrics.evaluator import chunk_seed

#: OpenMoji 15-17's skin fills for the modifiers U+1F3FB..U+1F3FF (``TONES[1:6]`` of datamodules/emoji.py)
TONE_COLOURS = ((0xFA, 0xDC, 0xBC), (0xDE, 0xBB, 0x90), (0xC1, 0x9A, 0x65), (0xA5, 0x79, 0x39), (0x6A, 0x46, 0x2F))


@torch.no_grad()
def tone_counts(images: Tensor, radius: float = 30.0) -> Tensor:
    """``images: B,3,H,W`` in [-1, 1] -> ``B,5``: pixels nearest each tone colour, within ``radius``."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).reshape(images.shape[0], -1, 3)
    palette = torch.tensor(TONE_COLOURS, dtype=torch.float32, device=images.device)
    distance, nearest = torch.cdist(pixels, palette.expand(images.shape[0], -1, -1)).min(-1)
    counted = torch.where(distance < radius, nearest, -1)
    return torch.stack([(counted == k).sum(1) for k in range(len(TONE_COLOURS))], 1)


def present_tones(images: Tensor, share: float = 0.4, min_pixels: float = 0.004, radius: float = 30.0) -> Tensor:
    """``bool B,5``: the tones an image shows (at least ``share`` of the most-counted tone's pixels, and
    ``min_pixels`` of the image)."""
    counts = tone_counts(images, radius).float()
    least = torch.maximum(share * counts.max(1, keepdim=True).values,
                          torch.tensor(min_pixels * images.shape[-1] * images.shape[-2]))
    return (counts >= least) & (counts > 0)


def read_tones(images: Tensor, **reading: float) -> Tensor:
    """``long B``: the skin tone, 1-5 light..dark (``TONES`` indices of datamodules/emoji.py), or 0 for
    none: the lightest present tone (see the module docstring)."""
    present = present_tones(images, **reading)
    lightest = present.float().argmax(1) + 1
    return torch.where(present.any(1), lightest, torch.zeros_like(lightest))


def tone_correct(images: Tensor, asked: list[tuple[int, ...]], mixed_share: float = 0.15) -> Tensor:
    """``bool B``: each image shows what its caption asks: for one tone (every modifier the same, or
    none asked: 0), the skin read as that tone; for two people of different tones, both tones present
    with at least ``mixed_share`` of the most-counted tone's pixels (two small faces beside hair and
    clothes)."""
    present = present_tones(images, share=mixed_share)
    skin = read_tones(images)
    right = []
    for index, tones in enumerate(asked):
        wanted = set(tones)
        if len(wanted) <= 1:
            right.append(int(skin[index]) == (tones[0] if tones else 0))
        else:
            right.append(all(bool(present[index, tone - 1]) for tone in wanted))
    return torch.tensor(right, dtype=torch.bool)


@torch.no_grad()
def asked_tone_right(model, datamodule, split: str = "heldout", num_names: int | None = None,
                     samples_per_name: int = 1, batch_size: int = 64, seed: int = 0, **sampling: Any) -> Tensor:
    """``bool N,samples_per_name``: whether each sample of the first ``num_names`` names of ``split``
    (default: all) shows the skin tone(s) its name asks (:func:`~mmgen_lightning.metrics.emoji_tone.tone_correct`).
    The names are drawn item-major in chunks of ``batch_size``, chunk ``k`` seeded from ``(seed, k)``; the
    ``emoji_tones`` score of ``HeldOutScoreCallback`` and ``benchmarks/emoji_quality.py`` both read with it."""
    dataset = datamodule.dataset(split)
    count = len(dataset) if num_names is None else min(num_names, len(dataset))
    if count < 1 or samples_per_name < 1 or batch_size < 1:
        raise ValueError(f"num_names, samples_per_name and batch_size must be >= 1, got {num_names}, "
                         f"{samples_per_name} and {batch_size}")
    # the split's items in the order build_split takes them
    indices = np.flatnonzero(datamodule.split_of == RENDERED_SPLITS.index(split))[:count]
    asked = [datamodule.items[i].tones for i in indices for _ in range(samples_per_name)]
    device = torch.device(model.device)
    names = default_collate([{k: dataset[i][k] for k in ("text", "text_mask")} for i in range(count)])
    names = {k: v.repeat_interleave(samples_per_name, 0).to(device) for k, v in names.items()}
    right = []
    for chunk, start in enumerate(range(0, len(asked), batch_size)):
        conditions = {k: v[start:start + batch_size] for k, v in names.items()}
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(chunk_seed(seed, chunk, 0))
            images = model.generate(conditions, num_samples=len(conditions["text"]), to="image", **sampling)["image"]
        right.append(tone_correct(images.cpu(), asked[start:start + batch_size]))
    return torch.cat(right).view(count, samples_per_name)


__all__ = ["TONE_COLOURS", "asked_tone_right", "present_tones", "read_tones", "tone_correct", "tone_counts"]
