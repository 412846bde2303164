"""Encoders that turn an image, audio clip or video into a sequence of tokens ``B,N,D`` for a
decoder to cross-attend to.

The pooled encoders beside this file (``image.py``, ``audio.py``, ``video.py``) squeeze an input
into one vector; these keep *where* and *when* each feature is, so attention can pick a region,
a moment or a frame, and the attention can be drawn back over the input. Every encoder says how
its tokens fold back into the input through ``grid`` (``(h, w)`` for images, ``(frames,)`` for
audio, ``(F, h, w)`` for video) after ``num_prefix_tokens`` leading tokens that have no place
(a ViT's class token).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgen_lightning.modalities.audio import LogMel

PATCH_SIZES = (1, 2, 4, 8)
#: an image encoder's stem: ``ConvStem``, or a linear patch embedding (``PatchStem``)
STEMS = ("conv", "patch")


def transformer_encoder(width: int, num_layers: int, num_heads: int, dropout: float) -> nn.TransformerEncoder:
    """Pre-norm transformer layers (``B,N,D -> B,N,D``), the stack every encoder here ends with."""
    if width % num_heads:
        raise ValueError(f"width ({width}) must be divisible by num_heads ({num_heads})")
    layer = nn.TransformerEncoderLayer(width, num_heads, 4 * width, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)


class ConvStem(nn.Module):
    """``B,C,H,W -> B,width,H/p,W/p``: a 3x3 conv at full resolution, then ``log2(p)`` strided convs.

    A convolutional stem rather than a linear patch embedding: on 16-32 px images a patch of
    4x4 pixels holds a stroke fragment, and small convolutions see strokes much faster than a
    linear projection learns them (Xiao et al. 2021, "Early convolutions help transformers see better").
    """

    def __init__(self, channels: int, width: int, patch_size: int) -> None:
        super().__init__()
        if patch_size not in PATCH_SIZES:
            raise ValueError(f"patch_size must be one of {PATCH_SIZES}, got {patch_size}")
        hidden = max(16, width // 2)
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 3, padding=1), nn.GroupNorm(8, hidden), nn.SiLU()]
        for _ in range(int(math.log2(patch_size))):
            layers += [nn.Conv2d(hidden, hidden, 4, stride=2, padding=1), nn.GroupNorm(8, hidden), nn.SiLU()]
        layers.append(nn.Conv2d(hidden, width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)


class PatchStem(nn.Conv2d):
    """``B,C,H,W -> B,width,H/p,W/p``: ViT's linear embedding of each ``p x p`` patch (Dosovitskiy et al.
    2021). On 64 px images the conv stem's full-resolution layers cost most of an encoder's time; a patch
    of flat-coloured shapes needs no stroke detector before the transformer."""

    def __init__(self, channels: int, width: int, patch_size: int) -> None:
        if patch_size not in PATCH_SIZES:
            raise ValueError(f"patch_size must be one of {PATCH_SIZES}, got {patch_size}")
        super().__init__(channels, width, patch_size, stride=patch_size)


class ImageTokenEncoder(nn.Module):
    """``image: B,C,H,W`` in [-1, 1] -> tokens ``B,(H/p)*(W/p),width``: conv stem, learned 2-D
    positions, a transformer.

    Args:
        channels: image channels ``C``.
        image_size: ``H == W``; must be a multiple of ``patch_size``.
        width: token size ``D``.
        num_layers: transformer layers after the stem.
        num_heads: attention heads.
        patch_size: total stride of the stem; one token per ``p x p`` pixels.
        dropout: transformer dropout.
        stem: ``"conv"`` (:class:`ConvStem`) or ``"patch"`` (:class:`PatchStem`).
    """

    num_prefix_tokens = 0

    def __init__(self, channels: int, image_size: int, width: int, num_layers: int = 2, num_heads: int = 4,
                 patch_size: int = 4, dropout: float = 0.0, stem: str = "conv") -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size ({patch_size}) must divide image_size ({image_size})")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
        side = image_size // patch_size
        self.grid: tuple[int, ...] = (side, side)
        self.stem = (ConvStem if stem == "conv" else PatchStem)(channels, width, patch_size)
        self.position = nn.Parameter(0.02 * torch.randn(1, side * side, width))
        self.transformer = transformer_encoder(width, num_layers, num_heads, dropout)
        self.norm = nn.LayerNorm(width)

    def forward(self, image: Tensor) -> Tensor:
        tokens = self.stem(image).flatten(2).transpose(1, 2)  # B,h*w,D in row-major order
        return self.norm(self.transformer(tokens + self.position))


class AudioTokenEncoder(nn.Module):
    """``audio: B,T`` in [-1, 1] -> one token per log-mel frame ``B,frames,width``.

    Convolutions shrink the mel axis by 4 and keep time; each frame's column of features becomes a
    token, so attention picks *when* something sounds while the token says *which* frequencies do
    (a DTMF digit is a pair of simultaneous tones).

    Args:
        sample_rate: audio samples per second (from the datamodule).
        audio_length: samples per clip ``T`` (from the datamodule).
        width: token size ``D``.
        num_layers: blocks of the transformer after the convolutions.
        num_heads: its attention heads.
        dropout: its dropout.
        n_mels: mel bands of the spectrogram.
        frames: about how many spectrogram frames (tokens) a clip gives.
    """

    num_prefix_tokens = 0

    def __init__(self, sample_rate: int, audio_length: int, width: int, num_layers: int = 2, num_heads: int = 4,
                 n_mels: int = 64, frames: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        if n_mels % 4:
            raise ValueError(f"n_mels must be a multiple of 4, got {n_mels}")
        self.log_mel = LogMel(sample_rate, audio_length, n_mels, frames=frames)
        self.grid = (self.log_mel.frames,)
        hidden = 32
        self.convs = nn.Sequential(
            nn.Conv2d(1, hidden, 3, padding=1), nn.GroupNorm(8, hidden), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, stride=(2, 1), padding=1), nn.GroupNorm(8, hidden), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, stride=(2, 1), padding=1), nn.GroupNorm(8, hidden), nn.SiLU(),
        )
        self.project = nn.Linear(hidden * n_mels // 4, width)
        self.position = nn.Parameter(0.02 * torch.randn(1, self.log_mel.frames, width))
        self.transformer = transformer_encoder(width, num_layers, num_heads, dropout)
        self.norm = nn.LayerNorm(width)

    def forward(self, audio: Tensor) -> Tensor:
        features = self.convs(self.log_mel(audio).unsqueeze(1))  # B,C,n_mels/4,frames
        tokens = self.project(features.flatten(1, 2).transpose(1, 2))  # B,frames,D
        return self.norm(self.transformer(tokens + self.position))


class VideoTokenEncoder(nn.Module):
    """``video: B,F,C,H,W`` in [-1, 1] -> tokens ``B,F*(S/p)*(S/p),width``, ``S`` the frame size or
    the glimpse size.

    Each frame and its temporal derivative (central differences over frames, ``torch.gradient``)
    go through a shared conv stem. The derivative makes motion a local pattern, bright where the
    object arrives and dark where it leaves, which a 3x3 filter sees in a single frame.

    With ``glimpse_size``, the stem sees only an ``S x S`` window of each frame centred on the
    frame's centre of brightness (how MNIST centres its digits), and the window's centre, scaled to
    [-1, 1], is embedded into every token of the frame. Why: on a clip of one object sliding across
    a large canvas, a random stem's features at random alignments say almost nothing about what the
    object is, so the decoder never starts to read them and the encoder never gets a useful gradient
    (while the same stem, max-pooled under a classifier head, learns the object quickly). The glimpse
    keeps the object at one alignment, as in a still image, while its track keeps *where* and *which
    way*. Without a glimpse, the whole frame is tokenised.

    The blocks alternate attention over time (the same place across frames) and over space (the
    places of one frame): the divided space-time attention of TimeSformer (Bertasius et al. 2021),
    which costs ``F + N`` per token instead of ``F * N``.

    Args:
        channels: frame channels ``C``.
        num_frames: frames per clip ``F``.
        size: ``H == W`` of a frame.
        width: as :class:`ImageTokenEncoder`.
        num_layers: as :class:`ImageTokenEncoder`; one layer is one temporal plus one spatial attention.
        num_heads: as :class:`ImageTokenEncoder`.
        patch_size: as :class:`ImageTokenEncoder`.
        dropout: as :class:`ImageTokenEncoder`.
        glimpse_size: side of the window centred on each frame's centre of brightness; default: the
            whole frame.
    """

    num_prefix_tokens = 0

    def __init__(self, channels: int, num_frames: int, size: int, width: int, num_layers: int = 2,
                 num_heads: int = 4, patch_size: int = 4, dropout: float = 0.0,
                 glimpse_size: int | None = None) -> None:
        super().__init__()
        if glimpse_size is not None and not 0 < glimpse_size <= size:
            raise ValueError(f"glimpse_size must be in [1, {size}] (the video frame size), got {glimpse_size}")
        window = glimpse_size or size
        if window % patch_size:
            what = "glimpse" if glimpse_size else "video frame"
            raise ValueError(f"patch_size ({patch_size}) must divide the {what} size ({window})")
        side = window // patch_size
        self.glimpse_size = glimpse_size
        self.grid = (num_frames, side, side)
        self.stem = ConvStem(2 * channels, width, patch_size)
        self.space_position = nn.Parameter(0.02 * torch.randn(1, 1, side * side, width))
        self.time_position = nn.Parameter(0.02 * torch.randn(1, num_frames, 1, width))
        self.track = nn.Linear(2, width) if glimpse_size else None
        self.temporal = nn.ModuleList(transformer_encoder(width, 1, num_heads, dropout) for _ in range(num_layers))
        self.spatial = nn.ModuleList(transformer_encoder(width, 1, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(width)

    def windows(self, video: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """What the stem sees of ``video: B,F,C,H,W``: the frames ``B,F,C,S,S`` (the glimpses, or the
        whole frames), their temporal derivative over the whole frames, cut the same way, and, with
        glimpses, the glimpses' centres ``B,F,2`` (row, column) scaled to [-1, 1] over the frame."""
        if not self.glimpse_size:
            return video, torch.gradient(video, dim=1)[0], None
        corners = glimpse_corners(video, self.glimpse_size)  # B,F,2, may reach past the frame
        centres = (corners + self.glimpse_size / 2) / video.shape[-1] * 2 - 1
        margin = self.glimpse_size
        padded = F.pad(video, (margin,) * 4, value=-1.0)
        # the derivative is taken before cutting, so a glimpse still shows the object's leading and trailing edges
        stacked = crop(torch.cat([padded, torch.gradient(padded, dim=1)[0]], 2), corners + margin, self.glimpse_size)
        return *stacked.chunk(2, dim=2), centres

    def forward(self, video: Tensor) -> Tensor:
        batch, frames = video.shape[:2]
        video, motion, centres = self.windows(video)
        position = self.time_position
        if centres is not None:
            position = position + self.track(centres.to(video.dtype)).unsqueeze(2)  # B,F,1,D
        frames_and_motion = torch.cat([video, motion], 2)  # B,F,2C,S,S
        tokens = self.stem(frames_and_motion.flatten(0, 1)).flatten(2).transpose(1, 2)  # B*F,N,D
        tokens = tokens.unflatten(0, (batch, frames)) + self.space_position + position  # B,F,N,D
        places = tokens.shape[2]
        for temporal, spatial in zip(self.temporal, self.spatial):
            tokens = temporal(tokens.transpose(1, 2).flatten(0, 1)).unflatten(0, (batch, places)).transpose(1, 2)
            tokens = spatial(tokens.flatten(0, 1)).unflatten(0, (batch, frames))
        return self.norm(tokens.flatten(1, 2))


def glimpse_corners(video: Tensor, size: int) -> Tensor:
    """``long B,F,2``: the (row, column) top-left corner of a ``size x size`` window centred on each
    frame's centre of brightness (``video: B,F,C,H,W`` in [-1, 1], -1 black); a black frame gets the
    central window. The window may reach up to ``size`` pixels past the frame's edges."""
    weight = ((video.detach().float() + 1) / 2).clamp_min(0).mean(2)  # B,F,H,W
    height, width = weight.shape[-2:]
    mass = weight.sum((2, 3)).clamp_min(1e-6)
    rows = (weight.sum(3) * torch.arange(height, device=video.device)).sum(2) / mass
    cols = (weight.sum(2) * torch.arange(width, device=video.device)).sum(2) / mass
    empty = weight.sum((2, 3)) < 1e-6
    rows, cols = rows.masked_fill(empty, (height - 1) / 2), cols.masked_fill(empty, (width - 1) / 2)
    centres = torch.stack([rows, cols], -1)
    return torch.round(centres - (size - 1) / 2).long()


def crop(video: Tensor, corners: Tensor, size: int) -> Tensor:
    """``B,F,C,H,W`` -> ``B,F,C,size,size``: each frame's window from its ``corners`` (``long B,F,2``)."""
    steps = torch.arange(size, device=video.device)
    rows = (corners[..., :1] + steps)[..., :, None]  # B,F,size,1
    cols = (corners[..., 1:] + steps)[..., None, :]  # B,F,1,size
    batch, frames = torch.meshgrid(torch.arange(video.shape[0], device=video.device),
                                   torch.arange(video.shape[1], device=video.device), indexing="ij")
    picked = video[batch[..., None, None], frames[..., None, None], :, rows, cols]  # B,F,size,size,C
    return picked.permute(0, 1, 4, 2, 3)


class PretrainedImageEncoder(nn.Module):
    """A vision backbone from a local ``save_pretrained`` folder (ViT, DeiT, ConvNeXt, ResNet, ...;
    anything ``transformers.AutoModel`` builds and calls as ``model(pixel_values=...)``), projected
    to ``width``. Nothing is downloaded: the folder is read with ``local_files_only=True``.

    ``image: B,C,H,W`` in [-1, 1] is repeated to 3 channels when grey, resized to the backbone's
    ``image_size`` and normalised with the folder's ``preprocessor_config.json`` mean/std (ImageNet-
    style 0.5/0.5 when absent); the output is the backbone's ``last_hidden_state`` as tokens.

    Args:
        path: the local folder; read only when ``config`` is None.
        width: token size ``D`` after the projection.
        freeze: keep the backbone's weights fixed and its dropout/batch-norm in eval mode.
        config: the backbone's ``config.to_dict()``; rebuilds the architecture without the folder
            (the weights then come from the checkpoint's state_dict).
    """

    def __init__(self, path: str | None, width: int, freeze: bool = True,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if config is None:
            folder = Path(path or "")
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"image_encoder.path: {folder} is not a local transformers model folder "
                                        "(no config.json); save one with model.save_pretrained(folder)")
            self.backbone = AutoModel.from_pretrained(str(folder), local_files_only=True)
            mean, std = _normalisation(folder)
        else:
            config = dict(config)
            self.backbone = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
            mean, std = [0.5] * 3, [0.5] * 3  # replaced by the checkpoint's buffers
        self.config_dict = self.backbone.config.to_dict()
        hidden = getattr(self.backbone.config, "hidden_size", None) or self.backbone.config.hidden_sizes[-1]
        self.input_size = int(getattr(self.backbone.config, "image_size", 224))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.project = nn.Linear(hidden, width)
        self.freeze = freeze
        if freeze:
            self.backbone.requires_grad_(False)
        self.grid: tuple[int, ...] = ()
        self.num_prefix_tokens = 0

    def train(self, mode: bool = True) -> "PretrainedImageEncoder":
        super().train(mode)
        if self.freeze:
            self.backbone.eval()
        return self

    def forward(self, image: Tensor) -> Tensor:
        pixels = image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image
        if pixels.shape[-1] != self.input_size or pixels.shape[-2] != self.input_size:
            pixels = F.interpolate(pixels, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False)
        pixels = ((pixels + 1) / 2 - self.mean) / self.std
        hidden = self.backbone(pixel_values=pixels).last_hidden_state
        if hidden.ndim == 4:  # convolutional backbones: B,C,h,w
            self.grid, self.num_prefix_tokens = tuple(hidden.shape[-2:]), 0
            hidden = hidden.flatten(2).transpose(1, 2)
        else:  # ViT-like: B,N,C, maybe a class token first
            count = hidden.shape[1]
            for prefix in (0, 1, 2):
                side = math.isqrt(count - prefix)
                if side * side == count - prefix:
                    self.grid, self.num_prefix_tokens = (side, side), prefix
                    break
        return self.project(hidden)


def _normalisation(folder: Path) -> tuple[list[float], list[float]]:
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        settings = json.loads(processor.read_text())
        if "image_mean" in settings and "image_std" in settings:
            return list(settings["image_mean"]), list(settings["image_std"])
    return [0.5] * 3, [0.5] * 3
