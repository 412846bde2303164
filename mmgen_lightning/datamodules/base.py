"""What every multimodal datamodule shares: modality selection, the tokenizer, the data spec.

A source subclasses :class:`MultimodalDataModule`, names the modalities it can render in
``available_modalities``, and implements ``caption_corpus`` (captions the tokenizer is trained
on), ``build_split`` (a map-style dataset of batch-contract dicts for one split) and
``source_spec`` (the sizes models need). Models receive ``data_spec`` through the CLI's
argument link, so sizes that belong to the data are never repeated in YAML.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from mmgen_lightning.batch import check_modalities
from mmgen_lightning.errors import UsageError
from mmgen_lightning.modalities import DataSpec
from mmgen_lightning.tokenizer import CaptionTokenizer

SPLITS = ("train", "val", "test")


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` (order a pure function of ``seed`` and the epoch) that can start an
    epoch ``skip`` samples in, so a run resumed mid-epoch continues where it stopped."""

    skip: int = 0

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableSampler` that follows Lightning's ``state_dict`` protocol.

    It counts a batch as taken when it hands it out. Lightning's training loop fetches from a sized
    loader only when it needs the next batch (no prefetching), so a checkpoint written after batch
    ``n`` records ``n``: the resumed epoch starts at batch ``n + 1`` without loading the ``n`` before it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError("ResumableDataLoader needs a ResumableSampler")
        self._taken = 0
        self._resume_at = 0

    def __iter__(self):
        self._taken, self._resume_at = self._resume_at, 0
        self.sampler.skip = self._taken * self.batch_size
        # the base iterator is made now, not at the first batch, so it is set up when Lightning asks for it
        return self._counted(super().__iter__())

    def _counted(self, batches):
        for batch in batches:
            self._taken += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches": self._taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # a checkpoint from the end of an epoch resumes at the start of the next one
        self._resume_at = state["batches"] if state["batches"] < len(self) else 0


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
    #: the loaders' ``collate_fn`` (``None``: PyTorch's default)
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None

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
        """Evaluation splits in order (Lightning adds a ``DistributedSampler`` under DDP); the train split
        shuffled by a :class:`ResumableDataLoader`, so a run resumed mid-epoch sees the batches that one that
        never stopped would."""
        dataset = self.dataset(split)
        options = {"batch_size": self.batch_size, "num_workers": self.num_workers,
                   "persistent_workers": self.num_workers > 0, "collate_fn": self.collate}
        if not shuffle:
            return DataLoader(dataset, shuffle=False, **options)
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed,
                                   drop_last=True)
        # its own generator (worker seeds) keeps loading off the global RNG that models draw noise from
        return ResumableDataLoader(dataset, sampler=sampler, drop_last=True,
                                   generator=torch.Generator().manual_seed(self.seed), **options)

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
