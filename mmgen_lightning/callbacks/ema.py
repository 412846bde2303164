"""The one EMA mechanism: Lightning's ``EMAWeightAveraging``, with an optional warm-up of the decay.

Every family that samples from averaged weights (FlowMatching, ConditionalGAN) gets them from this
callback in its recipe: it keeps ``ema <- d * ema + (1 - d) * weights`` after each optimizer step,
swaps the average in for validation, and writes it into the checkpoint's ``state_dict`` (the live
weights go beside it, so a resumed run continues both), which is what ``load_generator`` rebuilds.

The average stays swapped in until ``on_validation_end`` (Lightning's callback swaps it out at
``on_validation_epoch_end``), so every callback that scores or draws at the end of the validation
epoch (``EvaluationCallback``) sees the averaged weights whatever its place in the callback list;
checkpoint callbacks run after the swap back, as Lightning orders them last.

With ``warmup`` the decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so an average
started from early weights forgets them quickly (as StyleGAN's and TensorFlow's EMAs do); Lightning's
callback takes the decay as fixed, and its averaging function receives ``n``, so only that function
is ours.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import Tensor


def warmed_up_ema(decay: float):
    """An ``AveragedModel`` averaging function with the decay ``min(decay, (1 + n) / (10 + n))``."""

    @torch.no_grad()
    def update(average: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        n = float(num_averaged) + 1  # the update this is: the first copies, this is the (n+1)-th
        rate = min(decay, (1 + n) / (10 + n))
        return rate * average + (1 - rate) * current

    return update


class EMA(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` (all its arguments), plus ``warmup``.

    Args:
        decay: the decay ``d`` of the average, in [0, 1).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates instead of ``decay`` throughout.
        update_every_n_steps: update after every this many optimizer steps.
        update_starting_at_step: first optimizer step (0-based) that updates the average.
        use_buffers: average the buffers too (False: copy them, e.g. spectral norm's power-iteration vectors).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = False, update_every_n_steps: int = 1,
                 update_starting_at_step: int | None = None, use_buffers: bool = True, **kwargs: Any) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        super().__init__(decay=decay, update_every_n_steps=update_every_n_steps,
                         update_starting_at_step=update_starting_at_step, use_buffers=use_buffers, **kwargs)
        if warmup:
            self._kwargs["avg_fn"] = warmed_up_ema(decay)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the average in: the other callbacks' ``on_validation_epoch_end`` run after this one."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)  # the swap back to the live weights
