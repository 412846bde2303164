"""Image folder: a user's pictures sorted into one subfolder per class (torchvision's ``ImageFolder`` layout).

``ROOT/red_apple/0001.png``, ``ROOT/red_apple/0002.jpg``, ``ROOT/thumbs_up/...``: classes are the
subfolders in sorted order (``label`` is the index, as ``torchvision.datasets.ImageFolder`` numbers
them), and the caption of every image is its folder's name with ``_`` and ``-`` read as spaces
("red apple"). Files are found by torchvision's own ``find_classes``/``make_dataset`` (the extensions
of ``IMG_EXTENSIONS``) and read by the image modality's one reader (shorter side resized, centre
crop, [-1, 1]), so an image here means what it means in a manifest, ``generate`` or ``serve``.
Images are cut into train/val/test by a permutation seeded with ``seed``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmgen_lightning.datamodules.base import SPLITS, MultimodalDataModule
from mmgen_lightning.datamodules.rendered import check_fractions, split_by_permutation
from mmgen_lightning.errors import InputError
from mmgen_lightning.modalities import get_modality
from mmgen_lightning.tokenizer import KINDS, CaptionTokenizer


def folder_caption(name: str) -> str:
    """A class folder's name as a caption: ``red_apple`` -> "red apple"."""
    return re.sub(r"[\s_\-]+", " ", name).strip()


def find_images(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """``(class folder names, [(image path, class index)])`` of an ``ImageFolder`` tree; an empty tree or class
    folder raises, naming it."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not root.is_dir():
        raise InputError(f"image folder not found: {root}", "ImageFolderDataModule root")
    try:
        classes, class_to_index = find_classes(str(root))
    except FileNotFoundError as error:
        raise InputError(f"{root} has no class subfolders", "ImageFolderDataModule root",
                         "put each class's images in a subfolder named after it: ROOT/red_apple/1.png") from error
    samples = make_dataset(str(root), class_to_index, extensions=IMG_EXTENSIONS, allow_empty=True)
    counts = np.bincount([index for _, index in samples], minlength=len(classes))
    if (counts == 0).any():
        empty = classes[int(np.flatnonzero(counts == 0)[0])]
        raise InputError(f"{root / empty} holds no image file (extensions: {', '.join(IMG_EXTENSIONS)})",
                         "ImageFolderDataModule root", "add images or remove the folder")
    return classes, [(Path(path), index) for path, index in samples]


class FolderImages(Dataset):
    """The images of one split, decoded on access; a file that fails raises :class:`InputError` naming it."""

    def __init__(self, files: list[Path], spec: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.files, self.spec, self.tensors = files, spec, tensors

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = {key: value[index] for key, value in self.tensors.items()}
        if "image" in self.spec["modalities"]:
            try:
                item["image"] = get_modality("image").read(self.files[index], self.spec)
            except (ValueError, OSError) as error:
                raise InputError(f"{self.files[index]}: {error}") from error
        return item


class ImageFolderDataModule(MultimodalDataModule):
    """A user's images in one subfolder per class; label and caption from the folder's name.

    Args:
        root: the folder holding one subfolder per class.
        modalities: which of ``image``, ``text``, ``label`` each batch carries.
        image_size: side of the images after resize and centre crop, in pixels.
        image_channels: 1 (grey) or 3 (RGB).
        split_fractions: train, val and test shares of the images (train > 0).
        tokenizer_kind: ``word`` (class names: a closed vocabulary) or ``bpe``.
        vocab_size: largest vocabulary of a ``bpe`` tokenizer.
        batch_size: samples per batch and per process.
        num_workers: ``DataLoader`` worker processes (decoding happens in them).
        seed: seeds the split.
        max_text_length: padded caption length, ``[BOS]`` and ``[EOS]`` included.
        tokenizer_path: a local ``tokenizer.json`` to use instead of training one on the class names.
    """

    available_modalities = ("image", "text", "label")
    name = "image_folder"

    def __init__(self, root: str, modalities: list[str] | None = None, image_size: int = 64, image_channels: int = 3,
                 split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), tokenizer_kind: str = "word",
                 vocab_size: int = 4000, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 max_text_length: int = 24, tokenizer_path: str | None = None) -> None:
        super().__init__(["image", "text"] if modalities is None else modalities, batch_size=batch_size,
                         num_workers=num_workers, seed=seed, max_text_length=max_text_length,
                         tokenizer_path=tokenizer_path)
        if image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, got {image_channels}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if tokenizer_kind not in KINDS:
            raise ValueError(f"tokenizer_kind: unknown {tokenizer_kind!r}; allowed: {', '.join(KINDS)}")
        self.root = Path(root)
        self.image_size, self.image_channels = image_size, image_channels
        self.split_fractions = check_fractions(split_fractions)
        self.tokenizer_kind, self.vocab_size = tokenizer_kind, vocab_size
        self.classes, self.samples = find_images(self.root)
        #: one caption per class, in ``label`` order
        self.captions = [folder_caption(name) for name in self.classes]
        empty = next((name for name, text in zip(self.classes, self.captions) if not text), None)
        if empty is not None:
            raise InputError(f"{self.root / empty}: the folder's name gives an empty caption", "ImageFolderDataModule root")
        self.split_of = split_by_permutation(len(self.samples), self.split_fractions, seed)

    @property
    def tokenizer(self) -> CaptionTokenizer:
        if self._tokenizer is None and not self.tokenizer_path:
            self._tokenizer = CaptionTokenizer.train(self.caption_corpus(), self.max_text_length,
                                                     kind=self.tokenizer_kind, vocab_size=self.vocab_size)
        return super().tokenizer

    def caption_corpus(self) -> list[str]:
        """Every class's caption (the classes are known before any image is seen)."""
        return list(self.captions)

    def build_split(self, split: str) -> Dataset:
        indices = np.flatnonzero(self.split_of == SPLITS.index(split))
        labels = torch.tensor([self.samples[i][1] for i in indices], dtype=torch.long)
        tensors: dict[str, Tensor] = {}
        if "text" in self.modalities:
            encoded = self.tokenizer.encode(self.captions) if self.captions else {}
            tensors.update({key: value[labels] for key, value in encoded.items()})
        if "label" in self.modalities:
            tensors["label"] = labels
        spec = {**self.source_spec(), "modalities": list(self.modalities)}
        return FolderImages([self.samples[i][0] for i in indices], spec, tensors)

    def source_spec(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "image_channels": self.image_channels, "num_classes": len(self.classes)}


__all__ = ["FolderImages", "ImageFolderDataModule", "find_images", "folder_caption"]
