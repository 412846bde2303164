"""Manifest: a user's own files, listed one sample per row in a JSONL or CSV manifest.

A row gives any of

* ``image``: a picture file (anything PIL opens: PNG, JPEG, ...), resized on its shorter side and
  centre-cropped to ``image_size``, scaled to [-1, 1];
* ``audio``: a WAV/FLAC/OGG file, mixed to mono, resampled and cut or zero-padded to ``audio_seconds``;
* ``video``: an animated GIF/WebP or a folder of frame images (sorted by name), ``num_frames`` frames
  taken evenly over the clip (MP4 and other containers: convert them to GIF or a frame folder);
* ``text`` or ``caption``: the caption; ``label``: a class index >= 0; ``split``: train/val/test.

Each file is read by its modality's one reader (``read`` in ``modalities/``, which
``generate``, ``serve`` and ``retrieve`` use too). File paths are relative to the manifest's folder
(absolute paths are kept). Without a ``split`` column, rows are cut into train/val/test by a
permutation seeded with ``seed``.

Bad data never becomes a tensor. A row whose file is missing, empty, undecodable, whose audio holds
NaN/Inf or has the wrong sample rate (with ``resample: false``), whose caption is empty or whose
columns are unknown raises :class:`DataError` naming the manifest line and the file
(``on_error: raise``, the default), or is dropped (``on_error: skip``): cheap checks drop rows when
the manifest is read, decoding failures drop the sample from its batch; both are counted in
:attr:`ManifestDataModule.skip_report`, logged, and summarised at the end of every epoch by
:class:`~mmgen_lightning.callbacks.faults.DataErrorReport`.

Scale: the manifest is read one row at a time, each row checked as it is read (one ``stat`` per file) and
kept by column (:class:`ManifestRows`: a line number, a path string, a caption), never as a dict per row,
so memory grows by little more than the strings themselves; ``benchmarks/manifest_scale.py`` measures the
time and memory of indexing a million rows.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import logging
import os
import stat
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from mmgen_lightning.datamodules.base import SPLITS, MultimodalDataModule, ResumableDataLoader, ResumableSampler
from mmgen_lightning.errors import InputError
from mmgen_lightning.modalities import REGISTRY, get_modality
from mmgen_lightning.tokenizer import KINDS, CaptionTokenizer

log = logging.getLogger(__name__)

#: modalities a row gives as file paths, decoded by their modality's ``read``
FILE_COLUMNS = tuple(name for name, modality in REGISTRY.items() if modality.from_files)
COLUMNS = FILE_COLUMNS + ("text", "caption", "label", "split")  # the order of the "allowed:" message
ON_ERROR = ("raise", "skip")
#: batch key that carries the indices of samples dropped from a batch, popped before the model sees it
SKIPPED_KEY = "_skipped"
#: the most captions encoded to find those longer than max_text_length (an even sample beyond)
LENGTH_CHECK_SAMPLE = 100_000


class DataError(InputError):
    """A manifest row that cannot become a sample: says which line, which file and why."""

    #: what the ``mmgen`` command adds to the one-line message
    advice = "fix or remove the row, or set on_error: skip to drop bad rows"

    def __init__(self, manifest: str | Path, line: int, reason: str, file: str | Path | None = None) -> None:
        where = f"{manifest} line {line}" + (f" ({file})" if file else "")
        super().__init__(f"{where}: {reason}")
        self.line, self.file, self.reason = line, str(file) if file else None, reason


def given_modalities(columns: Any) -> list[str]:
    """The modalities a row with these columns gives (a caption is ``text`` or ``caption``), in batch order."""
    return [name for name, modality in REGISTRY.items() if any(column in columns for column in modality.columns)]


def iter_manifest(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` pairs of a ``.jsonl`` or ``.csv`` manifest, read one row at a time (CSV line 1 is
    the header); a line that is not a JSON object raises, naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise ValueError(f"manifest {path}: unknown format {path.suffix!r}; allowed: .jsonl, .csv")
    return _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    captions = get_modality("text").columns
    with open(path, newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            # an empty cell is a missing value, except a caption, which is then empty (an error)
            yield line, {k: v for k, v in row.items() if v is not None and (v != "" or k in captions)}


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(path, line, f"not valid JSON ({error})") from error
            if not isinstance(row, dict):
                raise DataError(path, line, f"a row must be a JSON object, got {type(row).__name__}")
            yield line, row


class ManifestRows(Sequence):
    """Checked manifest rows kept by column: per row a line number, a split code, and per modality a file path
    (``str``), a caption or a label. Row ``i`` reads back as the dict :meth:`ManifestDataModule.check_row`
    made, ``{"line", "split", <modality>: value}``, with file paths as ``Path``; a dict (and a ``Path``) per
    row would take several times the memory of a million-row manifest. ``take(indices)`` is a view of some
    rows sharing the columns."""

    def __init__(self, modalities: Sequence[str]) -> None:
        self.lines, self.splits = array("q"), array("b")  # split: index in SPLITS, -1 for none
        self.columns: dict[str, Any] = {name: array("q") if name == "label" else [] for name in modalities}
        self.indices: Any = None  # the rows of the table this view shows (None: all, in order)

    def append(self, row: dict[str, Any]) -> None:
        self.lines.append(row["line"])
        self.splits.append(SPLITS.index(row["split"]) if row["split"] is not None else -1)
        for name, column in self.columns.items():
            column.append(row[name])

    def take(self, indices: Sequence[int]) -> "ManifestRows":
        view = copy.copy(self)  # the same columns
        view.indices = np.asarray(indices, dtype=np.int64) if self.indices is None else self.indices[indices]
        return view

    def __len__(self) -> int:
        return len(self.lines) if self.indices is None else len(self.indices)

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        at = index % len(self) if self.indices is None else int(self.indices[index])
        split = self.splits[at]
        row: dict[str, Any] = {"line": self.lines[at], "split": SPLITS[split] if split >= 0 else None}
        for name, column in self.columns.items():
            row[name] = Path(column[at]) if name in FILE_COLUMNS else column[at]
        return row

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[index] for index in range(len(self)))

    def column(self, name: str) -> list[Any]:
        """One column's values of these rows (captions for the tokenizer, without building a dict per row)."""
        values = self.columns[name]
        return list(values) if self.indices is None else [values[i] for i in self.indices.tolist()]


class ManifestDataset(Dataset):
    """The rows of one split, decoded on access into batch-contract items.

    With ``skip`` a row whose file fails to decode gives ``{SKIPPED_KEY: index}`` instead of an item;
    :func:`collate_dropping_skipped` takes it out of the batch and passes the index on.
    """

    def __init__(self, datamodule: "ManifestDataModule", rows: Sequence[dict[str, Any]]) -> None:
        self.datamodule, self.rows = datamodule, rows

    def __len__(self) -> int:
        return len(self.rows)

    def decode(self, index: int) -> dict[str, Tensor]:
        """The item of row ``index``; raises :class:`DataError` naming its line and file."""
        dm, row = self.datamodule, self.rows[index]
        item: dict[str, Tensor] = {}
        for name in dm.modalities:
            if name not in FILE_COLUMNS:
                continue
            try:
                item[name] = get_modality(name).read(row[name], dm.file_spec, resample=dm.resample)
            except (ValueError, OSError) as error:
                raise DataError(dm.manifest, row["line"], str(error), row[name]) from error
        if "text" in dm.modalities:
            encoded = dm.tokenizer.encode(row["text"])
            item["text"], item["text_mask"] = encoded["text"][0], encoded["text_mask"][0]
        if "label" in dm.modalities:
            item["label"] = torch.tensor(row["label"], dtype=torch.long)
        return item

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        try:
            return self.decode(index)
        except DataError as error:
            if self.datamodule.on_error == "raise":
                raise
            log.warning("skipping %s", error)
            return {SKIPPED_KEY: torch.tensor(index)}


def collate_dropping_skipped(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """``default_collate`` of the good items, plus ``SKIPPED_KEY``: ``long K`` indices of the dropped ones."""
    good = [item for item in items if SKIPPED_KEY not in item]
    skipped = [int(item[SKIPPED_KEY]) for item in items if SKIPPED_KEY in item]
    if not good:
        raise ValueError(f"every sample of a batch failed to decode (split indices {skipped}); "
                         "see the warnings above: most of the data is bad")
    batch = default_collate(good)
    batch[SKIPPED_KEY] = torch.tensor(skipped, dtype=torch.long)
    return batch


class ManifestDataModule(MultimodalDataModule):
    """A user's image/audio/video files and captions, listed in a JSONL or CSV manifest.

    Args:
        manifest: path of the ``.jsonl`` or ``.csv`` manifest; file paths in it are relative to its folder.
        modalities: which of ``image``, ``text``, ``audio``, ``video``, ``label`` each batch carries;
            by default every one the manifest's first row gives (``caption`` counts as ``text``).
        image_size: side of images and video frames after resize and centre crop, in pixels.
        image_channels: 1 (grey) or 3 (RGB).
        video_size: side of video frames; by default ``image_size``.
        num_frames: frames per video, taken evenly over each clip.
        sample_rate: audio samples per second after resampling.
        audio_seconds: audio clip length; longer clips are cut, shorter ones zero-padded.
        resample: resample audio at another rate; when off such a file is an error (wrong sample rate).
        num_classes: number of classes; by default the largest ``label`` + 1.
        split_fractions: train, val and test shares of the rows when the manifest has no ``split`` column.
        on_error: ``raise`` stops at the first bad row with its line and file; ``skip`` drops it,
            counts it and reports it.
        ignore_columns: extra columns to accept and ignore (ids, notes); any other unknown column is an error.
        tokenizer_kind: ``word`` (closed vocabularies) or ``bpe`` (open captions) when the tokenizer is
            trained on the train split's captions.
        vocab_size: largest vocabulary of a ``bpe`` tokenizer.
        batch_size: samples per batch and per process.
        num_workers: ``DataLoader`` worker processes (decoding happens in them).
        seed: seeds the row split and the shuffling.
        max_text_length: padded caption length, ``[BOS]`` and ``[EOS]`` included.
        tokenizer_path: a local ``tokenizer.json`` to use instead of training one on the captions.
    """

    available_modalities = ("image", "text", "audio", "video", "label")
    name = "manifest"
    collate = staticmethod(collate_dropping_skipped)  # a row that fails to decode leaves the batch

    def __init__(self, manifest: str, modalities: list[str] | None = None, image_size: int = 32,
                 image_channels: int = 3, video_size: int | None = None, num_frames: int = 8,
                 sample_rate: int = 16000, audio_seconds: float = 1.0, resample: bool = True,
                 num_classes: int | None = None, split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 on_error: str = "raise", ignore_columns: list[str] | None = None, tokenizer_kind: str = "word",
                 vocab_size: int = 4000, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 max_text_length: int = 24, tokenizer_path: str | None = None) -> None:
        self.manifest = Path(manifest)
        raw_rows = iter_manifest(self.manifest)
        first = next(raw_rows, None)
        if first is None:
            raise ValueError(f"manifest {self.manifest} has no rows")
        if modalities is None:
            modalities = given_modalities(first[1])
        super().__init__(modalities, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         max_text_length=max_text_length, tokenizer_path=tokenizer_path)
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error: unknown {on_error!r}; allowed: {', '.join(ON_ERROR)}")
        if image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, got {image_channels}")
        if tokenizer_kind not in KINDS:
            raise ValueError(f"tokenizer_kind: unknown {tokenizer_kind!r}; allowed: {', '.join(KINDS)}")
        fractions = tuple(split_fractions)
        if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"split_fractions: give 3 shares >= 0 (train, val, test) summing to 1, "
                             f"got {split_fractions}")
        for name, value in (("image_size", image_size), ("num_frames", num_frames), ("sample_rate", sample_rate)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not audio_seconds > 0:
            raise ValueError(f"audio_seconds must be > 0, got {audio_seconds}")
        self.image_size, self.image_channels = image_size, image_channels
        self.video_size, self.num_frames = video_size or image_size, num_frames
        self.sample_rate, self.audio_length = sample_rate, max(1, round(sample_rate * audio_seconds))
        self.resample, self.on_error = resample, on_error
        self.split_fractions, self.tokenizer_kind, self.vocab_size = fractions, tokenizer_kind, vocab_size
        self.allowed_columns = COLUMNS + tuple(ignore_columns or ())
        self._allowed = frozenset(self.allowed_columns)
        self._read_as = [(name, get_modality(name)) for name in self.modalities]
        self.folder = str(self.manifest.parent)  # file paths in the manifest are relative to it
        #: per split: manifest lines dropped when read, and dataset indices dropped from batches since the last report
        self.skip_report: dict[str, dict[str, list]] = {s: {"read": [], "decode": []} for s in SPLITS}
        self.rows = self._split_rows(itertools.chain([first], raw_rows))
        if not self.rows["train"]:
            raise ValueError(f"manifest {self.manifest}: no usable row is left for the train split")
        labels = [label for rows in self.rows.values() for label in rows.column("label")] \
            if "label" in self.modalities else []
        self.num_classes = num_classes or (max(labels) + 1 if labels else 0)
        if labels and max(labels) >= self.num_classes:
            raise ValueError(f"num_classes is {self.num_classes} but the manifest has label {max(labels)}")

    # --- reading the manifest -----------------------------------------------------------------
    def check_row(self, line: int, raw: dict[str, Any]) -> dict[str, Any]:
        """A row with its file paths joined to the manifest's folder (``str``), its caption and label;
        :class:`DataError` for what can be seen without decoding (unknown column, missing field, empty caption,
        missing or empty file). Runs once per row of manifests of millions of rows: one ``stat`` per file,
        ``os.path`` rather than ``pathlib``."""
        if not raw.keys() <= self._allowed:
            unknown = next(key for key in raw if key not in self._allowed)
            raise DataError(self.manifest, line, f"unknown column {unknown!r}; allowed: "
                            f"{', '.join(self.allowed_columns)} (add others to ignore_columns)")
        if "text" in raw and "caption" in raw:
            raise DataError(self.manifest, line, "give 'text' or 'caption', not both")
        row: dict[str, Any] = {"line": line, "split": raw.get("split")}
        for name, modality in self._read_as:
            for column in modality.columns:
                if column in raw:
                    value = raw[column]
                    break
            else:
                raise DataError(self.manifest, line, f"no {name!r} column, but modalities include {name!r}")
            if modality.from_files:
                path = os.path.join(self.folder, str(value))
                try:
                    found = os.stat(path)
                except OSError:
                    raise DataError(self.manifest, line, f"{name} file not found", Path(path)) from None
                if stat.S_ISREG(found.st_mode) and found.st_size == 0:
                    raise DataError(self.manifest, line, f"{name} file is empty (0 bytes)", Path(path))
                row[name] = path
            else:  # a caption or a label, checked by its modality
                try:
                    row[name] = modality.parse_cell(value)
                except ValueError as error:
                    raise DataError(self.manifest, line, str(error)) from error
        if row["split"] is not None and row["split"] not in SPLITS:
            raise DataError(self.manifest, line, f"split: unknown {row['split']!r}; allowed: {', '.join(SPLITS)}")
        return row

    def _split_rows(self, raw_rows: Iterable[tuple[int, dict[str, Any]]]) -> dict[str, ManifestRows]:
        """Check every row as it is read, then assign it to a split: by its ``split`` column when the manifest
        has one, else by a seeded permutation of all rows (bad ones included, so a good row's split never
        depends on which others are bad)."""
        table = ManifestRows(self.modalities)
        kept = array("q")  # each kept row's index among all rows
        dropped: list[tuple[int, Any, str]] = []  # (index among all rows, its split value, why)
        count = 0
        for index, (line, raw) in enumerate(raw_rows):
            count += 1
            try:
                row = self.check_row(line, raw)
            except DataError as error:
                if self.on_error == "raise":
                    raise
                log.warning("skipping %s", error)
                dropped.append((index, raw.get("split"), str(error)))
                continue
            table.append(row)
            kept.append(index)
        order = np.random.default_rng(self.seed).permutation(count)
        position = np.empty(count, dtype=np.int64)
        position[order] = np.arange(count)
        cuts = np.rint(np.cumsum(self.split_fractions) * count).astype(int)
        drawn = np.searchsorted(cuts[:2], position, side="right")  # each row's split by the permutation
        stored = np.array(table.splits, dtype=np.int8)  # the split column's values (-1: none)
        by_column = bool((stored >= 0).any()) or any(split is not None for _, split, _ in dropped)
        if by_column:  # a row without a split where other rows have one
            for at in np.flatnonzero(stored < 0).tolist():
                error = DataError(self.manifest, table.lines[at], "no 'split' value, but other rows have one")
                if self.on_error == "raise":
                    raise error
                log.warning("skipping %s", error)
                dropped.append((kept[at], None, str(error)))
        for index, split, message in sorted(dropped, key=lambda bad: bad[0]):
            self.skip_report[split if split in SPLITS else SPLITS[int(drawn[index])]]["read"].append(message)
        splits = stored if by_column else drawn[np.array(kept, dtype=np.int64)]
        return {name: table.take(np.flatnonzero(splits == code)) for code, name in enumerate(SPLITS)}

    # --- the source ---------------------------------------------------------------------------
    @property
    def tokenizer(self) -> CaptionTokenizer:
        if self._tokenizer is None and not self.tokenizer_path:
            self._tokenizer = CaptionTokenizer.train(self.caption_corpus(), self.max_text_length,
                                                     kind=self.tokenizer_kind, vocab_size=self.vocab_size)
        tokenizer = super().tokenizer
        if not getattr(self, "_lengths_checked", False) and "text" in self.modalities:  # once: captions cut short
            self._lengths_checked = True
            self._warn_about_cut_captions(tokenizer)
        return tokenizer

    def _warn_about_cut_captions(self, tokenizer: CaptionTokenizer) -> None:
        """Warn when captions are longer than ``max_text_length`` allows: every caption is encoded up to
        ``LENGTH_CHECK_SAMPLE`` of them, an evenly spaced sample of that size beyond (encoding a caption costs
        ~25 us, a minute for a few million), and the warning says which."""
        captions = [caption for rows in self.rows.values() for caption in rows.column("text")]
        step = max(1, -(-len(captions) // LENGTH_CHECK_SAMPLE))
        checked = captions[::step]
        room, cut, longest = self.max_text_length - 2, 0, 0
        for start in range(0, len(checked), 10_000):  # HF encodings take ~1 KB each: a chunk at a time
            lengths = [len(e.ids) for e in tokenizer.tokenizer.encode_batch(checked[start:start + 10_000])]
            cut += sum(n > room for n in lengths)
            longest = max([longest, *lengths])
        if cut:
            counted = f"{cut} of {len(checked)} captions" + (
                f" (one in every {step} of {len(captions)})" if step > 1 else "")
            log.warning("%s: %s are longer than max_text_length=%d allows (%d tokens; the longest has %d) and are "
                        "cut; raise max_text_length to keep them whole", self.manifest, counted,
                        self.max_text_length, room, longest)

    def caption_corpus(self) -> list[str]:
        """The train split's captions (val/test captions stay unseen, as they would in use)."""
        return (self.rows["train"].column("text") if "text" in self.modalities else []) or ["(no captions)"]

    def build_split(self, split: str) -> Dataset:
        return ManifestDataset(self, self.rows[split])

    def source_spec(self) -> dict[str, Any]:
        return {**self.file_spec, "num_classes": self.num_classes}

    @property
    def file_spec(self) -> dict[str, Any]:
        """The sizes its files are read at (``Modality.read``)."""
        return {"image_size": self.image_size, "image_channels": self.image_channels, "video_size": self.video_size,
                "sample_rate": self.sample_rate, "audio_length": self.audio_length, "num_frames": self.num_frames}

    # --- loading ------------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Take the dropped samples' indices out of the batch and count them for the epoch report."""
        if isinstance(batch, dict) and SKIPPED_KEY in batch:
            skipped = batch.pop(SKIPPED_KEY).tolist()
            trainer = self.trainer
            if trainer is not None and trainer.sanity_checking:  # a partial pass, not counted
                return batch
            split = "train" if trainer is None or trainer.training else "test" if trainer.testing else "val"
            self.skip_report[split]["decode"].extend(skipped)
        return batch

    def take_skip_report(self, split: str) -> tuple[int, list[str]]:
        """``(count, messages)`` of the samples of ``split`` dropped since the last call (rows dropped
        when the manifest was read are reported once, with the first epoch)."""
        report = self.skip_report[split]
        dataset = self._splits.get(split)
        messages = list(report["read"])
        for index, times in sorted(Counter(report["decode"]).items()):
            try:
                dataset.decode(index)
                reason = "decoded fine when re-checked"
            except DataError as error:
                reason = str(error)
            messages.append(reason + (f" ({times} times)" if times > 1 else ""))
        count = len(report["read"]) + len(report["decode"])
        self.skip_report[split] = {"read": [], "decode": []}
        return count, messages


__all__ = ["DataError", "ManifestDataModule", "ManifestDataset", "ManifestRows", "ResumableDataLoader",
           "ResumableSampler", "collate_dropping_skipped", "given_modalities", "iter_manifest"]
