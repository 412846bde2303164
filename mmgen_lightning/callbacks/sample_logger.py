"""Log samples to TensorBoard while training: image grids, captions, audio and video.

Every ``every_n_epochs`` epochs (or ``every_n_steps`` steps) the model's ``generate`` runs on a
fixed set of conditions taken from the validation split, for each direction asked for, and the
results go to the experiment's ``SummaryWriter`` under ``samples/<direction>``.

The epoch's samples are drawn at the end of its closing validation, where the :class:`~mmgen_lightning.callbacks.EMA`
callback has its averaged weights swapped in: the grids show what the checkpoint will draw. An epoch
that ends without validation is drawn at its end, from the live weights.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import default_collate

from mmgen_lightning.batch import parse_direction
from mmgen_lightning.modalities import batch_keys, get_modality


class SampleLogger(L.Callback):
    """Logs what ``generate`` makes of fixed validation conditions to TensorBoard, per direction.

    Args:
        directions: e.g. ``["text->image", "image->text", "->image"]``; default: every direction
            the model serves with its full condition set.
        num_samples: conditions taken from the start of the validation split.
        every_n_epochs: log at the end of every n-th training epoch (0 turns this off): at the end of its
            closing validation when one runs (with the EMA weights when the EMA callback is on), else at the
            end of the epoch.
        every_n_steps: also log every n optimizer steps (0 turns this off).
        sampling: keyword arguments passed to ``generate`` (temperature, guidance_scale, ...).
    """

    def __init__(self, directions: list[str] | None = None, num_samples: int = 8, every_n_epochs: int = 1,
                 every_n_steps: int = 0, sampling: dict | None = None) -> None:
        super().__init__()
        self.directions = [parse_direction(d) for d in directions] if directions else None
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.sampling = sampling or {}
        self._conditions: dict[str, torch.Tensor] | None = None
        self._drawn_epoch: int | None = None

    def _epoch_due(self, trainer: L.Trainer) -> bool:
        return (bool(self.every_n_epochs) and (trainer.current_epoch + 1) % self.every_n_epochs == 0
                and self._drawn_epoch != trainer.current_epoch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        closing = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch  # not a mid-epoch validation
        if trainer.sanity_checking or trainer.state.fn != "fit" or not closing or not self._epoch_due(trainer):
            return
        self._drawn_epoch = trainer.current_epoch
        self.log_samples(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if self._epoch_due(trainer):  # no validation closed this epoch
            self._drawn_epoch = trainer.current_epoch
            self.log_samples(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.log_samples(trainer, pl_module)

    def fixed_conditions(self, trainer: L.Trainer) -> dict[str, torch.Tensor]:
        if self._conditions is None:
            dataset = trainer.datamodule.dataset("val")
            count = min(self.num_samples, len(dataset))
            self._conditions = default_collate([dataset[i] for i in range(count)])
        return self._conditions

    @rank_zero_only
    def log_samples(self, trainer: L.Trainer, pl_module) -> None:
        writer = getattr(trainer.logger, "experiment", None)
        if writer is None or not hasattr(writer, "add_image"):
            return
        reference = self.fixed_conditions(trainer)
        directions = self.directions or [(tuple(pl_module.condition_modalities), target)
                                         for target in pl_module.output_modalities]
        step = trainer.global_step
        for sources, target in directions:
            conditions = {key: reference[key] for key in batch_keys(sources)}
            count = next(iter(reference.values())).shape[0]
            samples = pl_module.generate(conditions, num_samples=count, to=target, **self.sampling)
            tag = f"samples/{'+'.join(sources) or 'unconditional'}->{target}"
            # each modality draws itself: image/video grids, audio clips, caption tables
            get_modality(target).log(writer, tag, samples[target], step, spec=pl_module.data_spec,
                                     tokenizer=pl_module.tokenizer, conditions=conditions)
