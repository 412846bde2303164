"""What a generative network models instead of the raw batch tensor, and back: ``encode(value) -> x``,
``decode(x) -> value``, with ``shape`` the ``C,H,W`` of ``x``.

* :class:`PixelCodec`: an image as it is (``B,C,H,W`` in [-1, 1]);
* :class:`LogMelCodec`: a waveform ``B,T`` as its scaled log-mel spectrogram ``B,1,n_mels,frames``
  (inverted by Griffin-Lim when decoded);
* :class:`LatentCodec`: an image as the frozen pre-quantisation latents ``B,D,h,w`` of a project VQVAE
  (divided by their standard deviation, so the model sees unit scale), which keeps the token count of
  128-256 px images small (latent diffusion, Rombach et al. 2022).

A codec has no trainable weights (a latent codec's VQVAE is frozen), so a family's objective and its
sampler can ask any of them the same two questions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PixelCodec(nn.Module):
    """``image: B,C,H,W`` in [-1, 1] modelled as it is."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.shape = (channels, size, size)

    def encode(self, value: Tensor) -> Tensor:
        return value

    def decode(self, x: Tensor) -> Tensor:
        return x.float().clamp(-1, 1)


class LogMelCodec(nn.Module):
    """``audio: B,T`` in [-1, 1] <-> its scaled log-mel ``B,1,n_mels,frames`` (``log_mel``: a ``LogMel``)."""

    def __init__(self, log_mel: nn.Module) -> None:
        super().__init__()
        self.log_mel = log_mel
        self.shape = (1, log_mel.n_mels, log_mel.frames)

    def encode(self, value: Tensor) -> Tensor:
        return self.log_mel(value).unsqueeze(1)

    def decode(self, x: Tensor) -> Tensor:
        return self.log_mel.invert(x.squeeze(1).float())


class LatentCodec(nn.Module):
    """``image: B,C,H,W`` <-> a frozen VQVAE's pre-quantisation latents ``B,D,H/f,W/f`` over ``latent_std``.

    Decoding quantises the latents (the decoder was trained on codebook vectors) before the VQVAE's
    decoder. ``latent_std`` is a buffer, so the checkpoint keeps the scale it was trained with.
    """

    def __init__(self, vqvae: nn.Module, image_size: int, latent_std: float = 1.0) -> None:
        super().__init__()
        self.vqvae = vqvae.requires_grad_(False).eval()
        self.register_buffer("latent_std", torch.tensor(float(latent_std)))
        side = image_size // vqvae.config.network.downsample
        self.shape = (vqvae.quantizer.dim, side, side)

    def train(self, mode: bool = True) -> "LatentCodec":
        super().train(mode)
        self.vqvae.eval()  # frozen: its norms stay in inference mode
        return self

    @torch.no_grad()
    def encode(self, value: Tensor) -> Tensor:
        return self.vqvae.encoder(value) / self.latent_std

    def decode(self, x: Tensor) -> Tensor:
        quantized = self.vqvae.quantizer(x * self.latent_std).quantized
        return self.vqvae.decoder(quantized).float().clamp(-1, 1)

    @torch.no_grad()
    def measure_scale(self, images: Tensor) -> float:
        """Set ``latent_std`` from ``images: B,C,H,W`` (the training data's first items) and return it."""
        scale = float(self.vqvae.encoder(images).float().std().clamp_min(1e-6))
        self.latent_std.fill_(scale)
        return scale
