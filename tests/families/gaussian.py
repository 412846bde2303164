"""``GaussianImage``, the family ``tests/test_add_a_family.py`` adds: label or caption -> image, one Gaussian per
pixel fitted by maximum likelihood, built on the shared option groups, optimiser and ``generate`` contract
(``config.py``, ``models/optim.py``, ``models/base.py``)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from mmgen_lightning.config import ConfigGroup, build_groups
from mmgen_lightning.knobs import Knob, family_knobs
from mmgen_lightning.losses import continuous_log_likelihood
from mmgen_lightning.modalities import get_modality
from mmgen_lightning.models.base import GenerativeModule
from mmgen_lightning.models.layers import modality_networks
from mmgen_lightning.models.optim import Optimization

GAUSSIAN_CONDITIONS = ("label", "text")


# --- options: typed groups, each checked when built -----------------------------------------------
@dataclasses.dataclass(frozen=True)
class GaussianNetwork(ConfigGroup):
    """Sizes of the network.

    Args:
        width: size of the condition's embedding.
    """

    section = "network"
    width: int = 32

    def check(self) -> None:
        self.require(self.width >= 1, "width", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class GaussianObjective(ConfigGroup):
    """What the objective minimises.

    Args:
        min_scale: the smallest standard deviation of a pixel (a constant pixel would take the loss to -inf).
    """

    section = "objective"
    min_scale: float = 0.01

    def check(self) -> None:
        self.require(self.min_scale > 0, "min_scale", "must be > 0")


@dataclasses.dataclass(frozen=True)
class GaussianSampling(ConfigGroup):
    """Defaults of the sampling knobs.

    Args:
        noise_scale: the noise drawn around the mean, in units of the learned scale (0: the mean itself).
    """

    section = "sampling"
    noise_scale: float = 1.0

    def check(self) -> None:
        self.require(self.noise_scale >= 0, "noise_scale", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class GaussianConfig:
    """The family's option groups, typed (``self.config``)."""

    network: GaussianNetwork
    objective: GaussianObjective
    optimization: Optimization
    sampling: GaussianSampling


# --- the objective: a pure function of (network, batch, options) ----------------------------------
def gaussian_objective(network: nn.Module, batch: dict[str, Tensor], objective: GaussianObjective) -> dict[str, Tensor]:
    """``{"loss": -log N(image; mu(c), sigma(c)^2)}`` in nats per pixel, ``sigma >= min_scale`` (``image: B,C,H,W``
    in [-1, 1]; the network reads the condition's keys of ``batch``)."""
    mean, log_scale = network(batch)
    log_scale = log_scale.clamp_min(math.log(objective.min_scale))
    log_p = continuous_log_likelihood(batch["image"], mean, log_scale, "gaussian")
    return {"loss": -log_p.mean() / batch["image"][0].numel()}


# --- the network: a plain nn.Module ---------------------------------------------------------------
class ConditionalGaussian(nn.Module):
    """``conditions -> (mean, log_scale)``, each ``B,C,H,W``: the condition's embedding, then one linear map."""

    def __init__(self, embedder: nn.Module, width: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.embedder, self.shape = embedder, shape
        self.head = nn.Linear(width, 2 * math.prod(shape))

    def forward(self, conditions: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return tuple(self.head(self.embedder(conditions)).view(-1, 2, *self.shape).unbind(1))


# --- the family: it wires the network and the data to the objective --------------------------------
class GaussianImage(GenerativeModule):
    """Label or caption -> image through one Gaussian per pixel.

    Args:
        data_spec: sizes from the datamodule (linked by the CLI).
        condition: ``label`` or ``text``.
        network: the embedding's size (:class:`GaussianNetwork`).
        objective: the floor on the likelihood's scale (:class:`GaussianObjective`).
        optimization: AdamW at a high rate, which one linear map takes well (:class:`Optimization`).
        sampling: defaults of the sampling knobs (:class:`GaussianSampling`).
    """

    sampling_knobs = family_knobs("seed", noise_scale=Knob(float, 0, help="noise around the mean, in learned scales"))

    def __init__(self, data_spec: dict[str, Any] | None = None, condition: str = "label",
                 network: GaussianNetwork = GaussianNetwork(), objective: GaussianObjective = GaussianObjective(),
                 optimization: Optimization = Optimization(lr=3e-2),
                 sampling: GaussianSampling = GaussianSampling()) -> None:
        super().__init__(data_spec)
        self.save_hyperparameters()
        self.config = GaussianConfig(**build_groups(GaussianImage.__init__, network=network, objective=objective,
                                                    optimization=optimization, sampling=sampling))
        if condition not in GAUSSIAN_CONDITIONS:
            raise ValueError(f"condition: unknown {condition!r}; allowed: {', '.join(GAUSSIAN_CONDITIONS)}")
        self.declare_direction(condition, "image")
        width, size = self.config.network.width, self.spec("image_size")
        embedder = modality_networks.condition_embedder(get_modality(condition), self.data_spec, width)
        self.network = ConditionalGaussian(embedder, width, (self.spec("image_channels"), size, size))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = gaussian_objective(self.network, batch, self.config.objective)["loss"]
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val/loss", gaussian_objective(self.network, batch, self.config.objective)["loss"], sync_dist=True)

    def sample(self, conditions: dict[str, Tensor], num_samples: int, targets: list[str], noise_scale: float = 1.0,
               seed: int | None = None) -> dict[str, Tensor]:
        """``image: B,C,H,W`` in [-1, 1]: ``mu(c) + noise_scale * sigma(c) * e``, ``e ~ N(0, I)`` from ``seed``."""
        mean, log_scale = self.network(conditions)
        scale = log_scale.clamp_min(math.log(self.config.objective.min_scale)).exp()
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        noise = torch.randn(mean.shape, device=self.device, generator=generator)
        return {"image": (mean + noise_scale * scale * noise).clamp(-1, 1)}
