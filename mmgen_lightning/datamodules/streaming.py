"""Streaming shards: a manifest decoded once into litdata chunks, then streamed to every rank.

``mmgen shard`` (:func:`shard_manifest`) decodes every row of a :class:`ManifestDataModule` (resize,
resample, frame picking, the same code as training from the manifest) and writes each split with
``litdata.optimize`` into ``OUT/<split>/`` chunks, plus ``OUT/mmgen.json`` (sizes, modalities, row
counts, skipped rows) and ``OUT/tokenizer.json``. Each modality says how it is stored
(``Modality.to_shard``): images and video frames as ``uint8`` (lossless for decoded 8-bit pixels, 4x
smaller than float), audio as ``float32``, captions as text.

:class:`StreamingDataModule` reads such a folder, locally or from object storage (``s3://``,
``gs://``, ``azure://``: the path is handed to litdata unchanged; reading ``mmgen.json`` there uses
fsspec, which needs the matching package, e.g. ``s3fs``). litdata splits the chunks between nodes,
ranks and workers, so each process sees a disjoint part of every epoch, and its loader follows
Lightning's ``state_dict`` protocol, so a run resumes mid-epoch where it stopped.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
from pathlib import Path
from typing import Any

import fsspec
import torch
from litdata import StreamingDataLoader, StreamingDataset, optimize
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mmgen_lightning.datamodules.base import SPLITS, MultimodalDataModule
from mmgen_lightning.datamodules.manifest import DataError, ManifestDataModule, ManifestDataset
from mmgen_lightning.errors import InputError
from mmgen_lightning.modalities import get_modality
from mmgen_lightning.tokenizer import CaptionTokenizer

log = logging.getLogger(__name__)

META_FILE, TOKENIZER_FILE = "mmgen.json", "tokenizer.json"
#: litdata's default ("spawn") re-imports torch and this package in every writer, seconds each; forked
#: writers share the parent's decoded manifest and start at once
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else None


class ShardWriter:
    """litdata ``optimize`` function: one manifest row (by index in its split) -> zero or one shard sample."""

    def __init__(self, dataset: ManifestDataset) -> None:
        self.dataset = dataset
        self.parent_pid = os.getpid()

    def __call__(self, index: int):
        if os.getpid() != self.parent_pid and torch.get_num_threads() != 1:
            # a forked writer must not enter the OpenMP pool it inherited from a parent that already ran
            # parallel torch ops (it deadlocks); one thread per writer, as torch's DataLoader workers do
            torch.set_num_threads(1)
        row = self.dataset.rows[index]
        try:
            item = self.dataset.decode(index)
        except DataError as error:
            if self.dataset.datamodule.on_error == "raise":
                raise
            log.warning("skipping %s", error)
            return
        sample: dict[str, Any] = {"line": row["line"]}
        for name in self.dataset.datamodule.modalities:  # each modality says what a shard keeps of it
            sample[name] = get_modality(name).to_shard(item, row)
        yield sample


def shard_manifest(datamodule: ManifestDataModule, output_dir: str | Path, chunk_bytes: str = "64MB",
                   num_workers: int = 1, limit: int | None = None) -> dict[str, Any]:
    """Write every non-empty split of ``datamodule`` as litdata chunks under ``output_dir/<split>``, at most
    ``limit`` rows of each (the first ones; ``None``: all).

    Rows stream through: the writers decode one row at a time by its index and litdata keeps one chunk in
    memory per writer, so memory does not grow with the rows written (``benchmarks/manifest_scale.py``).
    Returns the metadata written to ``output_dir/mmgen.json``; per split it counts the manifest rows, the
    samples written and the rows skipped (``on_error: skip``) among those tried.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split in SPLITS:
        rows = datamodule.rows[split]
        dropped_when_read = len(datamodule.skip_report[split]["read"])
        if not rows:
            splits[split] = {"rows": dropped_when_read, "written": 0, "skipped": dropped_when_read}
            continue
        tried = len(rows) if limit is None else min(limit, len(rows))
        try:
            optimize(fn=ShardWriter(datamodule.dataset(split)), inputs=list(range(tried)),
                     output_dir=str(output_dir / split), chunk_bytes=chunk_bytes, num_workers=num_workers,
                     mode="overwrite", verbose=False, start_method=START_METHOD)
        except RuntimeError as error:
            # litdata re-raises a writer's exception as a RuntimeError holding its formatted traceback; a bad
            # row's DataError (line, file, reason) is the user's message, found in that text
            found = re.findall(rf"^{re.escape(DataError.__module__)}\.DataError: (.+)$", str(error), re.MULTILINE)
            if not found:
                raise
            raise InputError(found[-1], hint=DataError.advice) from error
        written = len(StreamingDataset(str(output_dir / split)))
        splits[split] = {"rows": len(rows) + dropped_when_read, "written": written,
                         "skipped": tried - written + dropped_when_read}
    datamodule.tokenizer.save(output_dir / TOKENIZER_FILE)
    meta = {"manifest": str(datamodule.manifest), "modalities": list(datamodule.modalities),
            "max_text_length": datamodule.max_text_length, "spec": datamodule.source_spec(), "splits": splits,
            **({"limit": limit} if limit is not None else {})}
    (output_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _read_text(url: str) -> str:
    """A small text file, local or remote (fsspec: remote protocols need their package, e.g. s3fs)."""
    try:
        with fsspec.open(url, "r", encoding="utf-8") as handle:
            return handle.read()
    except (FileNotFoundError, ImportError, ValueError) as error:
        raise FileNotFoundError(f"cannot read {url}: {error}; is this a folder written by `mmgen shard`?") from error


class ShardItem:
    """litdata ``transform``: a stored sample -> a batch-contract item with the chosen modalities."""

    def __init__(self, modalities: list[str], tokenizer: CaptionTokenizer | None) -> None:
        self.modalities, self.tokenizer = modalities, tokenizer

    def __call__(self, sample: dict[str, Any]) -> dict[str, Tensor]:
        item: dict[str, Tensor] = {}
        for name in self.modalities:
            item.update(get_modality(name).from_shard(sample[name], self.tokenizer))
        return item


class StreamingDataModule(MultimodalDataModule):
    """Samples streamed from the chunks ``mmgen shard`` wrote, split across nodes, ranks and workers.

    Args:
        input_dir: the folder ``mmgen shard`` wrote: a local path or an object-storage URL
            (``s3://bucket/shards``), handed to litdata as is.
        modalities: which of the stored modalities each batch carries; by default all of them.
        batch_size: samples per batch and per process.
        num_workers: ``DataLoader`` worker processes per rank.
        seed: seeds litdata's shuffle (chunk order and samples within chunks), one order per epoch.
        cache_dir: local folder for chunks downloaded from object storage; litdata's default when empty.
        max_cache_size: most disk the downloaded chunks may take, e.g. ``"50GB"``.
        max_text_length: padded caption length; by default the one the shards were written with.
        tokenizer_path: a ``tokenizer.json`` to use instead of ``input_dir/tokenizer.json``.
    """

    available_modalities = ("image", "text", "audio", "video", "label")
    name = "streaming"

    def __init__(self, input_dir: str, modalities: list[str] | None = None, batch_size: int = 64, num_workers: int = 0,
                 seed: int = 0, cache_dir: str | None = None, max_cache_size: str = "25GB",
                 max_text_length: int | None = None, tokenizer_path: str | None = None) -> None:
        self.input_dir = input_dir.rstrip("/")
        self.meta = json.loads(_read_text(f"{self.input_dir}/{META_FILE}"))
        stored = self.meta["modalities"]
        super().__init__(stored if modalities is None else modalities, batch_size=batch_size,
                         num_workers=num_workers, seed=seed,
                         max_text_length=max_text_length or self.meta["max_text_length"], tokenizer_path=tokenizer_path)
        missing = [m for m in self.modalities if m not in stored]
        if missing:
            raise ValueError(f"modalities: {missing[0]!r} is not in the shards at {input_dir}; they hold "
                             f"{', '.join(stored)}")
        self.cache_dir, self.max_cache_size = cache_dir, max_cache_size

    @property
    def tokenizer(self) -> CaptionTokenizer:
        if self._tokenizer is None and not self.tokenizer_path:
            self._tokenizer = CaptionTokenizer.from_json(_read_text(f"{self.input_dir}/{TOKENIZER_FILE}"),
                                                         self.max_text_length)
        return super().tokenizer

    def caption_corpus(self) -> list[str]:
        raise NotImplementedError("streaming shards carry their tokenizer (tokenizer.json)")

    def source_spec(self) -> dict[str, Any]:
        return dict(self.meta["spec"])

    def check_train_rows(self, rows: int | None = None) -> None:
        super().check_train_rows(self.meta["splits"]["train"]["written"])  # a stream has no len before it runs

    def build_split(self, split: str) -> Dataset:
        if not self.meta["splits"][split]["written"]:  # no chunks were written: the split is empty
            return []
        transform = ShardItem(self.modalities, self.tokenizer if "text" in self.modalities else None)
        return StreamingDataset(f"{self.input_dir}/{split}", shuffle=split == "train", drop_last=split == "train",
                                seed=self.seed, cache_dir=self.cache_dir, max_cache_size=self.max_cache_size,
                                transform=transform)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        if not isinstance(dataset, StreamingDataset):
            return DataLoader(dataset, batch_size=self.batch_size)
        # its own generator keeps loading off the global RNG that models draw noise from
        return StreamingDataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                                   generator=torch.Generator().manual_seed(self.seed))
