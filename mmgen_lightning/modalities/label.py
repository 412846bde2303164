"""``label: long B`` class indices."""

from __future__ import annotations

from pathlib import Path

import torch

from mmgen_lightning.modalities.base import Modality
from mmgen_lightning.modalities.files import FileFormat
from mmgen_lightning.modalities.tensorboard import TensorBoardView


class LabelModality(Modality, FileFormat, TensorBoardView):
    """``label: long B`` class index in ``[0, num_classes)``."""

    name, ndim, floating = "label", 1, False
    extension, columns, noun = ".txt", ("label",), "labels"

    def scored_dimensions(self, batch, *, spectrogram_dims=None):
        label = batch[self.name]
        return torch.ones(label.shape[0], dtype=torch.float64, device=label.device)

    def to_data(self, values, spec=None, tokenizer=None):
        return [int(value) for value in values.detach().cpu()]

    # --- files --------------------------------------------------------------------------------------
    def parse_cell(self, value):
        try:
            label = int(value)
        except (TypeError, ValueError):
            label = -1
        if label < 0 or str(label) != str(value).strip():
            raise ValueError(f"label must be an integer >= 0, got {value!r}")
        return label

    def to_shard(self, item, row):
        return int(item[self.name])

    def from_shard(self, stored, tokenizer=None):
        return {self.name: torch.tensor(stored, dtype=torch.long)}

    def write(self, value, path, spec=None, tokenizer=None):
        Path(path).write_text(f"{int(value)}\n", encoding="utf-8")
        return {"label": int(value)}

    # --- drawing ------------------------------------------------------------------------------------
    def log(self, writer, tag, values, step, spec=None, tokenizer=None, conditions=None):
        writer.add_text(tag, ", ".join(str(v) for v in self.to_data(values)), step)
