"""The descriptor every modality is: its batch keys, the checks of its tensor, and what models read of it.

The optional capabilities are separate pieces a modality mixes in: :class:`~.files.FileFormat` (reading,
writing, manifest cells, shards) and :class:`~.tensorboard.TensorBoardView` (TensorBoard, pictures). Its
default networks are built in ``models/layers/modality_networks.py``, with the layers they are made of.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


class Modality:
    """What one batch key is. Subclasses set the class attributes and override what applies."""

    name: ClassVar[str] = ""
    #: dtype kind and rank of the batch tensor, ``B`` first
    floating: ClassVar[bool] = True
    ndim: ClassVar[int] = 0
    #: whether a judge (``metrics/judges.py``) reads samples of it
    judgeable: ClassVar[bool] = False
    #: whether a sample is pixels (``...,C,H,W``), which ``random_shift`` may move
    pixels: ClassVar[bool] = False
    #: whether a sample is a sequence of frames (``B,F,...``)
    frames: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def keys(self) -> list[str]:
        """The batch keys this modality occupies (text brings its mask)."""
        return [self.name]

    def check(self, value: Any, where: str = "batch") -> None:
        """Raise naming ``where[name]`` unless ``value`` follows the batch contract."""
        if not isinstance(value, Tensor):
            raise TypeError(f"{where}[{self.name!r}] must be a Tensor, got {type(value).__name__}")
        if value.ndim != self.ndim:
            raise ValueError(f"{where}[{self.name!r}] must have {self.ndim} dims, got shape {tuple(value.shape)}")
        if self.floating and not value.is_floating_point():
            raise TypeError(f"{where}[{self.name!r}] must be floating point, got {value.dtype}")
        if not self.floating and value.dtype != torch.long:
            raise TypeError(f"{where}[{self.name!r}] must be torch.long, got {value.dtype}")

    # --- what models read -----------------------------------------------------------------------
    def encoder_inputs(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        """The tensors its default encoders take, in order: ``encoder(*modality.encoder_inputs(batch))``."""
        return [batch[key] for key in self.keys()]

    def condition_frontend(self, spec: Mapping[str, Any], *, n_mels: int = 64, frames: int = 32) -> nn.Module | None:
        """A parameter-free front end a family runs once per batch for all of its condition embedders
        (``None``: the embedders read the batch tensors themselves). ``n_mels``, ``frames``: the size of
        audio's log-mel spectrogram."""
        return None

    def condition_inputs(self, batch: Mapping[str, Tensor], frontend: nn.Module | None = None) -> dict[str, Tensor]:
        """What a condition embedder reads from a batch (through ``frontend``, when there is one), beside
        this modality's own entries (which other readers of the conditions, an aligner, take)."""
        return {key: batch[key] for key in self.keys()}

    def conform(self, values: Mapping[str, Tensor], spec: Mapping[str, Any], tokenizer: Any = None,
                to_tokenizer: Any = None, antialias: bool = True) -> dict[str, Tensor]:
        """This modality's entries of ``values`` (one model's samples or data) in the terms of another model
        sized by ``spec``: frames resized to its size (bilinear, ``antialias``), captions decoded with
        ``tokenizer`` and encoded with ``to_tokenizer`` (when both are given), floats as float32."""
        return {key: values[key].float() if self.floating else values[key] for key in self.keys()}

    def scored_dimensions(self, batch: Mapping[str, Tensor], *, spectrogram_dims: int | None = None) -> Tensor:
        """Scalars per sample a likelihood of this modality scores: ``B`` float64 (every element).
        ``spectrogram_dims``: audio's count when its likelihood is defined on the log-mel spectrogram."""
        value = batch[self.name]
        return torch.full((value.shape[0],), float(value[0].numel()), dtype=torch.float64, device=value.device)

    def to_data(self, values: Tensor, spec: Mapping[str, Any] | None = None, tokenizer: Any = None) -> list[Any]:
        """A batch of this modality -> one plain value per sample (what files and reports hold)."""
        return [value for value in values.detach().cpu()]
