"""What the exact-resumption tests share: train a family for a few steps (straight through, crashed part-way,
resumed from the last periodic checkpoint) and compare the whole training state the runs end with."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from mmgen_lightning.callbacks.faults import RandomStateCheckpoint
from mmgen_lightning.checkpoint_io import AtomicCheckpointIO

#: the parts of a checkpoint that make up the training state: live weights (``current_model_state`` when an
#: EMA callback put its average in ``state_dict``), the average and its update count, optimisers, schedulers,
#: every process's random state
STATE_KEYS = ("state_dict", "current_model_state", "averaging_state", "optimizer_states", "lr_schedulers",
              "random_state")


class Crash(Exception):
    """Stands for the process dying."""


class CrashAt(Callback):
    """Raises :class:`Crash` before optimizer step ``step`` (the periodic checkpoints before it are written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Crash(f"killed at step {self.step}")


class SaveFinalState(Callback):
    """Writes ``path`` after the last optimizer step, before ``on_train_end`` (which copies an EMA average
    over the live weights), so it holds everything a resumed run continues from."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == trainer.max_steps:
            trainer.save_checkpoint(self.path)


def fit_steps(build: Callable[[], tuple[L.LightningModule, L.LightningDataModule]], folder: Path, max_steps: int,
              every: int, callbacks: list[Callback] = (), ckpt_path: str | None = None) -> Path:
    """Seed, build ``(model, datamodule)``, train ``max_steps`` optimizer steps with a checkpoint every ``every``
    steps in ``folder`` (``step=N.ckpt``); returns the path of the final state (:class:`SaveFinalState`)."""
    L.seed_everything(0)
    model, datamodule = build()
    final = folder / "final.ckpt"
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        max_steps=max_steps, limit_val_batches=0, plugins=[AtomicCheckpointIO()],
                        default_root_dir=str(folder),
                        callbacks=[ModelCheckpoint(dirpath=folder, every_n_train_steps=every, save_top_k=-1,
                                                   filename="{step}"),
                                   RandomStateCheckpoint(), *callbacks, SaveFinalState(final)])
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return final


def fit_config(folder: Path, steps: int, every: int, *callbacks: dict, **trainer: Any) -> str:
    """``folder/config.in.yaml``, an ``mmgen fit`` recipe of a tiny FlowMatching on Shapes (32 train rows in
    batches of 4) with the flow recipes' EMA, ``steps`` optimizer steps, checkpoints every ``every`` steps and
    ``last.ckpt`` in ``folder/ckpt``, the final state in ``folder/final.ckpt``; ``callbacks`` (``class_path``/
    ``init_args`` sections) and ``trainer`` options are added. Returns the path."""
    callback = lambda class_path, **options: {"class_path": class_path, "init_args": options}  # noqa: E731
    recipe = {
        "seed_everything": 0,
        "trainer": {"max_steps": steps, "accelerator": "cpu", "devices": 1, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 0,
                    "default_root_dir": str(folder),
                    "callbacks": [callback("lightning.pytorch.callbacks.ModelCheckpoint", dirpath=str(folder / "ckpt"),
                                           every_n_train_steps=every, save_top_k=-1, save_last=True,
                                           filename="{step}"),
                                  callback("mmgen_lightning.callbacks.EMA", decay=0.9, update_starting_at_step=2),
                                  callback("tests.resume_checks.SaveFinalState", path=str(folder / "final.ckpt")),
                                  *callbacks], **trainer},
        "model": {"class_path": "mmgen_lightning.models.flow.FlowMatching",
                  "init_args": {"network": {"width": 32, "depth": 1, "num_heads": 2, "patch_size": 4},
                                "objective": {"cond_drop": 0.2}, "optimization": {"warmup_steps": 2}}},
        "data": {"class_path": "mmgen_lightning.datamodules.ShapesDataModule",
                 "init_args": {"image_size": 16, "train_size": 32, "val_size": 4, "test_size": 4, "batch_size": 4}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.in.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def assert_same_state(resumed: str | Path, straight: str | Path) -> list[str]:
    """Every tensor of the training state (:data:`STATE_KEYS`) in the two checkpoints is bit-identical;
    returns the keys compared."""
    load = lambda path: torch.load(path, map_location="cpu", weights_only=True)  # noqa: E731
    got, expected = load(resumed), load(straight)
    compared = [key for key in STATE_KEYS if key in expected]
    assert [key for key in STATE_KEYS if key in got] == compared
    for key in compared:
        _assert_equal(got[key], expected[key], key)
    return compared


def _assert_equal(got: Any, expected: Any, where: str) -> None:
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=where)
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for name in expected:
            _assert_equal(got[name], expected[name], f"{where}.{name}")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected)):
            _assert_equal(a, b, f"{where}[{index}]")
    else:
        assert got == expected, where


def checkpoints_in(folder: Path) -> set[str]:
    return {name for name in os.listdir(folder) if name.endswith(".ckpt")}


class KillAt(Callback):
    """SIGKILLs its own process (on process ``rank`` only) before optimizer step ``step``: a real death, no
    exception, no hook, nothing flushed, like the OOM killer or a lost machine. ``record``: a file to write
    the time of death to (``time.time()``) first."""

    def __init__(self, step: int, rank: int = 0, record: str | None = None) -> None:
        self.step, self.rank, self.record = step, rank, record

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            if self.record:
                Path(self.record).write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
