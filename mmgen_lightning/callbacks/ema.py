"""The one EMA mechanism: Lightning's ``EMAWeightAveraging``, with an optional warm-up of the decay.

Every family that samples from averaged weights (FlowMatching, ConditionalGAN) gets them from this
callback in its recipe: it keeps ``ema <- d * ema + (1 - d) * weights`` after each optimizer step,
swaps the average in for validation, and writes it into the checkpoint's ``state_dict`` (the live
weights go beside it, so a resumed run continues both), which is what ``load_generator`` rebuilds.

The average stays swapped in until ``on_validation_end`` (Lightning's callback swaps it out at
``on_validation_epoch_end``), so every callback that scores or draws at the end of the validation
epoch (``EvaluationCallback``) sees the averaged weights whatever its place in the callback list;
checkpoint callbacks run after the swap back, as Lightning orders them last.

The update is one fused ``torch._foreach_lerp_`` over every tensor of a device and dtype, as torch's
``get_ema_multi_avg_fn`` does; Lightning's callback passes the per-tensor ``get_ema_avg_fn``, whose
Python loop and temporaries cost 53 ms per step for the 1M-parameter Shapes DiT against 18 ms fused
(one thread, ``benchmarks/ema_update.py``). Frozen weights (a pretrained text encoder held fixed) are
left out: their average is themselves, and averaging the emoji recipe's 22M-parameter MiniLM took 0.72 s
of every step per tensor.

With ``warmup`` the decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so an average
started from early weights forgets them quickly (as StyleGAN's and TensorFlow's EMAs do); Lightning's
callback takes the decay as fixed, and the averaging function receives ``n``, so only that function
is ours.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import Tensor


def ema_update(decay: float, warmup: bool = False, frozen: set[int] | None = None):
    """An ``AveragedModel`` ``multi_avg_fn``: ``ema <- rate * ema + (1 - rate) * weights`` for all tensors
    of one device and dtype at once, ``rate = decay`` (or ``min(decay, (1 + n) / (10 + n))`` with ``warmup``,
    ``n`` the updates so far), skipping the tensors whose storage is in ``frozen`` (``data_ptr`` of the live
    model's frozen parameters)."""
    frozen = set() if frozen is None else frozen

    @torch.no_grad()
    def update(averages: list[Tensor], currents: list[Tensor], num_averaged: Tensor) -> None:
        pairs = [(a, c) for a, c in zip(averages, currents) if c.data_ptr() not in frozen]
        if not pairs:
            return
        n = float(num_averaged) + 1  # the update this is: the first copies, this is the (n+1)-th
        rate = min(decay, (1 + n) / (10 + n)) if warmup else decay
        averaged, current = (list(tensors) for tensors in zip(*pairs))
        if averaged[0].is_floating_point() or averaged[0].is_complex():
            torch._foreach_lerp_(averaged, current, 1 - rate)
        else:  # integer buffers (a step counter), as torch's own EMA treats them
            for a, c in pairs:
                a.copy_(a * rate + c * (1 - rate))

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
        self._frozen: set[int] = set()
        # in place of the per-tensor avg_fn Lightning's callback passes (AveragedModel takes one of the two)
        self._kwargs.pop("avg_fn", None)
        self._kwargs["multi_avg_fn"] = ema_update(decay, warmup, self._frozen)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Note the frozen parameters' storage (it moves with the module) before Lightning's update."""
        self._frozen.clear()
        self._frozen.update(p.data_ptr() for p in pl_module.parameters() if not p.requires_grad)
        super().on_train_batch_end(trainer, pl_module, *args)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the average in: the other callbacks' ``on_validation_epoch_end`` run after this one."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)  # the swap back to the live weights
