"""The flow-matching objective (Lipman et al. 2023; rectified flow, Liu et al. 2022).

Noise ``x0 ~ N(0, I)``, data ``x1`` (the codec's view of the output), a time ``t`` from the chosen
density, the straight path ``x_t = (1 - t) x0 + t x1``, and the network regresses its velocity::

    loss = E || v(x_t, t, c) - (x1 - x0) ||^2

The condition ``c`` is replaced by a learned null condition for ``cond_drop`` of the samples (the
condition embedder owns that dropout, as DiT's label embedder does), so the same network also knows
``v(x_t, t, null)`` and sampling can use classifier-free guidance.

Shortcut models (Frans, Hafner, Levine & Abbeel 2024, "One Step Diffusion via Shortcut Models") add
the step size ``d`` to the network's inputs, ``s(x_t, t, d)``: the average velocity over ``[t, t + d]``,
so one Euler step of size ``d`` lands where the ODE would. ``d = 0`` is the instantaneous velocity,
trained by flow matching as above; a larger ``d`` is trained by self-consistency, two half steps make
one whole step::

    s(x_t, t, 2h) = stopgrad( s(x_t, t, h) + s(x_t + h s(x_t, t, h), t + h, h) ) / 2

for ``2h`` in {1, 1/2, ..., 2/2^L}, ``t`` on that step's grid, a ``shortcut_fraction`` of each batch
(the rest is flow matching). The half steps of the smallest size ``1/2^L`` ask the instantaneous
velocity (``d = 0``), which anchors the chain of sizes to the flow. One network evaluation then
samples (``sampler: shortcut``, ``steps: 1``), and the same network still integrates the plain ODE.
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
        shortcut_fraction: share of each batch trained by shortcut self-consistency (0: a plain flow;
            Frans et al. 2024 use 1/4); above 0 the network also reads the step size and
            ``sampler: shortcut`` samples in as few as one step.
        shortcut_levels: ``L``: step sizes 1, 1/2, ..., 1/2^L; the self-consistency targets of sizes down
            to ``2/2^L`` are made of half steps, those of size ``1/2^L`` are the instantaneous velocity.
    """

    section = "objective"
    cond_drop: float = 0.1
    time_density: str = "logit_normal"
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    shortcut_fraction: float = 0.0
    shortcut_levels: int = 7

    def check(self) -> None:
        self.require(0.0 <= self.cond_drop < 1.0, "cond_drop", "must be in [0, 1)")
        self.require(0.0 <= self.shortcut_fraction < 1.0, "shortcut_fraction", "must be in [0, 1)")
        self.require(1 <= self.shortcut_levels <= 12, "shortcut_levels", "must be in 1..12")
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
    """``{"loss": E || v(x_t, t, c) - (x1 - x0) ||^2}`` for one batch; with ``shortcut_fraction > 0``
    the first samples of the batch regress shortcut targets instead (:func:`shortcut_targets`), and
    ``"flow"``/``"shortcut"`` hold the two parts' losses.

    Args:
        velocity: ``v(x_t, t: B, conditions, force_drop=None, step=None)``, shaped as ``x1``.
        x1: the data as the flow sees it, ``B,C,H,W`` (pixels, log-mel or latents: the family's codec).
        conditions: the batch-contract tensors the velocity network reads its condition from.
        generator: fixes the noise and times (validation draws the same ones every epoch).
    """
    x0 = torch.randn(x1.shape, device=x1.device, dtype=x1.dtype, generator=generator)
    t = sample_time(x1.shape[0], objective.time_density, objective.logit_normal_mean, objective.logit_normal_std,
                    x1.device, generator)
    x_t, _ = straight_path(x0, x1, t)
    bootstrap = round(objective.shortcut_fraction * x1.shape[0])
    if bootstrap == 0:
        return {"loss": flow_matching_loss(velocity(x_t, t, conditions), x0, x1)}
    head = {key: value[:bootstrap] for key, value in conditions.items()}
    x_s, s, step, drop, target = shortcut_targets(velocity, x0[:bootstrap], x1[:bootstrap], head, objective, generator)
    times = torch.cat([s, t[bootstrap:]])
    steps = torch.cat([step, torch.zeros(x1.shape[0] - bootstrap, device=x1.device)])  # d = 0: the flow part
    drops = torch.cat([drop, condition_drops(velocity, x1.shape[0] - bootstrap, generator)])
    predicted = velocity(torch.cat([x_s, x_t[bootstrap:]]), times, conditions, drops, steps).float()
    shortcut = (predicted[:bootstrap] - target.float()).pow(2)
    flow = (predicted[bootstrap:] - (x1 - x0)[bootstrap:].float()).pow(2)
    return {"loss": torch.cat([shortcut, flow]).mean(), "shortcut": shortcut.mean(), "flow": flow.mean()}


def condition_drops(velocity: nn.Module, batch: int, generator: torch.Generator | None = None) -> Tensor:
    """``bool B``: which samples get the null condition (the velocity's ``drop_prob`` while training, none
    otherwise), drawn here when one draw must hold for several network calls."""
    probability = velocity.drop_prob if velocity.training else 0.0
    return torch.rand(batch, device=next(velocity.parameters()).device, generator=generator) < probability


def shortcut_targets(velocity: nn.Module, x0: Tensor, x1: Tensor, conditions: Mapping[str, Tensor],
                     objective: FlowObjective, generator: torch.Generator | None = None
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Self-consistency targets of shortcut models for ``x0, x1: B,...``: returns ``(x_t, t, d, drop,
    target)`` with ``d`` drawn from {1, 1/2, ..., 1/2^(L-1)}, ``t`` on the grid of multiples of ``d``,
    ``drop: bool B`` the condition dropout (the same for the two half steps and the trained step, so the
    null condition learns its own shortcuts and guidance works at every step size), and ``target`` the
    mean of two half steps' velocities, without gradient."""
    batch, levels, device = x1.shape[0], objective.shortcut_levels, x1.device
    level = torch.randint(0, levels, (batch,), device=device, generator=generator)
    step = 0.5 ** level.float()
    grid_index = (torch.rand(batch, device=device, generator=generator) * 2 ** level).floor()
    t = grid_index * step
    x_t, _ = straight_path(x0, x1, t)
    drop = condition_drops(velocity, batch, generator)
    half = step / 2
    asked = torch.where(level == levels - 1, torch.zeros_like(half), half)  # the smallest half step: d = 0
    shape = (-1, *([1] * (x1.ndim - 1)))
    with torch.no_grad():
        first = velocity(x_t, t, conditions, drop, asked)
        midway = x_t + half.view(shape).to(x_t.dtype) * first
        second = velocity(midway, t + half, conditions, drop, asked)
    return x_t, t, step, drop, (first + second) / 2
