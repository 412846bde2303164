"""``image: float B,C,H,W`` in [-1, 1]."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mmgen_lightning.modalities.base import Modality
from mmgen_lightning.modalities.files import FileFormat, open_frames, square
from mmgen_lightning.modalities.pixels import resize_frames, to_uint8
from mmgen_lightning.modalities.spec import need
from mmgen_lightning.modalities.tensorboard import TensorBoardView, frames_as_pictures


class ImageModality(Modality, FileFormat, TensorBoardView):
    """``image: float B,C,H,W`` in [-1, 1], ``C = image_channels``, ``H = W = image_size``."""

    name, ndim, judgeable, pixels = "image", 4, True, True
    extension, from_files, columns, noun = ".png", True, ("image",), "images"

    @staticmethod
    def size(spec: Mapping[str, Any]) -> int:
        """Side of an image: ``image_size``."""
        return need(spec, "image_size")

    def to_data(self, values, spec=None, tokenizer=None):
        return [to_uint8(image) for image in values]

    def conform(self, values, spec, tokenizer=None, to_tokenizer=None, antialias=True):
        return {self.name: resize_frames(values[self.name].float(), need(spec, "image_size"), antialias)}

    # --- files --------------------------------------------------------------------------------------
    def read(self, path, spec, *, resample=True):
        """An image file (anything PIL opens) -> ``C,S,S`` in [-1, 1] with ``image_channels`` channels: the
        shorter side resized to ``S = image_size`` (antialiased), centre-cropped; broken files and
        decompression bombs refused. Training, ``generate``, ``serve`` and ``retrieve`` all read through it,
        so a condition file means what a training image meant."""
        channels = need(spec, "image_channels")
        pixels = open_frames(Path(path), "L" if channels == 1 else "RGB", "image")
        return square(pixels, need(spec, "image_size"))

    def to_shard(self, item, row):
        """uint8 pixels: exact for pixels decoded from 8-bit files, 4x smaller than float."""
        return ((item[self.name] + 1) * 127.5).round().to(torch.uint8)

    def from_shard(self, stored, tokenizer=None):
        return {self.name: stored.float() / 127.5 - 1.0}

    def write(self, value, path, spec=None, tokenizer=None):
        """``C,H,W`` in [-1, 1] -> an 8-bit PNG (grey or RGB)."""
        Image.fromarray(to_uint8(value)).save(path)
        return {}

    # --- drawing ------------------------------------------------------------------------------------
    def log(self, writer, tag, values, step, spec=None, tokenizer=None, conditions=None):
        import torchvision

        grid = torchvision.utils.make_grid(values.detach().float().cpu(), nrow=8, normalize=True, value_range=(-1, 1))
        writer.add_image(tag, grid, step)

    def pictures(self, values, size, *, log_mel=None):
        return frames_as_pictures(values.float().unsqueeze(1), size)
