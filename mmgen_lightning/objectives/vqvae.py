"""The VQ-VAE objective (van den Oord et al. 2017), with the codebook learned by EMA (their appendix A.1).

An encoder maps the features ``x`` (an image, or the log-mel frames of a clip) to vectors ``z_e``, the
quantizer snaps each to its nearest code ``q`` (straight-through: ``z_e + sg(q - z_e)``), and the
decoder reconstructs ``x`` from the codes::

    loss = mse(decoder(q), x) + commitment_weight * mse(z_e, sg(q))

The paper's third term, ``mse(sg(z_e), q)``, which moves the codes, is replaced by an exponential moving
average of the encoder outputs assigned to each code (decay ``ema_decay``), which the quantizer applies
in training mode, with dead-code restarts. FSQ (Mentzer et al. 2023) learns no codebook and has no
commitment term (the quantizer reports 0).
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn

from mmgen_lightning.config import ConfigGroup


@dataclasses.dataclass(frozen=True)
class VQObjective(ConfigGroup):
    """What the tokenizer is trained to minimise, and how its codebook follows the encoder.

    Args:
        commitment_weight: ``beta`` of the commitment term (``vq`` only).
        ema_decay: decay of the ``vq`` codebook's moving averages (the codebook's learning rate is
            ``1 - ema_decay``).
        dead_code_threshold: ``vq`` codes used by fewer vectors per step than this (running average)
            restart at a random encoder output; 0 turns restarts off.
    """

    section = "objective"
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    dead_code_threshold: float = 1.0

    def check(self) -> None:
        self.require(self.commitment_weight >= 0, "commitment_weight", "must be >= 0")
        self.require(0.0 < self.ema_decay < 1.0, "ema_decay", "must be in (0, 1)")
        self.require(self.dead_code_threshold >= 0, "dead_code_threshold", "must be >= 0")


def vqvae_objective(encoder: nn.Module, quantizer: nn.Module, decoder: nn.Module, features: Tensor,
                    objective: VQObjective) -> dict[str, Tensor]:
    """``{"loss", "recon_loss", "commitment", "codes"}`` for one batch.

    Args:
        encoder: ``features -> z_e: B,D,*grid``.
        quantizer: ``z_e -> Quantized`` (straight-through vectors, ``codes: long B,*grid``, commitment);
            in training mode it updates its codebook first.
        decoder: codes' vectors ``B,D,*grid`` -> the features' shape.
        features: what is reconstructed: ``image: B,C,H,W`` in [-1, 1] or a log-mel ``B,n_mels,frames``.
    """
    quantized = quantizer(encoder(features))
    reconstruction = F.mse_loss(decoder(quantized.quantized).float(), features.float())
    loss = reconstruction + objective.commitment_weight * quantized.commitment
    return {"loss": loss, "recon_loss": reconstruction, "commitment": quantized.commitment, "codes": quantized.codes}
