"""HF table: a Hugging Face ``datasets`` table of images and captions, read offline.

``path`` is either a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read
with ``datasets.load_from_disk``) or a ``.parquet`` file (read with ``pyarrow``; a table written by
``Dataset.to_parquet`` keeps its features, such as ``Image``, in the file's metadata). Nothing is
downloaded and nothing is written to the Hugging Face cache.

The ``image_column`` holds what ``datasets`` stores images as (an ``Image`` feature: decoded to a PIL
image on access, or ``{"bytes", "path"}`` when not decoded) or file paths, relative to the table's
folder; each image is converted to ``image_channels``, its shorter side resized to ``image_size``
(antialiased) and centre-cropped, as the image modality reads files. The ``caption_column`` gives
``text``, an optional ``label_column`` gives ``label`` (a ``ClassLabel`` or integers >= 0).

A ``DatasetDict``'s ``train``, ``validation`` (or ``val``) and ``test`` splits are used as they are;
a single table is cut into train/val/test by a permutation seeded with ``seed``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmgen_lightning.datamodules.base import SPLITS, MultimodalDataModule
from mmgen_lightning.datamodules.rendered import check_fractions, split_by_permutation
from mmgen_lightning.errors import InputError
from mmgen_lightning.tokenizer import KINDS, CaptionTokenizer

#: a ``DatasetDict``'s split names -> ours
SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}


def load_table(path: Path) -> dict[str, Any]:
    """``{our split: datasets.Dataset}`` of a ``save_to_disk`` folder or a parquet file; one table is ``{"all": ...}``."""
    try:
        import datasets
        import pyarrow.parquet as pq
    except ImportError as error:
        raise InputError("HFTableDataModule reads tables with datasets and pyarrow, which are not installed", None,
                         "pip install datasets==5.2.0 pyarrow==26.0.1") from error
    if path.is_file() and path.suffix == ".parquet":
        try:
            return {"all": datasets.Dataset(pq.read_table(path))}
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise InputError(f"{path}: cannot read the parquet file ({error})", "HFTableDataModule path") from error
    if not path.is_dir():
        raise InputError(f"table not found: {path} (give a save_to_disk folder or a .parquet file)",
                         "HFTableDataModule path")
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise InputError(f"{path}: not a folder written by save_to_disk ({error})", "HFTableDataModule path") from error
    if isinstance(loaded, datasets.DatasetDict):
        unknown = [name for name in loaded if name not in SPLIT_NAMES]
        if unknown:
            raise InputError(f"{path}: unknown split {unknown[0]!r}; allowed: {', '.join(SPLIT_NAMES)}",
                             "HFTableDataModule path")
        return {SPLIT_NAMES[name]: table for name, table in loaded.items()}
    return {"all": loaded}


def to_pixels(value: Any, folder: Path, channels: int, size: int) -> Tensor:
    """An image cell (PIL image, ``{"bytes", "path"}`` or a path) -> ``C,size,size`` in [-1, 1]."""
    import torchvision.transforms.v2.functional as TF
    from PIL import Image

    if isinstance(value, dict):
        value = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    if isinstance(value, str):
        value = Path(value) if Path(value).is_absolute() else folder / value
    if not isinstance(value, Image.Image):
        with Image.open(value) as opened:
            value = opened.convert("L" if channels == 1 else "RGB")
    pixels = TF.pil_to_tensor(value.convert("L" if channels == 1 else "RGB"))
    return TF.center_crop(TF.resize(pixels, size, antialias=True), size).float() / 127.5 - 1.0


class TableImages(Dataset):
    """The rows of one split; images decoded on access (a bad one raises, naming its row)."""

    def __init__(self, datamodule: "HFTableDataModule", table: Any, rows: np.ndarray, tensors: dict[str, Tensor]) -> None:
        self.datamodule, self.table, self.rows, self.tensors = datamodule, table, rows, tensors

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        dm = self.datamodule
        item = {key: value[index] for key, value in self.tensors.items()}
        if "image" in dm.modalities:
            row = int(self.rows[index])
            try:
                item["image"] = to_pixels(self.table[row][dm.image_column], dm.folder, dm.image_channels, dm.image_size)
            except (ValueError, OSError, TypeError) as error:
                raise InputError(f"{dm.path} row {row}: column {dm.image_column!r} is not a readable image ({error})") \
                    from error
        return item


class HFTableDataModule(MultimodalDataModule):
    """Images and captions (and labels) from a Hugging Face ``datasets`` table on disk.

    Args:
        path: a ``save_to_disk`` folder (a ``Dataset`` or ``DatasetDict``) or a ``.parquet`` file.
        modalities: which of ``image``, ``text``, ``label`` each batch carries.
        image_column: the column of images.
        caption_column: the column of captions.
        label_column: the column of class indices, needed when ``label`` is in ``modalities``.
        image_size: side of the images after resize and centre crop, in pixels.
        image_channels: 1 (grey) or 3 (RGB).
        split_fractions: train, val and test shares of a single table's rows (train > 0).
        tokenizer_kind: ``word`` (closed vocabularies) or ``bpe`` (open captions), trained on the train
            split's captions.
        vocab_size: largest vocabulary of a ``bpe`` tokenizer.
        batch_size: samples per batch and per process.
        num_workers: ``DataLoader`` worker processes (decoding happens in them).
        seed: seeds the split of a single table.
        max_text_length: padded caption length, ``[BOS]`` and ``[EOS]`` included.
        tokenizer_path: a local ``tokenizer.json`` to use instead of training one on the captions.
    """

    available_modalities = ("image", "text", "label")
    name = "hf_table"

    def __init__(self, path: str, modalities: list[str] | None = None, image_column: str = "image",
                 caption_column: str = "caption", label_column: str | None = None, image_size: int = 64,
                 image_channels: int = 3, split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 tokenizer_kind: str = "word", vocab_size: int = 4000, batch_size: int = 64, num_workers: int = 0,
                 seed: int = 0, max_text_length: int = 24, tokenizer_path: str | None = None) -> None:
        super().__init__(["image", "text"] if modalities is None else modalities, batch_size=batch_size,
                         num_workers=num_workers, seed=seed, max_text_length=max_text_length,
                         tokenizer_path=tokenizer_path)
        if image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, got {image_channels}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if tokenizer_kind not in KINDS:
            raise ValueError(f"tokenizer_kind: unknown {tokenizer_kind!r}; allowed: {', '.join(KINDS)}")
        if "label" in self.modalities and label_column is None:
            raise ValueError("label_column: name the table's column of class indices, as modalities include 'label'")
        self.path = Path(path)
        self.folder = self.path if self.path.is_dir() else self.path.parent
        self.image_column, self.caption_column, self.label_column = image_column, caption_column, label_column
        self.image_size, self.image_channels = image_size, image_channels
        self.tokenizer_kind, self.vocab_size = tokenizer_kind, vocab_size
        self.split_fractions = check_fractions(split_fractions)
        self.tables = self._split_tables(load_table(self.path))
        self.num_classes = self._count_classes()

    def _split_tables(self, loaded: dict[str, Any]) -> dict[str, tuple[Any, np.ndarray]]:
        """``{split: (table, row indices)}`` after checking that every needed column is there."""
        needed = {"image": ("image_column", self.image_column), "text": ("caption_column", self.caption_column),
                  "label": ("label_column", self.label_column)}
        for table in loaded.values():
            for modality in self.modalities:
                option, column = needed[modality]
                if column not in table.column_names:
                    raise InputError(f"{self.path} has no column {column!r}; its columns: "
                                     f"{', '.join(table.column_names)}", f"HFTableDataModule {option}",
                                     f"set {option} to one of them")
        if "all" in loaded:
            table = loaded["all"]
            assignment = split_by_permutation(len(table), self.split_fractions, self.seed)
            return {split: (table, np.flatnonzero(assignment == k)) for k, split in enumerate(SPLITS)}
        if "train" not in loaded:
            raise InputError(f"{self.path}: the DatasetDict has no 'train' split", "HFTableDataModule path")
        return {split: (loaded[split], np.arange(len(loaded[split]))) if split in loaded else (loaded["train"], np.arange(0))
                for split in SPLITS}

    def captions(self, split: str) -> list[str]:
        """The captions of ``split``; an empty or non-text one raises, naming its row."""
        table, rows = self.tables[split]
        column = table[self.caption_column] if len(rows) else []
        captions = [column[int(row)] for row in rows]
        for row, text in zip(rows, captions):
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{self.path} row {int(row)}: column {self.caption_column!r} holds {text!r}, "
                                 "not a caption", "HFTableDataModule caption_column")
        return captions

    def labels(self, split: str) -> Tensor:
        table, rows = self.tables[split]
        column = table[self.label_column] if len(rows) else []
        labels = torch.tensor([column[int(row)] for row in rows], dtype=torch.long)
        if (labels < 0).any():
            raise InputError(f"{self.path}: column {self.label_column!r} holds a negative label",
                             "HFTableDataModule label_column")
        return labels

    def _count_classes(self) -> int:
        if self.label_column is None or "label" not in self.modalities:
            return 0
        feature = self.tables["train"][0].features[self.label_column]
        if hasattr(feature, "num_classes"):  # a ClassLabel knows its classes, seen or not
            return int(feature.num_classes)
        return int(max(int(self.labels(split).max()) for split in SPLITS if len(self.tables[split][1])) + 1)

    @property
    def tokenizer(self) -> CaptionTokenizer:
        if self._tokenizer is None and not self.tokenizer_path:
            self._tokenizer = CaptionTokenizer.train(self.caption_corpus(), self.max_text_length,
                                                     kind=self.tokenizer_kind, vocab_size=self.vocab_size)
        return super().tokenizer

    def caption_corpus(self) -> list[str]:
        """The train split's captions (val/test captions stay unseen, as they would in use)."""
        return self.captions("train") or ["(no captions)"]

    def build_split(self, split: str) -> Dataset:
        table, rows = self.tables[split]
        tensors: dict[str, Tensor] = {}
        if "text" in self.modalities and len(rows):
            tensors.update(self.tokenizer.encode(self.captions(split)))
        if "label" in self.modalities:
            tensors["label"] = self.labels(split)
        return TableImages(self, table, rows, tensors)

    def source_spec(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "image_channels": self.image_channels, "num_classes": self.num_classes}


__all__ = ["HFTableDataModule", "TableImages", "load_table", "to_pixels"]
