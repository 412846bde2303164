"""The captioning objective: the likelihood of a caption given its condition, by teacher forcing.

The decoder reads ``text[:, :t+1]`` and the condition ``c`` and predicts ``text[:, t+1]``; the loss is
the cross-entropy of every real next token (padding is skipped), averaged over those tokens::

    loss = - sum_{b, t real} log p(text[b, t+1] | text[b, :t+1], c_b) / (real next tokens)

With ``label_smoothing`` ``e`` the target is ``(1 - e)`` one-hot plus ``e`` spread uniformly over the
vocabulary (Szegedy et al. 2016); validation reports the plain NLL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch.nn.functional as F
from torch import Tensor

from mmgen_lightning.config import ConfigGroup
from mmgen_lightning.modalities import random_shift

#: the target of padding positions: ``F.cross_entropy`` skips it
IGNORE_INDEX = -100


@dataclasses.dataclass(frozen=True)
class CaptionerObjective(ConfigGroup):
    """What the captioner is trained to minimise.

    Args:
        label_smoothing: label smoothing ``e`` of the training cross-entropy, in [0, 1).
        shift_augment: training only: shift each image (each video, all frames alike) by its own random
            offset of up to this many pixels in x and y, filling with the background (-1); 0 turns it off,
            and it must be 0 for audio.
    """

    section = "objective"
    label_smoothing: float = 0.0
    shift_augment: int = 0

    def check(self) -> None:
        self.require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
        self.require(self.shift_augment >= 0, "shift_augment", "must be >= 0")


def next_token_targets(batch: Mapping[str, Tensor]) -> Tensor:
    """Next tokens ``long B,L-1`` of ``text: long B,L`` with padding (``text_mask`` False) set to
    ``IGNORE_INDEX``, so the loss skips it."""
    return batch["text"][:, 1:].masked_fill(~batch["text_mask"][:, 1:], IGNORE_INDEX)


def token_statistics(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Mean NLL per real token and token accuracy (``targets`` padded with ``IGNORE_INDEX``)."""
    real = targets != IGNORE_INDEX
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX)
    accuracy = (logits.argmax(-1) == targets)[real].float().mean()
    return nll, accuracy


def captioning_objective(teacher_forced: Callable[[Mapping[str, Tensor]], Tensor], batch: Mapping[str, Tensor],
                         condition: str, objective: CaptionerObjective,
                         mean_over_processes: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """``{"loss", "logits", "targets"}`` for one batch.

    Args:
        teacher_forced: ``batch -> logits B,L-1,V``, row ``t`` predicting ``text[:, t+1]`` from
            ``text[:, :t+1]`` and the condition (the captioner's forward).
        batch: ``text: long B,L``, ``text_mask: bool B,L`` and the condition's key.
        condition: the batch key of the condition (``image``, ``audio`` or ``video``).
        mean_over_processes: a count -> its mean over the DDP processes (``None``: one process).
            Gradients are averaged over processes, so dividing by the mean token count (not each
            process's own) makes that average the gradient of the token mean over the global batch,
            whatever each process's caption lengths.
    """
    if objective.shift_augment:
        batch = {**batch, condition: random_shift(batch[condition], objective.shift_augment)}
    logits, targets = teacher_forced(batch).float(), next_token_targets(batch)
    summed = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                             label_smoothing=objective.label_smoothing, reduction="sum")
    tokens = (targets != IGNORE_INDEX).sum().float()
    if mean_over_processes is not None:
        tokens = mean_over_processes(tokens)
    return {"loss": summed / tokens.clamp_min(1.0), "logits": logits, "targets": targets}
