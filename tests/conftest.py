"""Shared test fixtures: a tiny in-memory datamodule so model and callback tests need no data source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import Dataset

from mmgen_lightning.datamodules.base import MultimodalDataModule

WORDS = ["zero", "one", "two", "three"]


class _Items(Dataset):
    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class ToyDataModule(MultimodalDataModule):
    """Four classes; class k is a bright square in quadrant k, captioned "class <word k>",
    with a tone of (k + 1) * 500 Hz. Small enough to learn in seconds."""

    available_modalities = ("image", "text", "audio", "label")
    name = "toy"

    def __init__(self, modalities: list[str] | None = None, size: int = 64, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__(modalities or ["image", "text"], batch_size=batch_size, seed=seed, max_text_length=6)
        self.size = size

    def caption_corpus(self) -> list[str]:
        return [f"class {w}" for w in WORDS]

    def source_spec(self) -> dict:
        return {"image_size": 16, "image_channels": 1, "sample_rate": 8000, "audio_length": 2000, "num_frames": 1,
                "num_classes": 4, "attribute_names": ["digit"], "attribute_sizes": [4]}

    def build_split(self, split: str) -> Dataset:
        generator = torch.Generator().manual_seed(self.seed * 3 + ("train", "val", "test").index(split))
        items = []
        for index in range(self.size):
            label = index % 4
            item = {"attributes": torch.tensor([label])}
            if "image" in self.modalities:
                image = -torch.ones(1, 16, 16) + 0.1 * torch.randn(1, 16, 16, generator=generator)
                row, col = divmod(label, 2)
                image[:, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] += 1.8
                item["image"] = image.clamp(-1, 1)
            if "text" in self.modalities:
                encoded = self.tokenizer.encode(f"class {WORDS[label]}")
                item["text"], item["text_mask"] = encoded["text"][0], encoded["text_mask"][0]
            if "audio" in self.modalities:
                t = torch.arange(2000) / 8000
                item["audio"] = 0.5 * torch.sin(2 * torch.pi * (label + 1) * 500 * t)
            if "label" in self.modalities:
                item["label"] = torch.tensor(label)
            items.append(item)
        return _Items(items)


def fit(model, datamodule=None, loader=None, **trainer_kwargs) -> L.Trainer:
    """Fit ``model`` on CPU with nothing written (no logger, checkpoints, progress bar or summary) unless
    ``trainer_kwargs`` ask for it; data from ``datamodule`` or a training ``loader``."""
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False, "accelerator": "cpu", **trainer_kwargs}
    trainer = L.Trainer(**options)
    trainer.fit(model, datamodule=datamodule, train_dataloaders=loader)
    return trainer


def two_rank_config(folder: Path, model: dict, data: dict, max_steps: int = 3) -> dict:
    """An ``mmgen fit`` config for 2 CPU DDP ranks that keeps ``folder/ckpt/last.ckpt``, for
    :func:`fit_two_ranks_in_subprocess`; ``model``/``data`` are ``class_path``/``init_args`` sections."""
    return {
        "seed_everything": 0,
        "trainer": {"max_steps": max_steps, "accelerator": "cpu", "devices": 2, "strategy": "ddp", "logger": False,
                    "enable_progress_bar": False, "limit_val_batches": 1, "default_root_dir": str(folder),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(folder / "ckpt"), "save_last": True}}]},
        "model": model, "data": data,
    }


def fit_two_ranks_in_subprocess(config: dict, folder: Path, timeout: int = 240) -> None:
    """``mmgen fit`` of ``config`` (saved as ``folder/config.yaml``) in a fresh process, one torch thread per
    rank; asserts it succeeded and really ran as two DDP ranks."""
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "mmgen_lightning.cli", "fit", "--config", str(folder / "config.yaml")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr or "world_size: 2" in result.stderr, result.stderr[-2000:]


@pytest.fixture
def one_thread():
    """Run a test on one torch thread, restoring the count after: tiny networks gain nothing from intra-op
    threads and lose a lot on a busy machine. Test files that train ask for it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def toy_datamodule() -> ToyDataModule:
    return ToyDataModule()
