"""Each modality's default networks, sized from the data spec: what a family builds for a modality it
knows nothing particular about.

Every factory picks the modality's builder from a small table and takes its options as keyword
arguments: the union of what the modalities read, each documented with the modalities that read it, so
a family may pass all of its own and a misspelt option is a ``TypeError``. The audio networks read the
log-mel spectrogram of :meth:`AudioModality.log_mel <mmgen_lightning.modalities.audio.AudioModality.log_mel>`
(a parameter-free frontend, which stays with the modality), except the token encoder, which holds its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from mmgen_lightning.modalities import AudioModality, Modality, VideoModality, need
from mmgen_lightning.models.layers.audio import AudioEncoder, MelDecoder
from mmgen_lightning.models.layers.conditioning import AudioEmbedder, LabelEmbedder, TextEmbedder
from mmgen_lightning.models.layers.image import ImageDecoder, ImageEncoder
from mmgen_lightning.models.layers.text import GRUTextDecoder, TextEncoder
from mmgen_lightning.models.layers.token_encoders import AudioTokenEncoder, ImageTokenEncoder, VideoTokenEncoder
from mmgen_lightning.models.layers.video import VideoDecoder, VideoEncoder

#: the modalities :func:`token_encoder` builds for (a sample -> a sequence of tokens)
TOKEN_ENCODED = ("image", "audio", "video")


def _build(builders: dict[str, Callable[[], nn.Module]], modality: Modality, what: str) -> nn.Module:
    if modality.name not in builders:
        raise NotImplementedError(f"{modality.name}: no {what}")
    return builders[modality.name]()


def encoder(modality: Modality, spec: Mapping[str, Any], out_dim: int, width: int, *, n_mels: int = 64,
            num_layers: int = 1, num_heads: int = 4) -> nn.Module:
    """The default encoder of ``modality.encoder_inputs(batch)`` -> ``B,out_dim``.

    Args:
        n_mels: audio: mel bands of the log-mel spectrogram ``B,n_mels,frames`` it reads (not the waveform).
        num_layers: text: blocks of its transformer, whose masked mean of ``text, text_mask`` is the output.
        num_heads: text: attention heads of that transformer.
    """
    builders = {
        "image": lambda: ImageEncoder(need(spec, "image_channels"), need(spec, "image_size"), out_dim, width),
        "video": lambda: VideoEncoder(need(spec, "image_channels"), need(spec, "num_frames"), VideoModality.size(spec),
                                      out_dim, width),
        "audio": lambda: AudioEncoder(n_mels, out_dim, width),
        "text": lambda: TextEncoder(need(spec, "vocab_size"), need(spec, "max_text_length"), out_dim, width,
                                    num_layers, num_heads),
        "label": lambda: nn.Embedding(need(spec, "num_classes"), out_dim),
    }
    return _build(builders, modality, "default encoder")


def decoder(modality: Modality, spec: Mapping[str, Any], in_dim: int, width: int, *, n_mels: int = 64,
            frames: int = 32, hidden: int = 64) -> nn.Module:
    """The default decoder from ``B,in_dim``: to the modality's tensor (images, videos), its log-mel
    spectrogram ``B,n_mels,frames`` (audio), its logits ``B,num_classes`` (label), or a caption decoder
    (text: teacher-forced logits ``B,L-1,vocab_size`` from ``z`` and ``text``, and sampling).

    Args:
        n_mels: audio: mel bands of the spectrogram it reads (:meth:`AudioModality.log_mel`).
        frames: audio: frames of that spectrogram.
        hidden: label: width of its one hidden layer.
    """
    builders = {
        "image": lambda: ImageDecoder(in_dim, need(spec, "image_channels"), need(spec, "image_size"), width),
        "video": lambda: VideoDecoder(in_dim, need(spec, "image_channels"), need(spec, "num_frames"),
                                      VideoModality.size(spec), width),
        "audio": lambda: MelDecoder(in_dim, n_mels, AudioModality.log_mel(spec, n_mels, frames).frames, width),
        "text": lambda: GRUTextDecoder(need(spec, "vocab_size"), in_dim, width),
        "label": lambda: nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(),
                                       nn.Linear(hidden, need(spec, "num_classes"))),
    }
    return _build(builders, modality, "default decoder")


def has_token_encoder(modality: Modality) -> bool:
    """Whether :func:`token_encoder` builds for ``modality``."""
    return modality.name in TOKEN_ENCODED


def token_encoder(modality: Modality, spec: Mapping[str, Any], width: int, *, num_layers: int = 2,
                  num_heads: int = 4, dropout: float = 0.0, patch_size: int = 4, glimpse_size: int | None = None,
                  n_mels: int = 64, frames: int = 32, stem: str = "conv") -> nn.Module:
    """The encoder of the modality's tensor -> tokens ``B,N,width`` for cross-attention, with
    ``num_prefix_tokens`` and the token ``grid`` (``token_encoders.py``).

    Args:
        num_layers: every modality: blocks of the transformer over the tokens.
        num_heads: every modality: its attention heads.
        dropout: every modality: its dropout.
        patch_size: image and video: side of a patch (one token per patch).
        glimpse_size: video: side of the window of each frame centred on its content (default: the frame).
        stem: image: ``"conv"`` or ``"patch"`` (``token_encoders.STEMS``).
        n_mels: audio: mel bands of its log-mel spectrogram.
        frames: audio: frames of that spectrogram, one token per frame.
    """
    shared = {"num_layers": num_layers, "num_heads": num_heads, "dropout": dropout}
    builders = {
        "image": lambda: ImageTokenEncoder(need(spec, "image_channels"), need(spec, "image_size"), width,
                                           patch_size=patch_size, stem=stem, **shared),
        "video": lambda: VideoTokenEncoder(need(spec, "image_channels"), need(spec, "num_frames"),
                                           VideoModality.size(spec), width, patch_size=patch_size,
                                           glimpse_size=glimpse_size, **shared),
        "audio": lambda: AudioTokenEncoder(need(spec, "sample_rate"), need(spec, "audio_length"), width,
                                           n_mels=n_mels, frames=frames, **shared),
    }
    return _build(builders, modality, "token encoder")


def condition_embedder(modality: Modality, spec: Mapping[str, Any], dim: int, *, text_width: int = 64,
                       text_layers: int = 1, n_mels: int = 64, audio_width: int = 32) -> nn.Module:
    """A fresh embedder of ``modality.condition_inputs(batch, frontend)`` -> ``B,dim`` (``conditioning.py``).

    Args:
        text_width: text: width of its small transformer.
        text_layers: text: blocks of that transformer.
        n_mels: audio: mel bands of the log-mel it reads.
        audio_width: audio: channels of its convolutions.
    """
    builders = {
        "label": lambda: LabelEmbedder(need(spec, "num_classes"), dim),
        "text": lambda: TextEmbedder(need(spec, "vocab_size"), need(spec, "max_text_length"), dim, text_width,
                                     text_layers),
        "audio": lambda: AudioEmbedder(n_mels, dim, audio_width),
    }
    return _build(builders, modality, "condition embedder")
