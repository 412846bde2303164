"""A modality's files: the one reader of its files, the writer of ``generate``'s outputs, its manifest
cells and its storage in litdata shards; and the picture decoding image and video share."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image, ImageSequence
from torch import Tensor

#: containers PIL cannot decode; named in the error so the user knows to convert them
NEEDS_VIDEO_DECODER = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


class FileFormat:
    """Mixed into a :class:`~.base.Modality`: how its samples are read, written and stored.

    Manifests (``ManifestDataModule``), shards (``mmgen shard``), ``generate``, ``serve`` and ``retrieve``
    all go through these methods, so a file means the same thing on every path."""

    #: file extension ``generate`` writes
    extension: ClassVar[str] = ""
    #: whether a manifest row gives it as a file path, decoded by :meth:`read`
    from_files: ClassVar[bool] = False
    #: the manifest columns that give it, and what its values are called in messages
    columns: ClassVar[tuple[str, ...]] = ()
    noun: ClassVar[str] = ""

    def missing_from_manifest(self) -> str:
        """How a manifest without it is described: ``"no captions (no 'text' or 'caption' column)"``."""
        return f"no {self.noun} (no {' or '.join(repr(c) for c in self.columns)} column)"

    def read(self, path: str | Path, spec: Mapping[str, Any], *, resample: bool = True) -> Tensor:
        """A user's file -> one sample (no batch dimension) sized by ``spec``, or a ``ValueError`` saying why
        not (the caller names where: the manifest line, the option). ``resample`` (audio): whether a file at
        another sample rate is resampled or refused."""
        raise ValueError(f"{self.name} is not read from files")

    def parse_cell(self, value: Any) -> Any:
        """A manifest cell of a modality not read from files -> the value its rows keep, or a ``ValueError``
        saying why not (the manifest names the line)."""
        raise ValueError(f"{self.name} is read from files, not from a manifest cell")

    def to_shard(self, item: Mapping[str, Tensor], row: Mapping[str, Any]) -> Any:
        """What a litdata shard (``mmgen shard``) stores of a decoded ``item`` of manifest ``row``."""
        return item[self.name]

    def from_shard(self, stored: Any, tokenizer: Any = None) -> dict[str, Tensor]:
        """A stored value -> this modality's entries of a batch-contract item."""
        return {self.name: stored}

    def write(self, value: Any, path: Path, spec: Mapping[str, Any] | None = None,
              tokenizer: Any = None) -> dict[str, Any]:
        """Write one sample (no batch dimension) to ``path`` (named with :attr:`extension`); returns the extra
        fields of its ``manifest.jsonl`` row. ``spec`` gives sizes a file needs, ``tokenizer`` decodes captions."""
        raise NotImplementedError(f"{self.name}: no writer")


def decompression_bomb(error: Exception) -> str:
    # PIL warns above MAX_IMAGE_PIXELS and refuses above twice that; both are refused here, where a file
    # is decoded in a loader worker and a huge one would exhaust memory
    return (f"refused as a possible decompression bomb ({error}); the limit is PIL's Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS} pixels: shrink the file, or raise that limit for files you trust")


def open_frames(path: Path, mode: str, what: str, every_frame: bool = False) -> Tensor:
    """The first frame (``C,H,W``) or every frame (``F,C,H,W``) of a picture file as uint8, or a ``ValueError``
    saying why not (broken file, decompression bomb)."""
    import torchvision.transforms.v2.functional as TF  # here, not at the top: torchvision is slow to import

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as picture:
                if not every_frame:
                    return TF.pil_to_tensor(picture.convert(mode))
                return torch.stack([TF.pil_to_tensor(frame.convert(mode)) for frame in ImageSequence.Iterator(picture)])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(decompression_bomb(error)) from error
    except (OSError, ValueError, SyntaxError) as error:  # PIL raises all three on broken files
        raise ValueError(f"cannot decode the {what} ({error})") from error


def square(pixels: Tensor, size: int) -> Tensor:
    """uint8 ``...,C,H,W`` -> ``...,C,size,size`` in [-1, 1]: shorter side resized (antialiased), centre-cropped."""
    import torchvision.transforms.v2.functional as TF

    return TF.center_crop(TF.resize(pixels, size, antialias=True), size).float() / 127.5 - 1.0
