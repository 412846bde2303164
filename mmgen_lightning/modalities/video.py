"""``video: float B,F,C,H,W`` in [-1, 1]."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mmgen_lightning.modalities.base import Modality
from mmgen_lightning.modalities.files import NEEDS_VIDEO_DECODER, FileFormat, open_frames, square
from mmgen_lightning.modalities.image import ImageModality
from mmgen_lightning.modalities.pixels import resize_frames, to_uint8
from mmgen_lightning.modalities.spec import need
from mmgen_lightning.modalities.tensorboard import TensorBoardView, frames_as_pictures


class VideoModality(Modality, FileFormat, TensorBoardView):
    """``video: float B,F,C,H,W`` in [-1, 1]: ``F = num_frames`` frames of side :meth:`size`."""

    name, ndim, judgeable, pixels, frames = "video", 5, True, True, True
    extension, from_files, columns, noun = ".gif", True, ("video",), "videos"
    #: frame rate of the GIFs ``generate`` writes
    fps: ClassVar[int] = 8

    @staticmethod
    def size(spec: Mapping[str, Any]) -> int:
        """Side of a frame: ``video_size``, or ``image_size`` for data that gives none."""
        return spec.get("video_size") or need(spec, "image_size")

    def to_data(self, values, spec=None, tokenizer=None):
        return [[to_uint8(frame) for frame in clip] for clip in values]

    def conform(self, values, spec, tokenizer=None, to_tokenizer=None, antialias=True):
        return {self.name: resize_frames(values[self.name].float(), self.size(spec), antialias)}

    # --- files --------------------------------------------------------------------------------------
    def read(self, path, spec, *, resample=True):
        """An animated GIF/WebP or a folder of frame images (sorted by name) -> ``F,C,S,S`` in [-1, 1]:
        ``num_frames`` frames spread evenly over the clip (repeated when it is shorter), each read as
        :meth:`ImageModality.read` reads an image, at ``S = size(spec)``. MP4 and other containers need a
        video decoder (PyAV/FFmpeg), which is not shipped: the error says to convert them."""
        path, channels, num_frames = Path(path), need(spec, "image_channels"), need(spec, "num_frames")
        if path.suffix.lower() in NEEDS_VIDEO_DECODER:
            raise ValueError(f"{path.suffix} needs a video decoder (PyAV/FFmpeg), which is not installed; "
                             "convert the clip to an animated GIF or a folder of frame images")
        frames = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else None
        if frames is not None and not frames:
            raise ValueError("the frame folder is empty")
        if frames is None:
            frames = open_frames(path, "L" if channels == 1 else "RGB", "video", every_frame=True)
        picks = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
        if isinstance(frames, Tensor):
            return square(frames[picks], self.size(spec))
        image_spec = {"image_size": self.size(spec), "image_channels": channels}
        return torch.stack([ImageModality().read(frames[i], image_spec) for i in picks])

    to_shard, from_shard = ImageModality.to_shard, ImageModality.from_shard  # uint8 frames

    def write(self, value, path, spec=None, tokenizer=None, fps: int | None = None):
        """``F,C,H,W`` in [-1, 1] -> a looping GIF at ``fps`` frames per second."""
        frames = [Image.fromarray(to_uint8(frame)) for frame in value]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / (fps or self.fps)), loop=0)
        return {}

    # --- drawing ------------------------------------------------------------------------------------
    def log(self, writer, tag, values, step, spec=None, tokenizer=None, conditions=None):
        import torchvision

        values = values.detach().float().cpu()
        frames = values.flatten(0, 1)  # each row of the grid is one clip
        grid = torchvision.utils.make_grid(frames, nrow=values.shape[1], normalize=True, value_range=(-1, 1))
        writer.add_image(tag, grid, step)

    def pictures(self, values, size, *, log_mel=None):
        return frames_as_pictures(values.float(), size)
