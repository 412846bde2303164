"""What every multimodal datamodule shares: modality selection, the tokenizer, the data spec.

A source subclasses :class:`MultimodalDataModule`, names the modalities it can render in
``available_modalities``, and implements ``caption_corpus`` (captions the tokenizer is trained
on), ``build_split`` (a map-style dataset of batch-contract dicts for one split) and
``source_spec`` (the sizes models need). Models receive ``data_spec`` through the CLI's
argument link, so sizes that belong to the data are never repeated in YAML.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, IterableDataset

from mmgen_lightning.batch import check_modalities
from mmgen_lightning.errors import UsageError
from mmgen_lightning.modalities import DataSpec
from mmgen_lightning.tokenizer import CaptionTokenizer

SPLITS = ("train", "val", "test")


class MultimodalDataModule(L.LightningDataModule):
    """Base class of the built-in and user data sources.

    Args:
        modalities: which modalities each batch carries (a subset of ``available_modalities``);
            ``attributes`` always ride along for metrics.
        batch_size: samples per batch and per process.
        num_workers: ``DataLoader`` worker processes.
        seed: seeds the data itself; splits use distinct derived seeds.
        max_text_length: padded caption length, ``[BOS]`` and ``[EOS]`` included.
        tokenizer_path: a local ``tokenizer.json`` to use instead of training one on the captions.
    """

    available_modalities: tuple[str, ...] = ()
    name: str = "data"

    def __init__(self, modalities: list[str], batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 max_text_length: int = 24, tokenizer_path: str | None = None) -> None:
        super().__init__()
        # collects the subclass's arguments too; checkpoints carry them so a datamodule can be rebuilt.
        # Not logged: names such as `modalities` mean different things on the model and the data.
        self.save_hyperparameters(logger=False)
        self.modalities = check_modalities(modalities, "modalities", self.available_modalities)
        if not self.modalities:
            raise ValueError(f"modalities: give at least one of {', '.join(self.available_modalities)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not 0 <= seed < 2**32:  # numpy's generators, which split and shuffle the rows, take no other seeds
            raise ValueError(f"seed must be in [0, 2**32 - 1], got {seed}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.max_text_length = max_text_length
        self.tokenizer_path = tokenizer_path
        self._tokenizer: CaptionTokenizer | None = None
        self._splits: dict[str, Dataset] = {}

    # --- what a source implements -------------------------------------------------------------
    def caption_corpus(self) -> list[str]:
        """Every caption the tokenizer must know (a closed vocabulary for synthetic sources)."""
        raise NotImplementedError

    def build_split(self, split: str) -> Dataset:
        """A map-style dataset for ``split`` in ``SPLITS`` whose items follow the batch contract."""
        raise NotImplementedError

    def source_spec(self) -> dict[str, Any]:
        """Sizes of this source: image_size, image_channels, sample_rate, audio_length, ..."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> CaptionTokenizer:
        if self._tokenizer is None:
            if self.tokenizer_path:
                self._tokenizer = CaptionTokenizer.from_file(self.tokenizer_path, self.max_text_length)
            else:
                self._tokenizer = CaptionTokenizer.train(self.caption_corpus(), self.max_text_length)
        return self._tokenizer

    @property
    def data_spec(self) -> dict[str, Any]:
        """Everything a model needs to size itself; linked to ``model.data_spec`` by the CLI."""
        spec = {"dataset": self.name, "modalities": list(self.modalities),
                "vocab_size": self.tokenizer.vocab_size, "max_text_length": self.max_text_length}
        spec.update(self.source_spec())
        return spec

    @property
    def spec(self) -> DataSpec:
        """:attr:`data_spec` typed (``dm.spec.image_size``); models hold it so too."""
        return DataSpec.from_dict(self.data_spec)

    def dataset(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise ValueError(f"split: unknown {split!r}; allowed: {', '.join(SPLITS)}")
        if split not in self._splits:
            self._splits[split] = self.build_split(split)
        return self._splits[split]

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage, SPLITS):
            self.dataset(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.dataset(split), batch_size=self.batch_size, shuffle=shuffle,
                          drop_last=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        self.check_train_rows()
        return self._loader("train", shuffle=True)

    def check_train_rows(self, rows: int | None = None) -> None:
        """Training drops the last partial batch, so a train split smaller than one batch per process
        would train nothing and end without a word; refuse it, naming both numbers. ``rows``: the
        split's size when its dataset has no ``len`` (a stream)."""
        if rows is None:
            dataset = self.dataset("train")
            if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
                return
            rows = len(dataset)
        processes = self.trainer.world_size if self.trainer is not None else 1
        if rows // processes < self.batch_size:
            per = f" ({rows // processes} per process for {processes} processes)" if processes > 1 else ""
            raise UsageError(f"the train split has {rows} rows{per}, fewer than one batch of batch_size="
                             f"{self.batch_size}; the last partial batch is dropped, so nothing would train",
                             f"{type(self).__name__} batch_size", f"lower batch_size to {max(1, rows // processes)} "
                             "or less, or give more training data")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
