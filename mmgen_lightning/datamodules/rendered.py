"""What the rendered real-data sources (emoji, notes) share: a render cache and a ``heldout`` split.

A rendered source draws its items once from installed files (SVGs, a SoundFont) with a registry
renderer, and keeps the result in ``$MMGEN_CACHE/data/<name>.npz`` (default cache folder
``~/.cache/mmgen_lightning``), one uncompressed ``.npz`` per configuration; its name carries
everything the pixels or samples depend on (size, source version, item list), so another
configuration never reads it. The file is written under a temporary name in the same folder and
renamed when complete: a render that fails, or a process killed while writing, leaves no file that
a later run would read. Pixels are kept as ``uint8`` and audio as ``int16`` (what the renderers
produce) and converted to the batch contract's floats per item.

Besides ``train``/``val``/``test``, a rendered source has a ``heldout`` split: attribute pairs that
never occur in training, whose parts each do (see each source's docstring).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mmgen_lightning.datamodules.base import SPLITS, MultimodalDataModule
from mmgen_lightning.errors import InputError
from mmgen_lightning.tokenizer import CaptionTokenizer

RENDERED_SPLITS = SPLITS + ("heldout",)


def cache_root() -> Path:
    """``$MMGEN_CACHE`` (default ``~/.cache/mmgen_lightning``), the folder judges are cached in too."""
    return Path(os.environ.get("MMGEN_CACHE", Path.home() / ".cache" / "mmgen_lightning"))


def load_or_render(path: Path, render: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays cached at ``path``; when there are none, ``render()``'s, written there first.

    The render runs before any file is opened, and the file is written to a temporary name and
    renamed, so ``path`` either holds a whole render or does not exist."""
    if path.is_file():
        try:
            with np.load(path) as stored:
                return {key: stored[key] for key in stored.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise InputError(f"cached render {path} cannot be read ({error})", None,
                             "delete it and it is rendered again") from error
    arrays = render()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.replace(temporary, path)  # atomic on one file system; concurrent ranks write the same bytes
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return arrays


def check_readable(captions: list[str], names: list[str], tokenizer: CaptionTokenizer, where: str) -> None:
    """Refuse the first caption the tokenizer would read only in part (unknown words, cut off), naming
    its item (``names``, e.g. the SVG file) and ``where`` the tokenizer came from."""
    for caption, name in zip(captions, names):
        problems = tokenizer.problems(caption)
        if problems:
            raise InputError(f"{name}: caption {caption!r} cannot be read: {problems[0]}", where,
                             "use a tokenizer trained on these captions or raise max_text_length")


class RenderedItems(Dataset):
    """Batch-contract items from stored arrays: ``image`` from ``uint8 N,C,H,W`` to [-1, 1], ``audio`` from
    ``int16 N,T`` to [-1, 1], every other key (``text``, ``label``, ``attributes``, ...) as is."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.tensors = tensors
        self.size = next(iter(tensors.values())).shape[0]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = {key: value[index] for key, value in self.tensors.items()}
        if "image" in item:
            item["image"] = item["image"].float() / 127.5 - 1.0
        if "audio" in item:
            item["audio"] = item["audio"].float() / 32768.0
        return item


class RenderedDataModule(MultimodalDataModule):
    """A :class:`MultimodalDataModule` with a ``heldout`` split besides ``train``/``val``/``test``; the
    subclass's ``build_split`` serves all four."""

    def dataset(self, split: str) -> Dataset:
        if split not in RENDERED_SPLITS:
            raise ValueError(f"split: unknown {split!r}; allowed: {', '.join(RENDERED_SPLITS)}")
        if split not in self._splits:
            self._splits[split] = self.build_split(split)
        return self._splits[split]

    def heldout_dataloader(self) -> DataLoader:
        """The held-out pairs, in a fixed order (for evaluation; never trained on)."""
        return self._loader("heldout", shuffle=False)


def split_by_permutation(count: int, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """``count`` split indices (0 train, 1 val, 2 test): a permutation seeded with ``seed`` cut by ``fractions``."""
    order = np.random.default_rng(seed).permutation(count)
    cuts = np.rint(np.cumsum(fractions) * count).astype(int)
    assignment = np.empty(count, dtype=np.int64)
    assignment[order] = np.searchsorted(cuts[:2], np.arange(count), side="right")
    return assignment


def check_fractions(split_fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6 or not fractions[0] > 0:
        raise ValueError(f"split_fractions: give 3 shares >= 0 (train, val, test) summing to 1, train > 0, "
                         f"got {split_fractions}")
    return fractions


__all__ = ["RENDERED_SPLITS", "RenderedDataModule", "RenderedItems", "cache_root", "check_fractions",
           "check_readable", "load_or_render", "split_by_permutation"]
