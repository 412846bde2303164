"""How a modality's samples are drawn: in TensorBoard (``callbacks/sample_logger.py``) and as pictures to
draw attention maps on (``callbacks/attention_maps.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn


class TensorBoardView:
    """Mixed into a :class:`~.base.Modality`: how a batch of its samples is shown."""

    def log(self, writer: Any, tag: str, values: Tensor, step: int, spec: Mapping[str, Any] | None = None,
            tokenizer: Any = None, conditions: Mapping[str, Tensor] | None = None) -> None:
        """Draw a batch of samples in TensorBoard (a ``SummaryWriter``) under ``tag``."""
        raise NotImplementedError(f"{self.name}: no TensorBoard view")

    def pictures(self, values: Tensor, size: int, *, log_mel: nn.Module | None = None) -> Tensor:
        """Samples as pictures to draw on: ``B,frames,3,size,size`` in [0, 1]. ``log_mel`` (audio): the
        frontend the model reads the clips through."""
        raise NotImplementedError(f"{self.name}: not drawn as pictures")


def frames_as_pictures(frames: Tensor, size: int) -> Tensor:
    """``B,F,C,H,W`` in [-1, 1] -> ``B,F,3,size,size`` in [0, 1] (nearest: pixels stay visible)."""
    pictures = F.interpolate(((frames + 1) / 2).clamp(0, 1).flatten(0, 1), size=(size, size), mode="nearest")
    pictures = pictures.unflatten(0, frames.shape[:2])
    if pictures.shape[2] == 1:
        pictures = pictures.expand(-1, -1, 3, -1, -1)
    return pictures.cpu()
