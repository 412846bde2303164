"""Surviving faults: a non-finite loss, a crash, bad data, and exact resumption.

* :class:`StopOnNonFiniteLoss` checks every loss before its backward pass (automatic and manual
  optimisation alike, so GANs are covered); a NaN/Inf loss on any process saves the last finite
  state and stops with :class:`NonFiniteLossError`, before the bad gradients reach the weights.
* :class:`ExceptionCheckpoint` is Lightning's ``OnExceptionCheckpoint`` with a default folder.
* :class:`RandomStateCheckpoint` stores every process's torch random state in checkpoints, so a run
  resumed mid-epoch draws the same noise (latents, reparameterisation, dropout) as one that never stopped.
* :class:`DataErrorReport` summarises, at the end of every epoch, the samples a datamodule with
  ``on_error: skip`` dropped (:class:`~mmgen_lightning.datamodules.manifest.ManifestDataModule`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, OnExceptionCheckpoint
from torch import Tensor

from mmgen_lightning.errors import MMGenError

log = logging.getLogger(__name__)
RANDOM_STATE_KEY = "random_state"


class NonFiniteLossError(MMGenError, RuntimeError):
    """Training stopped because a loss was NaN or Inf; the message names the checkpoint of the last finite state
    (``mmgen fit`` prints it as one line, exit status 1)."""


def _checkpoint_folder(trainer: L.Trainer) -> str:
    """Where the trainer's first ``ModelCheckpoint`` writes, else ``default_root_dir/checkpoints``."""
    folders = [c.dirpath for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    return str(folders[0]) if folders else os.path.join(trainer.default_root_dir, "checkpoints")


class StopOnNonFiniteLoss(Callback):
    """Stop training at the first NaN/Inf loss, with a checkpoint of the last finite state.

    The check runs in ``on_before_backward``: the weights, optimiser states and EMA have not yet
    seen the bad loss, so the checkpoint written then is the last good state. Every process takes
    part in the decision (one all-reduce of a flag), so DDP ranks stop together.

    Args:
        dirpath: folder of the checkpoint; by default the ``ModelCheckpoint`` folder
            (``default_root_dir/checkpoints`` without one).
        filename: checkpoint name without ``.ckpt``.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last-finite") -> None:
        self.dirpath, self.filename = dirpath, filename
        self.saved_path: str | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(not finite, all=False):
            return
        path = os.path.join(self.dirpath or _checkpoint_folder(trainer), f"{self.filename}.ckpt")
        trainer.save_checkpoint(path)
        self.saved_path = path
        value = loss.detach().float().cpu()
        raise NonFiniteLossError(
            f"the training loss is not finite ({value.flatten()[:4].tolist()} on rank {trainer.global_rank}, "
            f"global step {trainer.global_step}, epoch {trainer.current_epoch}); training stopped before the "
            f"bad gradients reached the weights. The last finite state is saved in {path}: resume from it with "
            f"`--ckpt_path {path}` after lowering the learning rate or adding gradient clipping "
            "(GANs: a larger r1_gamma or n_critic).")


class ExceptionCheckpoint(OnExceptionCheckpoint):
    """Lightning's ``OnExceptionCheckpoint``, saving ``on_exception.ckpt`` in the ``ModelCheckpoint``
    folder by default.

    It saves in single-process runs only: under DDP an exception usually stops one rank, and the
    save's barrier would wait forever for the others (the launcher stops the job instead; resume from
    the last periodic checkpoint). A :class:`NonFiniteLossError` has saved its checkpoint already.

    Args:
        dirpath: folder of the checkpoint; by default the ``ModelCheckpoint`` folder.
        filename: checkpoint name without ``.ckpt``.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "on_exception") -> None:
        super().__init__(dirpath or ".", filename)
        self._folder_given = dirpath is not None

    def _resolve(self, trainer: L.Trainer) -> None:
        # ModelCheckpoint settles its folder in its own setup, so this is asked as late as possible
        if not self._folder_given:
            self.dirpath = _checkpoint_folder(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.world_size > 1 or isinstance(exception, NonFiniteLossError):
            return
        self._resolve(trainer)
        super().on_exception(trainer, pl_module, exception)
        log.warning("training failed (%s); its state is saved in %s", type(exception).__name__, self.ckpt_path)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._resolve(trainer)  # a run that ends well removes the checkpoint of an earlier failure
        super().teardown(trainer, pl_module, stage)


class RandomStateCheckpoint(Callback):
    """Save each process's torch random state (CPU, and CUDA when used) in every checkpoint and
    restore it when training resumes, at ``on_train_start`` (after any sanity check).

    Lightning restores weights, optimisers, loops and stateful dataloaders but not the random
    generators; without them a resumed run samples other latents and noise than an uninterrupted one.
    NumPy and Python generators are not saved (their states are not plain tensors, and the families
    draw their noise from torch).
    """

    def __init__(self) -> None:
        self._to_restore: dict[str, Tensor] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = {"cpu": torch.get_rng_state()}
        if pl_module.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(pl_module.device)
        checkpoint[RANDOM_STATE_KEY] = {name: self._gather(trainer, pl_module, state) for name, state in states.items()}

    @staticmethod
    def _gather(trainer: L.Trainer, pl_module: L.LightningModule, state: Tensor) -> Tensor:
        """``world_size, N`` byte states, one row per rank."""
        if trainer.world_size == 1:
            return state[None]
        return trainer.strategy.all_gather(state.to(pl_module.device)).cpu()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._to_restore = checkpoint.get(RANDOM_STATE_KEY)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._to_restore is None:
            return
        states, self._to_restore = self._to_restore, None
        if states["cpu"].shape[0] != trainer.world_size:
            log.warning("the checkpoint's random states come from %d processes, this run has %d: "
                        "not restored, so the resumed run draws different noise", states["cpu"].shape[0],
                        trainer.world_size)
            return
        # a copy: torch.set_rng_state reads a view at a storage offset (the row of any rank but 0) wrongly, and
        # the next draw crashes the process (a segfault in torch 2.14)
        torch.set_rng_state(states["cpu"][trainer.global_rank].clone())
        if "cuda" in states and pl_module.device.type == "cuda":
            torch.cuda.set_rng_state(states["cuda"][trainer.global_rank].clone(), pl_module.device)


class DataErrorReport(Callback):
    """At the end of every train/val/test epoch, log ``data/skipped_<split>`` (summed over processes)
    and a warning listing each dropped sample with its manifest line, file and reason.

    Works with any datamodule that has ``take_skip_report(split) -> (count, messages)``; others are left alone.

    Attributes:
        history: ``(split, epoch, total skipped)`` of every report, for scripts and tests.
    """

    def __init__(self) -> None:
        self.history: list[tuple[str, int, int]] = []

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if not hasattr(datamodule, "take_skip_report"):
            return
        count, messages = datamodule.take_skip_report(split)
        total = int(trainer.strategy.reduce(torch.tensor(float(count), device=pl_module.device), reduce_op="sum"))
        self.history.append((split, trainer.current_epoch, total))
        if messages:
            log.warning("epoch %d: rank %d dropped %d %s sample(s):\n  %s", trainer.current_epoch, trainer.global_rank,
                        count, split, "\n  ".join(messages))
        if total:
            pl_module.log(f"data/skipped_{split}", float(total), rank_zero_only=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "test")
