"""One object per batch key: what image, text, audio, video and label need, in one place.

A modality is not a string to branch on. Each :class:`Modality` owns, for its tensor of the batch
contract (``batch.py``):

- ``check``: dtype and rank of its tensor, with an error naming the key;
- preprocessing: ``AudioModality.log_mel`` (the log-mel frontend), ``AudioModality.fit_length``
  (the crop of a clip), ``random_shift`` of images and videos, ``size`` (the side of an image or frame);
- ``encoder`` / ``decoder`` / ``token_encoder``: the default networks, sized from the :class:`DataSpec`;
  ``encoder_inputs``: the batch tensors those encoders read, in order;
- as a condition: ``condition_frontend`` (a parameter-free front end run once per batch, the log-mel
  of audio), ``condition_inputs`` (what its embedder reads), ``condition_embedder``;
- ``conform``: its tensors in another model's terms (resized to its sizes, re-tokenised by its tokenizer);
- ``scored_dimensions``: how many scalars a likelihood of it scores per sample;
- ``to_data``: post-processing back to data (uint8 pixels, waveforms, captions, class indices);
- ``read`` / ``write``: the one reader of its files (manifests, shards, ``generate``, ``serve``,
  ``retrieve`` all read through it) and the writer of ``generate``'s outputs (``extension``);
  ``parse_cell`` / ``columns``: its manifest cells; ``to_shard`` / ``from_shard``: its storage in shards;
- ``log`` / ``pictures``: how a sample is drawn in TensorBoard.

Families, metrics and callbacks ask ``get_modality(name)`` instead of writing ``if name == "audio"``.
Adding a modality: subclass :class:`Modality`, fill in what applies, and add it to ``REGISTRY``.

Layers are imported inside the factories, so this module imports no model code at import time
(``batch.py`` and ``models/base.py`` import it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from PIL import Image, ImageSequence
from torch import Tensor, nn


# --- the data spec ------------------------------------------------------------------------------
@dataclass(eq=False)
class DataSpec(Mapping):
    """Sizes that belong to the data, produced by a datamodule (``MultimodalDataModule.data_spec``)
    and stored in checkpoints as a plain ``dict`` (:meth:`to_dict`), so ``weights_only=True`` loading
    needs no class of ours. Unset fields are ``None`` and read as absent through the ``Mapping`` view
    (``"video_size" in spec``, ``spec.get(...)``, ``spec["..."]``), which keeps code written against
    the old ``dict`` working.

    Attributes:
        dataset: the source's name (``digits``, ``shapes``, ``manifest``, ...), for cache keys and reports.
        modalities: the batch keys the data carries.
        vocab_size, max_text_length: the tokenizer's vocabulary and the padded caption length ``L``.
        image_size, image_channels: side and channels of ``image: B,C,H,W``.
        video_size, num_frames: side and frame count of ``video: B,F,C,H,W`` (side: ``image_size`` if unset).
        sample_rate, audio_length: of ``audio: B,T`` (``T = audio_length``).
        num_classes: label classes.
        attribute_names, attribute_sizes: the columns of ``attributes: B,K`` and their class counts.
        extra: any other key a source gives, kept as is.
    """

    dataset: str | None = None
    modalities: list[str] | None = None
    vocab_size: int | None = None
    max_text_length: int | None = None
    image_size: int | None = None
    image_channels: int | None = None
    video_size: int | None = None
    num_frames: int | None = None
    sample_rate: int | None = None
    audio_length: int | None = None
    num_classes: int | None = None
    attribute_names: list[str] | None = None
    attribute_sizes: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "DataSpec":
        if isinstance(data, DataSpec):
            return data
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        # a size given as None stays a key (in ``extra``), so the Mapping view equals the dict it came from
        known = {k: v for k, v in data.items() if k in names and v is not None}
        for key in ("modalities", "attribute_names", "attribute_sizes"):
            if key in known:
                known[key] = list(known[key])
        return cls(**known, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """The set fields and the extras as a plain ``dict`` (what checkpoints and YAML hold)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra" and getattr(self, f.name) is not None}
        out.update(self.extra)
        return out

    # the Mapping view: only set keys exist
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self.to_dict() == dict(other)

    # the dict operations code written against the plain dict uses; each returns a plain dict
    def copy(self) -> dict[str, Any]:
        return self.to_dict()

    def __or__(self, other: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.to_dict(), **other}

    def __ror__(self, other: Mapping[str, Any]) -> dict[str, Any]:
        return {**other, **self.to_dict()}

    __hash__ = None  # mutable, like the dict it replaces


def _need(spec: Mapping[str, Any], key: str) -> Any:
    """``spec[key]``, or a ``ValueError`` that says where the size should have come from."""
    if spec.get(key) is None:
        raise ValueError(f"data_spec has no {key!r} (it is linked from the datamodule's data_spec; "
                         f"keys present: {sorted(spec)})")
    return spec[key]


# --- preprocessing shared by pixel modalities ---------------------------------------------------
def random_shift(pixels: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift every sample of ``B,...,H,W`` (images or videos in [-1, 1]; a video's frames alike) by
    its own offset in ``[-max_shift, max_shift]`` along y and x, filling the uncovered border with
    the background -1. Offsets are drawn from ``generator`` (default: the global RNG on the
    tensor's device); ``max_shift <= 0`` returns the input and draws nothing."""
    if max_shift <= 0:
        return pixels
    batch, height, width = pixels.shape[0], pixels.shape[-2], pixels.shape[-1]
    padded = F.pad(pixels, (max_shift,) * 4, value=-1.0).flatten(1, -3)  # B,M,H+2s,W+2s
    device = generator.device if generator is not None else pixels.device
    offsets = torch.randint(0, 2 * max_shift + 1, (batch, 2), generator=generator, device=device).to(pixels.device)
    rows = offsets[:, :1] + torch.arange(height, device=pixels.device)  # B,H
    cols = offsets[:, 1:] + torch.arange(width, device=pixels.device)  # B,W
    picked = padded[torch.arange(batch, device=pixels.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2).reshape(pixels.shape)  # advanced indexing put B,H,W first


def _pictures(frames: Tensor, size: int) -> Tensor:
    """``B,F,C,H,W`` in [-1, 1] -> ``B,F,3,size,size`` in [0, 1] (nearest: pixels stay visible)."""
    pictures = F.interpolate(((frames + 1) / 2).clamp(0, 1).flatten(0, 1), size=(size, size), mode="nearest")
    pictures = pictures.unflatten(0, frames.shape[:2])
    if pictures.shape[2] == 1:
        pictures = pictures.expand(-1, -1, 3, -1, -1)
    return pictures.cpu()


def to_uint8(image: Tensor) -> np.ndarray:
    """``C,H,W`` in [-1, 1] -> ``H,W`` or ``H,W,3`` uint8."""
    array = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


# --- file reading shared by pixel modalities ----------------------------------------------------
#: containers PIL cannot decode; named in the error so the user knows to convert them
NEEDS_VIDEO_DECODER = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


def decompression_bomb(error: Exception) -> str:
    # PIL warns above MAX_IMAGE_PIXELS and refuses above twice that; both are refused here, where a file
    # is decoded in a loader worker and a huge one would exhaust memory
    return (f"refused as a possible decompression bomb ({error}); the limit is PIL's Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS} pixels: shrink the file, or raise that limit for files you trust")


def _open_frames(path: Path, mode: str, what: str, every_frame: bool = False) -> Tensor:
    """The first frame (``C,H,W``) or every frame (``F,C,H,W``) of a picture file as uint8, or a ``ValueError``
    saying why not (broken file, decompression bomb)."""
    import torchvision.transforms.v2.functional as TF

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


def _square(pixels: Tensor, size: int) -> Tensor:
    """uint8 ``...,C,H,W`` -> ``...,C,size,size`` in [-1, 1]: shorter side resized (antialiased), centre-cropped."""
    import torchvision.transforms.v2.functional as TF

    return TF.center_crop(TF.resize(pixels, size, antialias=True), size).float() / 127.5 - 1.0


def _resize_frames(pixels: Tensor, size: int, antialias: bool = True) -> Tensor:
    """``...,C,H,W`` (images or videos) resized to ``size x size`` (bilinear); the input when it has that size."""
    if pixels.shape[-1] == size and pixels.shape[-2] == size:
        return pixels
    flat = pixels.flatten(0, -4)  # every frame of every clip, N,C,H,W
    resized = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    return resized.unflatten(0, pixels.shape[:-3])


# --- the modalities -----------------------------------------------------------------------------
class Modality:
    """What one batch key needs. Subclasses set the class attributes and override what applies."""

    name: ClassVar[str] = ""
    #: dtype kind and rank of the batch tensor, ``B`` first
    floating: ClassVar[bool] = True
    ndim: ClassVar[int] = 0
    #: file extension ``generate`` writes
    extension: ClassVar[str] = ""
    #: whether a judge (``metrics/judges.py``) reads samples of it
    judgeable: ClassVar[bool] = False
    #: whether a sample is pixels (``...,C,H,W``), which ``random_shift`` may move
    pixels: ClassVar[bool] = False
    #: whether a sample is a sequence of frames (``B,F,...``)
    frames: ClassVar[bool] = False
    #: whether a manifest row gives it as a file path, decoded by :meth:`read`
    from_files: ClassVar[bool] = False
    #: the manifest columns that give it (``ManifestDataModule``), and what its values are called in messages
    columns: ClassVar[tuple[str, ...]] = ()
    noun: ClassVar[str] = ""
    #: whether :meth:`token_encoder` exists (a sample -> a sequence of tokens)
    has_token_encoder: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.columns = cls.columns or (cls.name,)
        cls.noun = cls.noun or f"{cls.name}s"

    def missing_from_manifest(self) -> str:
        """How a manifest without it is described: ``"no captions (no 'text' or 'caption' column)"``."""
        return f"no {self.noun} (no {' or '.join(repr(c) for c in self.columns)} column)"

    def keys(self) -> list[str]:
        """The batch keys this modality occupies (text brings its mask)."""
        return [self.name]

    # --- checks -------------------------------------------------------------------------------
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

    # --- networks -----------------------------------------------------------------------------
    def encoder(self, spec: Mapping[str, Any], out_dim: int, width: int, **options: Any) -> nn.Module:
        """The default encoder of this modality's tensor -> ``B,out_dim``."""
        raise NotImplementedError(f"{self.name}: no default encoder")

    def decoder(self, spec: Mapping[str, Any], in_dim: int, width: int, **options: Any) -> nn.Module:
        """The default decoder ``B,in_dim`` -> this modality's tensor (or its logits / log-mel)."""
        raise NotImplementedError(f"{self.name}: no default decoder")

    def encoder_inputs(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        """The tensors its encoders take, in order: ``encoder(*modality.encoder_inputs(batch))``."""
        return [batch[key] for key in self.keys()]

    def token_encoder(self, spec: Mapping[str, Any], width: int, **options: Any) -> nn.Module:
        """The default encoder of this modality's tensor -> tokens ``B,N,width`` for cross-attention
        (with ``num_prefix_tokens`` and the token ``grid``, ``layers/token_encoders.py``). Options a
        modality has no use for (``patch_size`` for audio, ``n_mels`` for images) are ignored, so a
        family passes all of its own."""
        raise NotImplementedError(f"{self.name}: no token encoder")

    # --- as a condition -----------------------------------------------------------------------
    def condition_frontend(self, spec: Mapping[str, Any], **options: Any) -> nn.Module | None:
        """A parameter-free front end a family runs once per batch for all of its condition embedders
        (``None``: the embedders read the batch tensors themselves)."""
        return None

    def condition_inputs(self, batch: Mapping[str, Tensor], frontend: nn.Module | None = None) -> dict[str, Tensor]:
        """What :meth:`condition_embedder` reads from a batch (through ``frontend``, when there is one), beside
        this modality's own entries (which other readers of the conditions, an aligner, take)."""
        return {key: batch[key] for key in self.keys()}

    def condition_embedder(self, spec: Mapping[str, Any], dim: int, **options: Any) -> nn.Module:
        """A fresh embedder of :meth:`condition_inputs` -> ``B,dim`` (``layers/conditioning.py``). Options a
        modality has no use for are ignored, so a family passes all of its own."""
        raise NotImplementedError(f"{self.name}: no condition embedder")

    def conform(self, values: Mapping[str, Tensor], spec: Mapping[str, Any], tokenizer: Any = None,
                to_tokenizer: Any = None, antialias: bool = True) -> dict[str, Tensor]:
        """This modality's entries of ``values`` (one model's samples or data) in the terms of another model
        sized by ``spec``: frames resized to its size (bilinear, ``antialias``), captions decoded with
        ``tokenizer`` and encoded with ``to_tokenizer`` (when both are given), floats as float32."""
        return {key: values[key].float() if self.floating else values[key] for key in self.keys()}

    # --- likelihood ---------------------------------------------------------------------------
    def scored_dimensions(self, batch: Mapping[str, Tensor], **options: Any) -> Tensor:
        """Scalars per sample a likelihood of this modality scores: ``B`` float64 (every element)."""
        value = batch[self.name]
        return torch.full((value.shape[0],), float(value[0].numel()), dtype=torch.float64, device=value.device)

    # --- data and files -----------------------------------------------------------------------
    def to_data(self, values: Tensor, spec: Mapping[str, Any] | None = None, tokenizer: Any = None) -> list[Any]:
        """A batch of this modality -> one plain value per sample (what files and reports hold)."""
        return [value for value in values.detach().cpu()]

    def read(self, path: str | Path, spec: Mapping[str, Any], **options: Any) -> Tensor:
        """A user's file -> one sample (no batch dimension) sized by ``spec``, or a ``ValueError`` saying why
        not (the caller names where: the manifest line, the option). The one reader of this modality."""
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

    def log(self, writer: Any, tag: str, values: Tensor, step: int, spec: Mapping[str, Any] | None = None,
            tokenizer: Any = None, conditions: Mapping[str, Tensor] | None = None) -> None:
        """Draw a batch of samples in TensorBoard (a ``SummaryWriter``) under ``tag``."""
        raise NotImplementedError(f"{self.name}: no TensorBoard view")

    def pictures(self, values: Tensor, size: int, **options: Any) -> Tensor:
        """Samples as pictures to draw on: ``B,frames,3,size,size`` in [0, 1]."""
        raise NotImplementedError(f"{self.name}: not drawn as pictures")


class ImageModality(Modality):
    """``image: float B,C,H,W`` in [-1, 1]."""

    name, ndim, extension, judgeable, pixels = "image", 4, ".png", True, True
    from_files = has_token_encoder = True

    @staticmethod
    def size(spec: Mapping[str, Any]) -> int:
        """Side of an image: ``image_size``."""
        return _need(spec, "image_size")

    def encoder(self, spec, out_dim, width, **options):
        from mmgen_lightning.models.layers.image import ImageEncoder

        return ImageEncoder(_need(spec, "image_channels"), _need(spec, "image_size"), out_dim, width)

    def token_encoder(self, spec, width, num_layers=2, num_heads=4, dropout=0.0, patch_size: int = 4, **options):
        """``B,C,H,W`` -> tokens ``B,N,width`` (a patch transformer, ``layers/token_encoders.py``)."""
        from mmgen_lightning.models.layers.token_encoders import ImageTokenEncoder

        return ImageTokenEncoder(_need(spec, "image_channels"), _need(spec, "image_size"), width, num_layers=num_layers,
                                 num_heads=num_heads, patch_size=patch_size, dropout=dropout)

    def decoder(self, spec, in_dim, width, **options):
        from mmgen_lightning.models.layers.image import ImageDecoder

        return ImageDecoder(in_dim, _need(spec, "image_channels"), _need(spec, "image_size"), width)

    def to_data(self, values, spec=None, tokenizer=None):
        return [to_uint8(image) for image in values]

    def read(self, path, spec, **options):
        """An image file (anything PIL opens) -> ``C,S,S`` in [-1, 1] with ``image_channels`` channels: the
        shorter side resized to ``S = image_size`` (antialiased), centre-cropped; broken files and
        decompression bombs refused. Training, ``generate``, ``serve`` and ``retrieve`` all read through it,
        so a condition file means what a training image meant."""
        channels = _need(spec, "image_channels")
        pixels = _open_frames(Path(path), "L" if channels == 1 else "RGB", "image")
        return _square(pixels, _need(spec, "image_size"))

    def conform(self, values, spec, tokenizer=None, to_tokenizer=None, antialias=True):
        return {self.name: _resize_frames(values[self.name].float(), _need(spec, "image_size"), antialias)}

    def to_shard(self, item, row):
        """uint8 pixels: exact for pixels decoded from 8-bit files, 4x smaller than float."""
        return ((item[self.name] + 1) * 127.5).round().to(torch.uint8)

    def from_shard(self, stored, tokenizer=None):
        return {self.name: stored.float() / 127.5 - 1.0}

    def write(self, value, path, spec=None, tokenizer=None):
        """``C,H,W`` in [-1, 1] -> an 8-bit PNG (grey or RGB)."""
        Image.fromarray(to_uint8(value)).save(path)
        return {}

    def log(self, writer, tag, values, step, spec=None, tokenizer=None, conditions=None):
        import torchvision

        grid = torchvision.utils.make_grid(values.detach().float().cpu(), nrow=8, normalize=True, value_range=(-1, 1))
        writer.add_image(tag, grid, step)

    def pictures(self, values, size, **options):
        return _pictures(values.float().unsqueeze(1), size)


class VideoModality(Modality):
    """``video: float B,F,C,H,W`` in [-1, 1]; frames of side ``size(spec)``."""

    name, ndim, extension, judgeable, pixels, frames = "video", 5, ".gif", True, True, True
    from_files = has_token_encoder = True
    fps: ClassVar[int] = 8

    @staticmethod
    def size(spec: Mapping[str, Any]) -> int:
        """Side of a frame: ``video_size``, or ``image_size`` for data that gives none."""
        return spec.get("video_size") or _need(spec, "image_size")

    def encoder(self, spec, out_dim, width, **options):
        from mmgen_lightning.models.layers.video import VideoEncoder

        return VideoEncoder(_need(spec, "image_channels"), _need(spec, "num_frames"), self.size(spec), out_dim, width)

    def token_encoder(self, spec, width, num_layers=2, num_heads=4, dropout=0.0, patch_size: int = 4,
                      glimpse_size: int | None = None, **options):
        """``B,F,C,H,W`` -> space-time tokens ``B,N,width`` (``layers/token_encoders.py``); with
        ``glimpse_size``, windows of each frame centred on its content."""
        from mmgen_lightning.models.layers.token_encoders import VideoTokenEncoder

        return VideoTokenEncoder(_need(spec, "image_channels"), _need(spec, "num_frames"), self.size(spec), width,
                                 num_layers=num_layers, num_heads=num_heads, patch_size=patch_size, dropout=dropout,
                                 glimpse_size=glimpse_size)

    def decoder(self, spec, in_dim, width, **options):
        from mmgen_lightning.models.layers.video import VideoDecoder

        return VideoDecoder(in_dim, _need(spec, "image_channels"), _need(spec, "num_frames"), self.size(spec), width)

    def to_data(self, values, spec=None, tokenizer=None):
        return [[to_uint8(frame) for frame in clip] for clip in values]

    def read(self, path, spec, **options):
        """An animated GIF/WebP or a folder of frame images (sorted by name) -> ``F,C,S,S`` in [-1, 1]:
        ``num_frames`` frames spread evenly over the clip (repeated when it is shorter), each read as
        :meth:`ImageModality.read` reads an image, at ``S = size(spec)``. MP4 and other containers need a
        video decoder (PyAV/FFmpeg), which is not shipped: the error says to convert them."""
        path, channels, num_frames = Path(path), _need(spec, "image_channels"), _need(spec, "num_frames")
        if path.suffix.lower() in NEEDS_VIDEO_DECODER:
            raise ValueError(f"{path.suffix} needs a video decoder (PyAV/FFmpeg), which is not installed; "
                             "convert the clip to an animated GIF or a folder of frame images")
        frames = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else None
        if frames is not None and not frames:
            raise ValueError("the frame folder is empty")
        if frames is None:
            frames = _open_frames(path, "L" if channels == 1 else "RGB", "video", every_frame=True)
        picks = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
        if isinstance(frames, Tensor):
            return _square(frames[picks], self.size(spec))
        image_spec = {"image_size": self.size(spec), "image_channels": channels}
        return torch.stack([REGISTRY["image"].read(frames[i], image_spec) for i in picks])

    def conform(self, values, spec, tokenizer=None, to_tokenizer=None, antialias=True):
        return {self.name: _resize_frames(values[self.name].float(), self.size(spec), antialias)}

    to_shard, from_shard = ImageModality.to_shard, ImageModality.from_shard  # uint8 frames

    def write(self, value, path, spec=None, tokenizer=None, fps: int | None = None):
        """``F,C,H,W`` in [-1, 1] -> a looping GIF at ``fps`` frames per second."""
        frames = [Image.fromarray(to_uint8(frame)) for frame in value]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / (fps or self.fps)), loop=0)
        return {}

    def log(self, writer, tag, values, step, spec=None, tokenizer=None, conditions=None):
        import torchvision

        values = values.detach().float().cpu()
        frames = values.flatten(0, 1)  # each row of the grid is one clip
        grid = torchvision.utils.make_grid(frames, nrow=values.shape[1], normalize=True, value_range=(-1, 1))
        writer.add_image(tag, grid, step)

    def pictures(self, values, size, **options):
        return _pictures(values.float(), size)


class AudioModality(Modality):
    """``audio: float B,T`` waveform in [-1, 1] at the data's ``sample_rate``; models read it as a
    scaled log-mel spectrogram (:meth:`log_mel`)."""

    name, ndim, extension, judgeable = "audio", 2, ".wav", True
    noun = "audio files"
    from_files = has_token_encoder = True
    default_sample_rate: ClassVar[int] = 16000
    logged_clips: ClassVar[int] = 4

    @staticmethod
    def log_mel(spec: Mapping[str, Any], n_mels: int = 64, frames: int = 32) -> nn.Module:
        """The log-mel frontend ``B,T -> B,n_mels,frames'`` for this data's audio (``layers/audio.py``)."""
        from mmgen_lightning.models.layers.audio import LogMel

        return LogMel(_need(spec, "sample_rate"), _need(spec, "audio_length"), n_mels, frames=frames)

    def encoder(self, spec, out_dim, width, n_mels: int = 64, **options):
        """Reads the log-mel spectrogram (``B,n_mels,frames``), not the waveform."""
        from mmgen_lightning.models.layers.audio import AudioEncoder

        return AudioEncoder(n_mels, out_dim, width)

    def token_encoder(self, spec, width, num_layers=2, num_heads=4, dropout=0.0, n_mels: int = 64, frames: int = 32,
                      **options):
        """``B,T`` -> one token per log-mel frame ``B,N,width`` (``layers/token_encoders.py``)."""
        from mmgen_lightning.models.layers.token_encoders import AudioTokenEncoder

        return AudioTokenEncoder(_need(spec, "sample_rate"), _need(spec, "audio_length"), width, num_layers=num_layers,
                                 num_heads=num_heads, n_mels=n_mels, frames=frames, dropout=dropout)

    def condition_frontend(self, spec, n_mels: int = 64, frames: int = 32, **options):
        """:meth:`log_mel`: the spectrogram is computed once per batch for every embedder."""
        return self.log_mel(spec, n_mels, frames)

    def condition_inputs(self, batch, frontend=None):
        """The clip and its ``log_mel: B,n_mels,frames`` (``frontend``: :meth:`condition_frontend`), which
        the embedders read."""
        if frontend is None:
            raise ValueError("audio conditions are read through their log-mel frontend (condition_frontend)")
        return {self.name: batch[self.name], "log_mel": frontend(batch[self.name])}

    def condition_embedder(self, spec, dim, n_mels: int = 64, audio_width: int = 32, **options):
        """Reads ``log_mel`` (:meth:`condition_inputs`): convolutions over time of ``audio_width`` channels."""
        from mmgen_lightning.models.layers.conditioning import AudioEmbedder

        return AudioEmbedder(n_mels, dim, audio_width)

    def decoder(self, spec, in_dim, width, n_mels: int = 64, frames: int = 32, **options):
        """Decodes to the log-mel spectrogram of :meth:`log_mel` with the same ``n_mels``/``frames``."""
        from mmgen_lightning.models.layers.audio import MelDecoder

        return MelDecoder(in_dim, n_mels, self.log_mel(spec, n_mels, frames).frames, width)

    def scored_dimensions(self, batch, spectrogram_dims: int | None = None, **options):
        """Samples of the waveform, or ``spectrogram_dims`` (``n_mels * frames``) when the likelihood
        is defined on the log-mel spectrogram."""
        if spectrogram_dims is None:
            return super().scored_dimensions(batch)
        audio = batch[self.name]
        return torch.full((audio.shape[0],), float(spectrogram_dims), dtype=torch.float64, device=audio.device)

    def to_data(self, values, spec=None, tokenizer=None):
        return [clip.float().clamp(-1, 1).cpu().numpy() for clip in values]

    def read(self, path, spec, resample: bool = True, **options):
        """A WAV/FLAC/OGG file (``soundfile``; ``torchaudio.load`` would need FFmpeg) -> ``T`` in [-1, 1]:
        mixed to mono, resampled to ``sample_rate`` (or refused when ``resample`` is off and the rates
        differ), cut or zero-padded to ``audio_length`` (:meth:`fit_length`); empty, undecodable and
        NaN/Inf files refused."""
        import torchaudio.functional as AF

        sample_rate = _need(spec, "sample_rate")
        try:
            waveform, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError) as error:
            raise ValueError(f"cannot decode the audio ({error})") from error
        if waveform.shape[0] == 0:
            raise ValueError("the audio has no samples")
        if not np.isfinite(waveform).all():
            raise ValueError("the audio holds NaN or Inf samples")
        if file_rate != sample_rate and not resample:
            raise ValueError(f"sample rate is {file_rate} Hz, expected {sample_rate} Hz (resample is off)")
        audio = torch.from_numpy(waveform.mean(axis=1))
        if file_rate != sample_rate:
            audio = AF.resample(audio, file_rate, sample_rate)
        # float WAVs may peak above full scale; the batch contract is [-1, 1]
        return self.fit_length(audio, _need(spec, "audio_length")).clamp(-1.0, 1.0)

    @staticmethod
    def fit_length(audio: Tensor, length: int) -> Tensor:
        """Cut or zero-pad ``...,T`` audio to ``length`` samples (the crop every clip gets)."""
        return F.pad(audio[..., :length], (0, max(0, length - audio.shape[-1])))

    def write(self, value, path, spec=None, tokenizer=None):
        """``T`` in [-1, 1] -> a 16-bit PCM WAV at the spec's ``sample_rate``."""
        if spec is None or spec.get("sample_rate") is None:
            raise ValueError("write_samples: sample_rate is required to write audio")
        soundfile.write(str(path), value.float().clamp(-1, 1).cpu().numpy(), _need(spec, "sample_rate"), subtype="PCM_16")
        return {}

    def log(self, writer, tag, values, step, spec=None, tokenizer=None, conditions=None):
        rate = (spec or {}).get("sample_rate") or self.default_sample_rate
        for index, clip in enumerate(values.detach().float().cpu()[: self.logged_clips]):
            writer.add_audio(f"{tag}/{index}", clip.clamp(-1, 1)[None], step, sample_rate=rate)

    def pictures(self, values, size, log_mel: nn.Module | None = None, **options):
        """The log-mel spectrogram (``log_mel``: the frontend the model reads through), low bands at
        the bottom, each clip scaled to [0, 1]."""
        if log_mel is None:
            raise ValueError("audio pictures need the log_mel frontend the model reads through")
        spectrogram = log_mel(values).float().flip(1)  # B,n_mels,frames, low bands at the bottom
        low = spectrogram.amin((1, 2), keepdim=True)
        spectrogram = (spectrogram - low) / (spectrogram.amax((1, 2), keepdim=True) - low).clamp_min(1e-6)
        pictures = F.interpolate(spectrogram.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
        return pictures.unsqueeze(1).expand(-1, -1, 3, -1, -1).cpu()


class TextModality(Modality):
    """``text: long B,L`` token ids ``[BOS] ... [EOS] [PAD]...`` of the data's tokenizer, with
    ``text_mask: bool B,L`` (True on real tokens) beside it in the batch."""

    name, ndim, floating, extension = "text", 2, False, ".txt"
    columns, noun = ("text", "caption"), "captions"
    mask_key: ClassVar[str] = "text_mask"

    def keys(self) -> list[str]:
        return [self.name, self.mask_key]

    def encoder(self, spec, out_dim, width, num_layers: int = 1, num_heads: int = 4, **options):
        """``text, text_mask`` -> ``B,out_dim``: a masked mean of a small transformer (``layers/text.py``)."""
        from mmgen_lightning.models.layers.text import TextEncoder

        return TextEncoder(_need(spec, "vocab_size"), _need(spec, "max_text_length"), out_dim, width, num_layers,
                           num_heads)

    def condition_embedder(self, spec, dim, text_width: int = 64, text_layers: int = 1, **options):
        from mmgen_lightning.models.layers.conditioning import TextEmbedder

        return TextEmbedder(_need(spec, "vocab_size"), _need(spec, "max_text_length"), dim, text_width, text_layers)

    def parse_cell(self, value):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"the caption is empty: {value!r}")
        return value

    def to_shard(self, item, row):
        """The caption itself, so shards can be read with another tokenizer."""
        return row[self.name]

    def from_shard(self, stored, tokenizer=None):
        encoded = tokenizer.encode(stored)
        return {key: encoded[key][0] for key in self.keys()}

    def conform(self, values, spec, tokenizer=None, to_tokenizer=None, antialias=True):
        """Captions re-tokenised by ``to_tokenizer`` (decoded with ``tokenizer``); as they are without both."""
        if tokenizer is None or to_tokenizer is None:
            return super().conform(values, spec)
        return to_tokenizer.encode(tokenizer.decode(values[self.name].cpu()))

    def decoder(self, spec, in_dim, width, **options):
        from mmgen_lightning.models.layers.text import GRUTextDecoder

        return GRUTextDecoder(_need(spec, "vocab_size"), in_dim, width)

    def scored_dimensions(self, batch, **options):
        """Real tokens after ``[BOS]`` (the ones a likelihood predicts)."""
        return batch[self.mask_key][:, 1:].sum(1).double()

    def to_data(self, values, spec=None, tokenizer=None):
        if tokenizer is None:
            raise ValueError("text: decoding token ids needs the tokenizer (the checkpoint carries it)")
        return tokenizer.decode(values.detach().long().cpu())

    def write(self, value, path, spec=None, tokenizer=None):
        """``value``: the caption, or its token ids ``L`` (decoded with ``tokenizer``)."""
        if isinstance(value, Tensor):
            value = self.to_data(value[None], tokenizer=tokenizer)[0]
        Path(path).write_text(value + "\n", encoding="utf-8")
        return {"text": value}

    def log(self, writer, tag, values, step, spec=None, tokenizer=None, conditions=None):
        captions = self.to_data(values, tokenizer=tokenizer)
        sources = (tokenizer.decode(conditions["text"].cpu()) if conditions is not None and "text" in conditions
                   else [""] * len(captions))
        lines = [f"| {i} | {src} | {out} |" for i, (src, out) in enumerate(zip(sources, captions))]
        writer.add_text(tag, "| # | condition | generated |\n|---|---|---|\n" + "\n".join(lines), step)


class LabelModality(Modality):
    """``label: long B`` class index in ``[0, num_classes)``."""

    name, ndim, floating, extension = "label", 1, False, ".txt"

    def encoder(self, spec, out_dim, width, **options):
        return nn.Embedding(_need(spec, "num_classes"), out_dim)

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

    def condition_embedder(self, spec, dim, **options):
        from mmgen_lightning.models.layers.conditioning import LabelEmbedder

        return LabelEmbedder(_need(spec, "num_classes"), dim)

    def decoder(self, spec, in_dim, width, hidden: int = 64, **options):
        """Logits ``B,num_classes``."""
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, _need(spec, "num_classes")))

    def scored_dimensions(self, batch, **options):
        label = batch[self.name]
        return torch.ones(label.shape[0], dtype=torch.float64, device=label.device)

    def to_data(self, values, spec=None, tokenizer=None):
        return [int(value) for value in values.detach().cpu()]

    def write(self, value, path, spec=None, tokenizer=None):
        Path(path).write_text(f"{int(value)}\n", encoding="utf-8")
        return {"label": int(value)}

    def log(self, writer, tag, values, step, spec=None, tokenizer=None, conditions=None):
        writer.add_text(tag, ", ".join(str(v) for v in self.to_data(values)), step)


#: every modality, by batch key, in the batch contract's order
REGISTRY: dict[str, Modality] = {m.name: m for m in (ImageModality(), TextModality(), AudioModality(),
                                                      VideoModality(), LabelModality())}
#: the modalities a model can generate or condition on
MODALITIES: tuple[str, ...] = tuple(REGISTRY)
#: modalities a judge reads (images, audio, video)
JUDGEABLE: tuple[str, ...] = tuple(name for name, m in REGISTRY.items() if m.judgeable)


def get_modality(name: str) -> Modality:
    """The :class:`Modality` of a batch key, or a ``ValueError`` naming the allowed ones."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown modality {name!r}; allowed: {', '.join(REGISTRY)}") from None


def batch_keys(modalities: Any) -> list[str]:
    """Every batch key of ``modalities``, in order: ``["image", "text", "text_mask"]`` for image and text."""
    return [key for name in modalities for key in get_modality(name).keys()]


def scored_dimensions(batch: Mapping[str, Tensor], modalities: Any, **options: Any) -> Tensor:
    """Scalars per sample a likelihood of ``modalities`` scores: ``B`` float64, the sum of each
    modality's count (``options`` reach every modality, e.g. ``spectrogram_dims`` for audio)."""
    reference = next(iter(batch.values()))
    dims = torch.zeros(reference.shape[0], dtype=torch.float64, device=reference.device)
    for name in modalities:
        dims += get_modality(name).scored_dimensions(batch, **options)
    return dims
