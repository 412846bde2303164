"""One object per batch key: what image, text, audio, video and label need, in one place.

A modality is not a string to branch on. Each :class:`Modality` owns, for its tensor of the batch
contract (``batch.py``):

- ``check``: dtype and rank of its tensor, with an error naming the key;
- preprocessing: ``AudioModality.log_mel`` (the log-mel frontend), ``AudioModality.fit_length``
  (the crop of a clip), ``random_shift`` of images and videos, ``VideoModality.size`` (the frame side);
- ``encoder`` / ``decoder`` / ``token_encoder``: the default networks, sized from the :class:`DataSpec`;
- ``scored_dimensions``: how many scalars a likelihood of it scores per sample;
- ``to_data``: post-processing back to data (uint8 pixels, waveforms, captions, class indices);
- ``read`` / ``write``: the files ``mmgen generate`` reads as conditions and writes as outputs;
- ``log`` / ``pictures``: how a sample is drawn in TensorBoard.

Families, metrics and callbacks ask ``get_modality(name)`` instead of writing ``if name == "audio"``.
Adding a modality: subclass :class:`Modality`, fill in what applies, and add it to ``REGISTRY``.

Layers are imported inside the factories, so this module imports no model code at import time
(``batch.py`` and ``models/base.py`` import it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from PIL import Image
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

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

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

    def token_encoder(self, spec: Mapping[str, Any], width: int, **options: Any) -> nn.Module:
        """The default encoder of this modality's tensor -> tokens ``B,N,width`` for cross-attention
        (with ``num_prefix_tokens`` and the token ``grid``, ``layers/token_encoders.py``). Options a
        modality has no use for (``patch_size`` for audio, ``n_mels`` for images) are ignored, so a
        family passes all of its own."""
        raise NotImplementedError(f"{self.name}: no token encoder")

    # --- likelihood ---------------------------------------------------------------------------
    def scored_dimensions(self, batch: Mapping[str, Tensor], **options: Any) -> Tensor:
        """Scalars per sample a likelihood of this modality scores: ``B`` float64 (every element)."""
        value = batch[self.name]
        return torch.full((value.shape[0],), float(value[0].numel()), dtype=torch.float64, device=value.device)

    # --- data and files -----------------------------------------------------------------------
    def to_data(self, values: Tensor, spec: Mapping[str, Any] | None = None, tokenizer: Any = None) -> list[Any]:
        """A batch of this modality -> one plain value per sample (what files and reports hold)."""
        return [value for value in values.detach().cpu()]

    def read(self, path: str | Path, spec: Mapping[str, Any]) -> Tensor:
        """A user's file -> one sample (no batch dimension) sized by ``spec``."""
        raise ValueError(f"--{self.name}: {self.name} is not read from files")

    def write(self, value: Any, path: Path, spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write one sample to ``path``; returns extra manifest fields."""
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

    def read(self, path: str | Path, spec: Mapping[str, Any]) -> Tensor:
        """An image file -> ``C,H,W`` in [-1, 1] at ``image_size`` with ``image_channels`` channels, read
        exactly as training reads a manifest's images (shorter side resized, centre-cropped; broken
        files and decompression bombs refused), so a condition file means what a training image meant."""
        from mmgen_lightning.datamodules.manifest import read_image

        path = Path(path)
        try:
            return read_image(path, _need(spec, "image_size"), _need(spec, "image_channels"))
        except (OSError, ValueError) as error:
            raise ValueError(f"--image {path}: {error}") from error

    def write(self, value, path, spec=None):
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

    def write(self, value, path, spec=None, fps: int | None = None):
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

    def read(self, path: str | Path, spec: Mapping[str, Any]) -> Tensor:
        """A WAV/FLAC file -> mono ``T`` in [-1, 1], resampled to ``sample_rate`` and cut or
        zero-padded to ``audio_length``, read exactly as training reads a manifest's audio (empty,
        undecodable and NaN/Inf files refused)."""
        from mmgen_lightning.datamodules.manifest import read_audio

        path = Path(path)
        try:
            return read_audio(path, _need(spec, "sample_rate"), _need(spec, "audio_length"))
        except (OSError, ValueError) as error:
            raise ValueError(f"--audio {path}: {error}") from error

    @staticmethod
    def fit_length(audio: Tensor, length: int) -> Tensor:
        """Cut or zero-pad ``...,T`` audio to ``length`` samples (the crop every clip gets)."""
        return F.pad(audio[..., :length], (0, max(0, length - audio.shape[-1])))

    def write(self, value, path, spec=None):
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
    mask_key: ClassVar[str] = "text_mask"

    def keys(self) -> list[str]:
        return [self.name, self.mask_key]

    def encoder(self, spec, out_dim, width, **options):
        from mmgen_lightning.models.layers.text import TextEncoder

        return TextEncoder(_need(spec, "vocab_size"), _need(spec, "max_text_length"), out_dim, width)

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

    def write(self, value, path, spec=None):
        """``value``: the decoded caption."""
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

    def decoder(self, spec, in_dim, width, hidden: int = 64, **options):
        """Logits ``B,num_classes``."""
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, _need(spec, "num_classes")))

    def scored_dimensions(self, batch, **options):
        label = batch[self.name]
        return torch.ones(label.shape[0], dtype=torch.float64, device=label.device)

    def to_data(self, values, spec=None, tokenizer=None):
        return [int(value) for value in values.detach().cpu()]

    def write(self, value, path, spec=None):
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
