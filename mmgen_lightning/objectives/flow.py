"""The flow-matching objective (Lipman et al. 2023; rectified flow, Liu et al. 2022).

Noise ``x0 ~ N(0, I)``, data ``x1`` (the codec's view of the output), a time ``t`` from the chosen
density, the straight path ``x_t = (1 - t) x0 + t x1``, and the network regresses its velocity::

    loss = E || v(x_t, t, c) - (x1 - x0) ||^2

The condition ``c`` is replaced by a learned null condition for ``cond_drop`` of the samples (the
condition embedder owns that dropout, as DiT's label embedder does), so the same network also knows
``v(x_t, t, null)`` and sampling can use classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmgen_lightning.config import ConfigGroup
from mmgen_lightning.losses import flow_matching_loss

TIME_DENSITIES = ("uniform", "logit_normal")


@dataclasses.dataclass(frozen=True)
class FlowObjective(ConfigGroup):
    """What the flow is trained to minimise.

    Args:
        cond_drop: share of training samples whose condition is replaced by the null condition; above 0
            is what makes ``guidance_scale`` available when sampling.
        time_density: how ``t`` is drawn: ``uniform`` or ``logit_normal`` (``t = sigmoid(n)``,
            ``n ~ N(logit_normal_mean, logit_normal_std^2)``, Esser et al. 2024).
        logit_normal_mean: location of the logit-normal density (below 0: more of the training on the
            noisy half of the path, where the layout of an image is decided).
        logit_normal_std: scale of the logit-normal density.
    """

    section = "objective"
    cond_drop: float = 0.1
    time_density: str = "logit_normal"
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0

    def check(self) -> None:
        self.require(0.0 <= self.cond_drop < 1.0, "cond_drop", "must be in [0, 1)")
        self.require_choice("time_density", TIME_DENSITIES)
        self.require(self.logit_normal_std > 0, "logit_normal_std", "must be > 0")


def straight_path(x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_t, dx_t/dt)`` on the straight path: ``x_t = (1 - t) x0 + t x1``, ``u_t = x1 - x0``
    (``t: B`` broadcast over the other dimensions)."""
    t = t.view(-1, *([1] * (x1.ndim - 1))).to(x1.dtype)
    return (1 - t) * x0 + t * x1, x1 - x0


def sample_time(batch: int, density: str = "uniform", mean: float = 0.0, std: float = 1.0,
                device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
    """``t: B`` in (0, 1): ``uniform``, or ``logit_normal`` ``t = sigmoid(n), n ~ N(mean, std^2)``
    (Esser et al. 2024: puts the training effort on the middle of the path, where the velocity is
    hardest to predict)."""
    if density == "uniform":
        return torch.rand(batch, device=device, generator=generator)
    if density == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(batch, device=device, generator=generator))
    raise ValueError(f"time_density: unknown {density!r}; allowed: {', '.join(TIME_DENSITIES)}")


def flow_matching_objective(velocity: nn.Module, x1: Tensor, conditions: Mapping[str, Tensor],
                            objective: FlowObjective, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """``{"loss": E || v(x_t, t, c) - (x1 - x0) ||^2}`` for one batch.

    Args:
        velocity: ``v(x_t, t: B, conditions)``, shaped as ``x1``.
        x1: the data as the flow sees it, ``B,C,H,W`` (pixels, log-mel or latents: the family's codec).
        conditions: the batch-contract tensors the velocity network reads its condition from.
        generator: fixes the noise and times (validation draws the same ones every epoch).
    """
    x0 = torch.randn(x1.shape, device=x1.device, dtype=x1.dtype, generator=generator)
    t = sample_time(x1.shape[0], objective.time_density, objective.logit_normal_mean, objective.logit_normal_std,
                    x1.device, generator)
    x_t, _ = straight_path(x0, x1, t)
    return {"loss": flow_matching_loss(velocity(x_t, t, conditions), x0, x1)}
