"""The adversarial game of a conditional GAN: each player's loss on one micro-batch.

A generator ``G(z, y)`` draws fakes from noise ``z ~ N(0, I)`` and a condition ``y``; a projection
discriminator ``D(x, y) = score(phi(x), V e(y))`` scores samples under conditions (raw logits)::

    L_D = loss_D(D(x, y), D(sg(G(z, y)), y))              real vs detached fakes
          [+ D(x, y') among the fakes, y' another sample's condition]    (GAN-CLS, Reed et al. 2016)
          [+ w_c InfoNCE(phi(x), V e(y))]                  each real picks its condition (XMC-GAN)
          [+ gamma / 2 * r1_every * E ||grad_x D(x, y)||^2, every r1_every steps]   (lazy R1)
          [+ lambda E (||grad D(x_hat, y)|| - 1)^2]        (WGAN-GP)

    L_G = loss_G(D(G(z, y), y))
          [+ w_c InfoNCE(phi(G(z, y)), V e(y))]           so must each fake
          [+ w_a InfoNCE_aligner(G(z, y), y)]              a frozen Aligner as a second critic

``loss_D``/``loss_G`` are the adversarial losses of ``losses.py`` (hinge, non-saturating, WGAN,
least squares). Who steps when (``n_critic``, accumulation windows, the DDP all-reduce) is the
LightningModule's business; these functions only say what each player minimises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mmgen_lightning.config import ConfigGroup
from mmgen_lightning.losses import (ADVERSARIAL_LOSSES, discriminator_loss, generator_loss, gradient_penalty,
                                    r1_penalty, symmetric_info_nce)
from mmgen_lightning.modalities import get_modality


@dataclasses.dataclass(frozen=True)
class GANObjective(ConfigGroup):
    """What the two players minimise, and the schedule of their game.

    Args:
        loss: ``non_saturating``, ``hinge``, ``wgan_gp`` or ``least_squares``.
        r1_gamma: weight ``gamma`` of the R1 penalty ``gamma / 2 * E||grad_x D(x)||^2`` on real data (0: off).
        r1_every: lazy R1 (Karras et al. 2020): apply it every this many discriminator steps, times this.
        gp_weight: weight ``lambda`` of the WGAN-GP gradient penalty; ``null`` means 10 with ``wgan_gp``, else 0.
        condition_mismatch: also show the discriminator real samples with shuffled conditions as fakes
            (GAN-CLS, Reed et al. 2016).
        contrastive_weight: weight ``w_c`` of the image-condition contrastive terms of XMC-GAN (Zhang et al.
            2021): the discriminator's features of each real image must pick its own condition among the
            batch's (symmetric InfoNCE), and the generator is trained so its fakes do the same. A real/fake
            score can be won by reading a few words of a caption; picking the one caption out of a batch
            needs every word. 0: off; images only; negatives come from each process's own batch.
        contrastive_temperature: the InfoNCE temperature of those terms (XMC-GAN: 0.1).
        aligner_path: an :class:`~mmgen_lightning.models.aligner.Aligner` checkpoint of the condition and the
            output, used frozen during training only (never saved with the GAN): with ``aligner_weight > 0`` the
            generator also minimises the aligner's InfoNCE between its fakes and their conditions, a critic that
            already reads every attribute of a caption (as Lafite and GALIP lean on CLIP).
        aligner_weight: weight ``w_a`` of that term (0: off).
        n_critic: discriminator steps per generator step.
        accumulate_grad_batches: micro-batches per optimizer step of each player (the Trainer's own option
            does not apply to manual optimization).
    """

    section = "objective"
    loss: str = "hinge"
    r1_gamma: float = 0.0
    r1_every: int = 1
    gp_weight: float | None = None
    condition_mismatch: bool = False
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1
    aligner_path: str | None = None
    aligner_weight: float = 0.0
    n_critic: int = 1
    accumulate_grad_batches: int = 1

    def check(self) -> None:
        self.require_choice("loss", ADVERSARIAL_LOSSES)
        self.require(self.r1_gamma >= 0, "r1_gamma", "must be >= 0")
        self.require(self.gp_weight is None or self.gp_weight >= 0, "gp_weight", "must be >= 0 or null")
        self.require(self.contrastive_weight >= 0, "contrastive_weight", "must be >= 0")
        self.require(self.contrastive_temperature > 0, "contrastive_temperature", "must be > 0")
        self.require(self.aligner_weight >= 0, "aligner_weight", "must be >= 0")
        self.require(self.aligner_weight == 0 or bool(self.aligner_path), "aligner_path",
                     "must name an Aligner checkpoint when aligner_weight > 0")
        for name in ("r1_every", "n_critic", "accumulate_grad_batches"):
            self.require(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name,
                         "must be an integer >= 1")

    @property
    def penalty_weight(self) -> float:
        """``lambda`` of the gradient penalty: ``gp_weight``, or 10 with the ``wgan_gp`` loss and 0 otherwise."""
        if self.gp_weight is None:
            return 10.0 if self.loss == "wgan_gp" else 0.0
        return float(self.gp_weight)


def discriminator_objective(generator: nn.Module, discriminator: nn.Module, real: Tensor, z: Tensor,
                            conditions: Mapping[str, Any], objective: GANObjective, step: int = 0) -> dict[str, Tensor]:
    """``L_D`` on one micro-batch, with the parts that are logged.

    Args:
        generator: ``G(z, conditions)``; its fakes are detached (this loss trains ``D`` only).
        discriminator: has ``features(x)``, ``embed(conditions)``, ``score(features, embedding)`` (and
            ``contrast`` when ``contrastive_weight > 0``): logits ``B`` (``B,K`` with branches).
        real: the data, ``image: B,C,H,W`` or ``video: B,F,C,H,W`` in [-1, 1].
        z: ``B,latent_dim`` noise of the fakes.
        conditions: what the players' condition embedders read (``{}`` when unconditional).
        step: the discriminator steps taken so far; lazy R1 applies when it is a multiple of ``r1_every``.

    Returns ``loss`` (to minimise), ``adversarial`` (its ``loss_D`` part), ``d_real``/``d_fake`` (mean
    logits) and, when on, ``contrastive``, ``r1``, ``gp``.
    """
    with torch.no_grad():
        fake = generator(z, conditions)
    use_r1 = objective.r1_gamma > 0 and step % objective.r1_every == 0
    real = real.detach().requires_grad_(use_r1)
    embedding = discriminator.embed(conditions)
    real_features, fake_features = discriminator.features(torch.cat([real, fake.to(real.dtype)])).chunk(2)
    real_logits = discriminator.score(real_features, embedding)
    fake_logits = discriminator.score(fake_features, embedding)
    negatives = fake_logits
    if objective.condition_mismatch:  # real samples under another sample's condition are fakes too
        negatives = torch.cat([fake_logits, discriminator.score(real_features, embedding.roll(1, dims=0))])
    terms = {"loss": discriminator_loss(real_logits, negatives, objective.loss),
             "d_real": real_logits.detach().float().mean(), "d_fake": fake_logits.detach().float().mean()}
    terms["adversarial"] = terms["loss"].detach()
    if objective.contrastive_weight:  # real images must pick their own caption out of the batch
        terms["contrastive"] = symmetric_info_nce(*discriminator.contrast(real_features, embedding),
                                                  1.0 / objective.contrastive_temperature)
        terms["loss"] = terms["loss"] + objective.contrastive_weight * terms["contrastive"]
    if use_r1:
        terms["r1"] = r1_penalty(real_logits, real)
        terms["loss"] = terms["loss"] + 0.5 * objective.r1_gamma * objective.r1_every * terms["r1"]
    if objective.penalty_weight > 0:
        terms["gp"] = gradient_penalty(lambda x: discriminator.score(discriminator.features(x), embedding), real, fake)
        terms["loss"] = terms["loss"] + objective.penalty_weight * terms["gp"]
    return terms


def generator_objective(generator: nn.Module, discriminator: nn.Module, z: Tensor, conditions: Mapping[str, Any],
                        objective: GANObjective,
                        aligner: Callable[[Tensor, Mapping[str, Any]], Tensor] | None = None) -> dict[str, Tensor]:
    """``L_G`` on one micro-batch of conditions (gradients reach ``G`` through ``D``).

    Args:
        generator: as :func:`discriminator_objective` (here the loss trains it).
        discriminator: as :func:`discriminator_objective`.
        conditions: as :func:`discriminator_objective`.
        z: ``B,latent_dim`` noise, one row per condition.
        aligner: ``(fakes, conditions) -> InfoNCE`` of a frozen critic (:func:`aligner_loss`), needed when
            ``aligner_weight > 0``.

    Returns ``loss`` and, when on, ``contrastive`` and ``aligner``.
    """
    fake = generator(z, conditions)
    features, embedding = discriminator.features(fake), discriminator.embed(conditions)
    terms = {"loss": generator_loss(discriminator.score(features, embedding), objective.loss)}
    if objective.contrastive_weight:  # and so must the fakes
        terms["contrastive"] = symmetric_info_nce(*discriminator.contrast(features, embedding),
                                                  1.0 / objective.contrastive_temperature)
        terms["loss"] = terms["loss"] + objective.contrastive_weight * terms["contrastive"]
    if objective.aligner_weight:
        if aligner is None:
            raise ValueError("objective.aligner_weight > 0 needs the frozen aligner (objective.aligner_path)")
        terms["aligner"] = aligner(fake, conditions)
        terms["loss"] = terms["loss"] + objective.aligner_weight * terms["aligner"]
    return terms


def aligner_loss(aligner: nn.Module, fake: Tensor, conditions: Mapping[str, Tensor], condition: str, output: str,
                 tokenizer: Any = None) -> Tensor:
    """A frozen Aligner's symmetric InfoNCE of fakes and their conditions, at its own learned temperature.

    ``fake`` (``output`` samples, e.g. ``image: B,C,H,W`` in [-1, 1]) is resized to the aligner's size;
    the ``condition`` entries of ``conditions`` are read as the aligner reads them (captions re-tokenised
    by its tokenizer when both models carry one). Gradients reach the generator through the fakes only.
    """
    fake = get_modality(output).conform({output: fake}, aligner.data_spec, antialias=False)
    with torch.no_grad():
        inputs = get_modality(condition).conform(conditions, aligner.data_spec, tokenizer, aligner.tokenizer)
        embedded = aligner.embed({key: value.to(aligner.device) for key, value in inputs.items()}, condition)
    return symmetric_info_nce(aligner.embed(fake, output), embedded, aligner.logit_scale_value().detach())
