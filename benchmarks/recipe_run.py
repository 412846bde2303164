"""What the recipe-quality benchmarks share: train a recipe from scratch exactly as a user would, and the
digits' per-class spread measure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DATA_RESOLUTION = 8  # the digits' scans are 8x8; the datamodule upsamples them


def checkpoint_dir(config: dict) -> Path:
    """The recipe's checkpoint folder (its first callback is the ModelCheckpoint), relative to the repo."""
    return Path(config["trainer"]["callbacks"][0]["init_args"]["dirpath"])


def fit_from_scratch(config_path: str, config: dict, fit_args: list[str]) -> float:
    """Run ``mmgen fit`` on the recipe with one torch thread, from an empty checkpoint folder (else
    ModelCheckpoint would write ``last-v1.ckpt`` beside an older ``last.ckpt``); returns the seconds
    it took, start-up included."""
    shutil.rmtree(ROOT / checkpoint_dir(config), ignore_errors=True)
    started = time.time()
    subprocess.run([sys.executable, "-m", "mmgen_lightning.cli", "fit", "--config", config_path,
                    "--trainer.enable_progress_bar", "false", *fit_args], check=True, cwd=ROOT,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return round(time.time() - started, 1)


class StepClock(L.Callback):
    """The time at the end of every training batch (batches, not optimizer steps: a GAN batch takes two)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.ends.append(time.perf_counter())

    def gaps(self, skip: int) -> list[float]:
        """Seconds between the ends of consecutive batches, the first ``skip`` batches left out."""
        return [b - a for a, b in zip(self.ends[skip:-1], self.ends[skip + 1:])]


def pairwise_spread(images: torch.Tensor, resolution: int = DATA_RESOLUTION) -> float:
    """Mean pairwise L2 distance of ``N,C,H,W`` images after area-downsampling to ``resolution`` (default
    8x8, the digits' own): the spread that per-class diversity ratios divide."""
    small = F.interpolate(images.float(), size=(resolution, resolution), mode="area")
    return torch.pdist(small.flatten(1)).mean().item()


def instantiate(spec: dict):
    """An object from a ``{class_path, init_args}`` block of a recipe."""
    import importlib

    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


def build_recipe(config: dict):
    """The recipe's model and datamodule, wired as ``mmgen fit`` wires them (the datamodule's ``data_spec``
    and tokenizer handed to the model); the datamodule is set up for fitting."""
    datamodule = instantiate(config["data"])
    datamodule.setup("fit")
    model_spec = config["model"]
    model = instantiate({"class_path": model_spec["class_path"],
                         "init_args": {"data_spec": datamodule.data_spec, **model_spec.get("init_args", {})}})
    model.tokenizer = datamodule.tokenizer
    return model, datamodule
