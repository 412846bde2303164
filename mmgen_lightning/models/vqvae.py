"""VQVAE: the stage-1 tokenizer of the two-stage (DALL-E / Chameleon) recipe. A conv encoder maps an
image (or the log-mel frames of an audio clip) to a grid of vectors, a quantizer snaps each to one
of ``K`` codes, and a conv decoder reconstructs the input from the codes.

Objective (van den Oord et al. 2017, with the codebook learned by EMA rather than by its loss term):
``mse(decoder(q), x) + commitment_weight * mse(z_e, sg(q))``; FSQ (Mentzer et al. 2023) has no
codebook and no commitment term. Stage 2 (:class:`~mmgen_lightning.models.token_transformer.TokenTransformer`)
reads :meth:`VQVAE.encode_codes` and writes through :meth:`VQVAE.decode_codes`.

Directions: ``image->image`` (or ``audio->audio``): a reconstruction, which is what
:class:`~mmgen_lightning.callbacks.SampleLogger` logs while training.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from mmgen_lightning.knobs import Knob
from mmgen_lightning.losses import codebook_perplexity
from mmgen_lightning.models.base import GenerativeModule
from mmgen_lightning.models.layers.quantizers import QUANTIZERS, FiniteScalarQuantizer, Quantized, VectorQuantizer
from mmgen_lightning.models.layers.vq_codecs import GridDecoder, GridEncoder
from mmgen_lightning.modalities import get_modality
from mmgen_lightning.modalities.audio import LOG_FLOOR, LOG_SCALE

VQ_MODALITIES = ("image", "audio")


class CodeHistogram(Metric):
    """How often each of ``K`` codes was used (summed over processes): codebook usage (share of codes
    used at least once) and perplexity (``exp`` of the code entropy)."""

    full_state_update = False

    def __init__(self, num_codes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_codes = num_codes
        self.add_state("counts", torch.zeros(num_codes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, codes: Tensor) -> None:
        self.counts += torch.bincount(codes.flatten(), minlength=self.num_codes)

    def compute(self) -> dict[str, Tensor]:
        return {"usage": (self.counts > 0).float().mean(), "perplexity": codebook_perplexity(self.counts)}


class VQVAE(GenerativeModule):
    """Args:
        data_spec: sizes from the datamodule (linked by the CLI).
        modality: ``image`` (2-D grid of codes) or ``audio`` (1-D grid over log-mel frames); default:
            the first of them the data carries.
        quantizer: ``vq`` (EMA codebook) or ``fsq`` (finite scalar quantization).
        num_codes: codebook size ``K`` of ``vq`` (``fsq`` has ``prod(fsq_levels)`` codes).
        code_dim: size of each code vector of ``vq`` (``fsq`` uses ``len(fsq_levels)``).
        fsq_levels: levels per channel of ``fsq``.
        downsample: pixels (frames) per code along each axis: a power of two.
        width: channels of the conv encoder and decoder.
        commitment_weight: ``beta`` of the commitment term (``vq`` only).
        ema_decay: EMA decay of the ``vq`` codebook.
        dead_code_threshold: ``vq`` codes used by fewer vectors per step than this (running average)
            restart at a random encoder output; 0 turns restarts off.
        n_mels: mel bands of the audio frontend.
        audio_frames: about how many log-mel frames a clip gives.
        lr: AdamW learning rate.
    """

    sampling_knobs: dict[str, Knob] = {}  # reconstruction is deterministic: no knobs

    def __init__(self, data_spec: dict[str, Any] | None = None, modality: str | None = None, quantizer: str = "vq",
                 num_codes: int = 128, code_dim: int = 16, fsq_levels: list[int] | None = None, downsample: int = 4,
                 width: int = 64, commitment_weight: float = 0.25, ema_decay: float = 0.99,
                 dead_code_threshold: float = 1.0, n_mels: int = 64, audio_frames: int = 32, lr: float = 2e-3) -> None:
        # the arguments spelt out: save_hyperparameters() would also collect the arguments of any
        # LightningModule whose __init__ builds this one (the TokenTransformer) from the call stack
        arguments = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        super().__init__(data_spec)
        self.save_hyperparameters(arguments)
        carried = [m for m in VQ_MODALITIES if m in self.data_spec.get("modalities", VQ_MODALITIES)]
        self.modality = modality or (carried[0] if carried else "")
        if self.modality not in VQ_MODALITIES:
            raise ValueError(f"modality: unknown {modality!r}; allowed: {', '.join(VQ_MODALITIES)}")
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer: unknown {quantizer!r}; allowed: {', '.join(QUANTIZERS)}")
        self.condition_modalities = self.output_modalities = (self.modality,)
        if quantizer == "vq":
            self.quantizer: VectorQuantizer | FiniteScalarQuantizer = VectorQuantizer(
                num_codes, code_dim, ema_decay, dead_code_threshold=dead_code_threshold)
        else:
            self.quantizer = FiniteScalarQuantizer(list(fsq_levels or [8, 5, 5, 5]))
        self.num_codes, dim = self.quantizer.num_codes, self.quantizer.dim
        # images are coded as a 2-D grid of pixels, audio as a 1-D sequence of log-mel frames
        self.pixels = get_modality(self.modality).pixels
        if self.pixels:
            channels, size = self.spec("image_channels"), self.spec("image_size")
            if size % downsample:
                raise ValueError(f"downsample: {downsample} does not divide image_size {size}")
            self.grid = (size // downsample, size // downsample)
            dims = 2
        else:
            self.log_mel = get_modality("audio").log_mel(self.data_spec, n_mels, frames=audio_frames)
            channels, dims = n_mels, 1
            self.grid = (1, math.ceil(self.log_mel.frames / downsample))
        self.encoder = GridEncoder(channels, dim, width, downsample, dims)
        self.decoder = GridDecoder(dim, channels, width, downsample, dims)
        self.histograms = nn.ModuleDict({stage: CodeHistogram(self.num_codes) for stage in ("val", "test")})

    @property
    def num_tokens(self) -> int:
        """Codes per sample (``rows * cols`` of :attr:`grid`)."""
        return self.grid[0] * self.grid[1]

    # --- networks -----------------------------------------------------------------------------
    def features(self, batch: dict[str, Tensor]) -> Tensor:
        """What the encoder reads and the decoder reconstructs: the image ``B,C,H,W`` in [-1, 1], or
        the scaled log-mel ``B,n_mels,frames`` of ``audio: B,T`` padded to a multiple of ``downsample``."""
        if self.pixels:
            return batch["image"]
        log_mel = self.log_mel(batch["audio"])
        silence = math.log(LOG_FLOOR) / LOG_SCALE  # the frontend's value for an all-zero frame
        return F.pad(log_mel, (0, self.grid[1] * self.hparams.downsample - log_mel.shape[-1]), value=silence)

    def quantize(self, features: Tensor) -> Quantized:
        return self.quantizer(self.encoder(features))

    def encode_codes(self, batch: dict[str, Tensor]) -> Tensor:
        """The modality -> codes ``long B,N`` in row-major grid order (``N = rows * cols``)."""
        return self.quantize(self.features(batch)).codes.reshape(len(batch[self.modality]), -1)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Codes ``long B,N`` -> the modality: ``image: B,C,H,W`` in [-1, 1] or ``audio: B,T``."""
        vectors = self.quantizer.lookup(codes.reshape(codes.shape[0], *self.grid))
        if self.pixels:
            return self.decoder(vectors).float().clamp(-1, 1)
        log_mel = self.decoder(vectors.squeeze(2)).float()[..., : self.log_mel.frames]
        return self.log_mel.invert(log_mel)

    # --- objective ----------------------------------------------------------------------------
    def losses(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """Reconstruction, commitment and total loss of a batch, and its codes."""
        features = self.features(batch)
        quantized = self.quantize(features)
        reconstruction = F.mse_loss(self.decoder(quantized.quantized).float(), features.float())
        loss = reconstruction + self.hparams.commitment_weight * quantized.commitment
        return {"loss": loss, "recon_loss": reconstruction, "commitment": quantized.commitment}, quantized.codes

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses, codes = self.losses(batch)
        if self._logging_step():  # only the batches whose metrics Lightning writes
            counts = torch.bincount(codes.flatten(), minlength=self.num_codes)
            self.log("train/loss", losses["loss"], prog_bar=True)
            self.log("train/recon_loss", losses["recon_loss"])
            self.log("train/commitment", losses["commitment"])
            self.log("train/batch_codebook_usage", (counts > 0).float().mean())
            self.log("train/batch_perplexity", codebook_perplexity(counts))
            if isinstance(self.quantizer, VectorQuantizer):
                self.log("train/restarted_codes", self.quantizer.restarts.float())
        return losses["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluate_batch(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluate_batch(batch, "test")

    def evaluate_batch(self, batch: dict[str, Tensor], stage: str) -> None:
        losses, codes = self.losses(batch)
        self.histograms[stage].update(codes)
        self.log(f"{stage}/loss", losses["loss"], prog_bar=True, sync_dist=True)
        self.log(f"{stage}/recon_loss", losses["recon_loss"], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_histogram("val")

    def on_test_epoch_end(self) -> None:
        self._log_histogram("test")

    def _log_histogram(self, stage: str) -> None:
        scores = self.histograms[stage].compute()
        self.log(f"{stage}/codebook_usage", scores["usage"])
        self.log(f"{stage}/perplexity", scores["perplexity"])
        self.histograms[stage].reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)

    # --- sampling -----------------------------------------------------------------------------
    def serves(self, sources: tuple[str, ...], target: str) -> bool:
        """Only reconstruction: the modality in, the same modality out (a tokenizer has no prior to sample)."""
        return tuple(sources) == (self.modality,) and target == self.modality

    def sample(self, conditions: dict[str, Tensor], num_samples: int, targets: list[str]) -> dict[str, Tensor]:
        """Reconstruct the condition through its codes (no sampling knobs: the map is deterministic)."""
        return {self.modality: self.decode_codes(self.encode_codes(conditions))}
