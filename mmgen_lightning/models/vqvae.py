"""VQVAE: the stage-1 tokenizer of the two-stage (DALL-E / Chameleon) recipe. A conv encoder maps an
image (or the log-mel frames of an audio clip) to a grid of vectors, a quantizer snaps each to one
of ``K`` codes, and a conv decoder reconstructs the input from the codes.

The objective (``objectives/vqvae.py``) is ``mse(decoder(q), x) + commitment_weight * mse(z_e, sg(q))``
with the codebook learned by EMA (van den Oord et al. 2017); FSQ (Mentzer et al. 2023) has no codebook
and no commitment term. Stage 2 (:class:`~mmgen_lightning.models.token_transformer.TokenTransformer`)
reads :meth:`VQVAE.encode_codes` and writes through :meth:`VQVAE.decode_codes`; a latent
:class:`~mmgen_lightning.models.flow.FlowMatching` reads its ``encoder``, ``quantizer`` and ``decoder``.

Directions: ``image->image`` (or ``audio->audio``): a reconstruction, which is what
:class:`~mmgen_lightning.callbacks.SampleLogger` logs while training.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from mmgen_lightning.config import ConfigGroup, build_groups
from mmgen_lightning.knobs import Knob
from mmgen_lightning.losses import codebook_perplexity
from mmgen_lightning.models.base import GenerativeModule, LegacyLayout
from mmgen_lightning.models.layers.quantizers import QUANTIZERS, FiniteScalarQuantizer, Quantized, VectorQuantizer
from mmgen_lightning.models.layers.vq_codecs import GridDecoder, GridEncoder
from mmgen_lightning.models.optim import Optimization
from mmgen_lightning.modalities import get_modality
from mmgen_lightning.modalities.audio import LOG_FLOOR, LOG_SCALE
from mmgen_lightning.objectives.vqvae import VQObjective, vqvae_objective

VQ_MODALITIES = ("image", "audio")


# --- options --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VQNetwork(ConfigGroup):
    """The quantizer and the sizes of the conv encoder and decoder around it.

    Args:
        quantizer: ``vq`` (a learned codebook) or ``fsq`` (finite scalar quantization).
        num_codes: codebook size ``K`` of ``vq`` (``fsq`` has ``prod(fsq_levels)`` codes).
        code_dim: size of each code vector of ``vq`` (``fsq`` uses ``len(fsq_levels)``).
        fsq_levels: levels per channel of ``fsq``.
        downsample: pixels (log-mel frames) per code along each axis: a power of two.
        width: channels of the conv encoder and decoder (a multiple of 8: their group norms).
        n_mels: mel bands of the audio frontend.
        audio_frames: about how many log-mel frames a clip gives.
    """

    section = "network"
    quantizer: str = "vq"
    num_codes: int = 128
    code_dim: int = 16
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
    downsample: int = 4
    width: int = 64
    n_mels: int = 64
    audio_frames: int = 32

    def check(self) -> None:
        self.require_choice("quantizer", QUANTIZERS)
        self.require(self.num_codes >= 2, "num_codes", "must be >= 2")
        self.require(self.code_dim >= 1, "code_dim", "must be >= 1")
        self.require(len(self.fsq_levels) >= 1 and all(level >= 2 for level in self.fsq_levels), "fsq_levels",
                     "must give at least one level count, each >= 2")
        self.require(self.downsample >= 2 and not self.downsample & (self.downsample - 1), "downsample",
                     "must be a power of two >= 2")
        self.require(self.width >= 8 and self.width % 8 == 0, "width", "must be a multiple of 8")
        for name in ("n_mels", "audio_frames"):
            self.require(getattr(self, name) >= 1, name, "must be >= 1")


@dataclasses.dataclass(frozen=True)
class VQConfig:
    """The family's option groups, typed (``self.config``)."""

    network: VQNetwork
    objective: VQObjective
    optimization: Optimization


def _legacy_fsq_levels(flat: dict[str, Any]) -> dict[str, Any]:
    """The flat layout wrote ``fsq_levels: null`` for the default levels, which the group now states."""
    if flat.get("fsq_levels") is None:
        flat.pop("fsq_levels", None)
    return flat


# --- the family -----------------------------------------------------------------------------------
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
    """Image or audio -> a grid of ``K`` discrete codes -> the input again (stage 1 of the two-stage recipe).

    Args:
        data_spec: sizes from the datamodule (linked by the CLI).
        modality: ``image`` (2-D grid of codes) or ``audio`` (1-D grid over log-mel frames); default:
            the first of them the data carries.
        network: the quantizer and the conv encoder/decoder (:class:`VQNetwork`).
        objective: the commitment term and the codebook's moving averages (:class:`VQObjective`).
        optimization: AdamW with weight decay on every parameter
            (:class:`~mmgen_lightning.models.optim.Optimization`).
    """

    sampling_knobs: dict[str, Knob] = {}  # reconstruction is deterministic: no knobs
    legacy = LegacyLayout(groups={"network": VQNetwork, "objective": VQObjective, "optimization": Optimization},
                          adjust=_legacy_fsq_levels)

    def __init__(self, data_spec: dict[str, Any] | None = None, modality: str | None = None,
                 network: VQNetwork = VQNetwork(), objective: VQObjective = VQObjective(),
                 optimization: Optimization = Optimization(lr=2e-3, weight_decay=0.01, decay_vectors=True)) -> None:
        # the arguments spelt out: save_hyperparameters() would also collect the arguments of any
        # LightningModule whose __init__ builds this one (the TokenTransformer) from the call stack
        arguments = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        super().__init__(data_spec)
        self.save_hyperparameters(arguments)
        self.config = VQConfig(**build_groups(VQVAE.__init__, network=network, objective=objective,
                                              optimization=optimization))
        carried = [m for m in VQ_MODALITIES if m in self.data_spec.get("modalities", VQ_MODALITIES)]
        self.modality = modality or (carried[0] if carried else "")
        if self.modality not in VQ_MODALITIES:
            raise ValueError(f"modality: unknown {modality!r}; allowed: {', '.join(VQ_MODALITIES)}")
        self.condition_modalities = self.output_modalities = (self.modality,)
        net, options = self.config.network, self.config.objective
        if net.quantizer == "vq":
            self.quantizer: VectorQuantizer | FiniteScalarQuantizer = VectorQuantizer(
                net.num_codes, net.code_dim, options.ema_decay, dead_code_threshold=options.dead_code_threshold)
        else:
            self.quantizer = FiniteScalarQuantizer(list(net.fsq_levels))
        self.num_codes, dim = self.quantizer.num_codes, self.quantizer.dim
        # images are coded as a 2-D grid of pixels, audio as a 1-D sequence of log-mel frames
        self.pixels = get_modality(self.modality).pixels
        if self.pixels:
            channels, size = self.spec("image_channels"), self.spec("image_size")
            if size % net.downsample:
                raise ValueError(f"network.downsample: {net.downsample} does not divide image_size {size}")
            self.grid = (size // net.downsample, size // net.downsample)
            dims = 2
        else:
            self.log_mel = get_modality("audio").log_mel(self.data_spec, net.n_mels, frames=net.audio_frames)
            channels, dims = net.n_mels, 1
            self.grid = (1, math.ceil(self.log_mel.frames / net.downsample))
        self.encoder = GridEncoder(channels, dim, net.width, net.downsample, dims)
        self.decoder = GridDecoder(dim, channels, net.width, net.downsample, dims)
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
        return F.pad(log_mel, (0, self.grid[1] * self.config.network.downsample - log_mel.shape[-1]), value=silence)

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
    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Reconstruction, commitment and total loss of a batch, and its codes (``objectives/vqvae.py``)."""
        return vqvae_objective(self.encoder, self.quantizer, self.decoder, self.features(batch), self.config.objective)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.losses(batch)
        if self._logging_step():  # only the batches whose metrics Lightning writes
            counts = torch.bincount(out["codes"].flatten(), minlength=self.num_codes)
            self.log("train/loss", out["loss"], prog_bar=True)
            self.log("train/recon_loss", out["recon_loss"])
            self.log("train/commitment", out["commitment"])
            self.log("train/batch_codebook_usage", (counts > 0).float().mean())
            self.log("train/batch_perplexity", codebook_perplexity(counts))
            if isinstance(self.quantizer, VectorQuantizer):
                self.log("train/restarted_codes", self.quantizer.restarts.float())
        return out["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluate_batch(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluate_batch(batch, "test")

    def evaluate_batch(self, batch: dict[str, Tensor], stage: str) -> None:
        out = self.losses(batch)
        self.histograms[stage].update(out["codes"])
        self.log(f"{stage}/loss", out["loss"], prog_bar=True, sync_dist=True)
        self.log(f"{stage}/recon_loss", out["recon_loss"], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_histogram("val")

    def on_test_epoch_end(self) -> None:
        self._log_histogram("test")

    def _log_histogram(self, stage: str) -> None:
        scores = self.histograms[stage].compute()
        self.log(f"{stage}/codebook_usage", scores["usage"])
        self.log(f"{stage}/perplexity", scores["perplexity"])
        self.histograms[stage].reset()

    # --- sampling -----------------------------------------------------------------------------
    def serves(self, sources: tuple[str, ...], target: str) -> bool:
        """Only reconstruction: the modality in, the same modality out (a tokenizer has no prior to sample)."""
        return tuple(sources) == (self.modality,) and target == self.modality

    def sample(self, conditions: dict[str, Tensor], num_samples: int, targets: list[str]) -> dict[str, Tensor]:
        """Reconstruct the condition through its codes (no sampling knobs: the map is deterministic)."""
        return {self.modality: self.decode_codes(self.encode_codes(conditions))}

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self.generate({self.modality: batch[self.modality]}, len(batch[self.modality]))
