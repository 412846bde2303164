"""The one optimiser path every family takes: an :class:`Optimization` group turned into Lightning's
``configure_optimizers`` output by :func:`configure_optimization`.

AdamW (or Adam) over parameter groups, with weight decay on matrices only (biases, norms and
embedding/position tables are not decayed, as in GPT-2 and DiT), a linear warm-up, then a constant
rate or a cosine decay to ``final_lr_fraction`` of it. A family that trains two players (the GAN)
asks for one optimiser per named group, each with its own rate (``group_lr``).

``optimizer: muon`` trains the hidden matrices with ``torch.optim.Muon`` (momentum orthogonalised by a
Newton-Schulz iteration, Jordan et al. 2024), its step rescaled to AdamW's update size
(``adjust_lr_fn="match_rms_adamw"``, Liu et al. 2025) so one ``lr`` serves both, and everything else
(biases, norms, tables, convolution kernels) with AdamW.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from mmgen_lightning.config import ConfigGroup

OPTIMIZERS = ("adamw", "adam", "muon")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class Optimization(ConfigGroup):
    """How a family's weights are trained.

    Args:
        optimizer: ``adamw`` (decoupled weight decay), ``adam``, or ``muon`` (Muon on the hidden matrices,
            AdamW on the rest).
        lr: peak learning rate.
        betas: Adam's moment decay rates.
        weight_decay: decay of the matrices (``decay_vectors`` adds biases and norms).
        decay_vectors: also decay biases, norm scales and tables (plain ``torch.optim.AdamW`` on every
            parameter, as the VAE and VQVAE recipes were trained).
        warmup_steps: linear warm-up from ``lr / warmup_steps`` to ``lr`` (0: none).
        schedule: after the warm-up, ``constant`` or ``cosine`` (to ``final_lr_fraction * lr`` at the
            Trainer's last step).
        final_lr_fraction: where the cosine ends.
        group_lr: learning rates of named parameter groups that differ from ``lr`` (the GAN's
            ``discriminator``).
    """

    section = "optimization"
    optimizer: str = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    decay_vectors: bool = False
    warmup_steps: int = 0
    schedule: str = "constant"
    final_lr_fraction: float = 0.1
    group_lr: dict[str, float] = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        self.require_choice("optimizer", OPTIMIZERS)
        self.require_choice("schedule", SCHEDULES)
        self.require(self.lr > 0, "lr", "must be > 0")
        self.require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "must be two numbers in [0, 1)")
        self.require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        self.require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        self.require(0 <= self.final_lr_fraction <= 1, "final_lr_fraction", "must be in [0, 1]")
        self.require(all(rate > 0 for rate in self.group_lr.values()), "group_lr", "must hold rates > 0")

    def lr_factor(self, step: int, total_steps: float) -> float:
        """The learning rate at optimizer step ``step`` (0-based) over ``lr``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant" or not math.isfinite(total_steps) or total_steps <= self.warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (total_steps - self.warmup_steps))
        return self.final_lr_fraction + (1 - self.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def _decay_split(named: Sequence[tuple[str, nn.Parameter]], config: Optimization,
                 no_decay: Sequence[str]) -> list[dict[str, Any]]:
    """Parameter groups: decayed matrices, then the rest (biases, norms, tables named in ``no_decay``)."""
    if config.decay_vectors or config.weight_decay == 0:
        return [{"params": [p for _, p in named], "weight_decay": config.weight_decay}]
    decays = [p.ndim >= 2 and not any(key in name for key in no_decay) for name, p in named]
    return [{"params": [p for (_, p), decay in zip(named, decays) if decay], "weight_decay": config.weight_decay},
            {"params": [p for (_, p), decay in zip(named, decays) if not decay], "weight_decay": 0.0}]


class MuonAdamW(torch.optim.Optimizer):
    """Muon on ``matrices`` and AdamW on ``others``, stepped together as one optimizer (Lightning's automatic
    optimization takes one; torch ships the two apart). ``param_groups`` are the two optimizers' own group
    dicts, so a scheduler's learning rates reach both."""

    def __init__(self, matrices: list[dict[str, Any]], others: list[dict[str, Any]], lr: float,
                 betas: tuple[float, float]) -> None:
        self.optimizers = [torch.optim.Muon(matrices, lr=lr, adjust_lr_fn="match_rms_adamw")] if matrices else []
        self.optimizers.append(torch.optim.AdamW(others, lr=lr, betas=betas))
        super().__init__([p for o in self.optimizers for g in o.param_groups for p in g["params"]], {"lr": lr})
        self.param_groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"]):
            optimizer.load_state_dict(state)


def build_optimizer(named: Sequence[tuple[str, nn.Parameter]], config: Optimization, lr: float,
                    no_decay: Sequence[str] = ()) -> torch.optim.Optimizer:
    """One optimizer over the trainable parameters of ``named`` at rate ``lr``."""
    trainable = [(name, p) for name, p in named if p.requires_grad]
    groups = _decay_split(trainable, config, no_decay)
    if config.optimizer == "muon":  # the hidden matrices: 2-D, and not a table named in no_decay
        hidden = [[p for p in g["params"] if p.ndim == 2] for g in groups]
        ids = {id(p) for ps in hidden for p in ps}
        embedded = {id(p) for name, p in trainable if any(key in name for key in no_decay)}
        matrices = [{"params": [p for p in ps if id(p) not in embedded], "weight_decay": g["weight_decay"]}
                    for ps, g in zip(hidden, groups)]
        others = [{"params": [p for p in g["params"] if id(p) not in ids or id(p) in embedded],
                   "weight_decay": g["weight_decay"]} for g in groups]
        return MuonAdamW([g for g in matrices if g["params"]], [g for g in others if g["params"]], lr,
                         tuple(config.betas))
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(groups, lr=lr, betas=tuple(config.betas))


def configure_optimization(module: L.LightningModule, config: Optimization,
                           groups: Mapping[str, nn.Module] | None = None,
                           no_decay: Sequence[str] = ()) -> Any:
    """``configure_optimizers`` output for ``module``.

    Without ``groups``: one optimizer over the module's trainable parameters. With ``groups``
    (name -> sub-network): one optimizer per group, each at ``config.group_lr.get(name, config.lr)``,
    for families that step their players themselves (manual optimization). Parameter names that
    contain any of ``no_decay`` are never decayed. Every optimizer gets the warm-up/decay schedule,
    stepped once per optimizer step.
    """
    unknown = set(config.group_lr) - set(groups or {})
    if unknown:
        raise ValueError(f"optimization.group_lr: unknown group(s) {', '.join(sorted(unknown))}; "
                         f"this family's groups: {', '.join(groups or {}) or 'none'}")
    if groups is None:
        optimizers = [build_optimizer(list(module.named_parameters()), config, config.lr, no_decay)]
    else:
        optimizers = [build_optimizer(list(network.named_parameters()), config, config.group_lr.get(name, config.lr),
                                      no_decay) for name, network in groups.items()]
    if config.warmup_steps == 0 and config.schedule == "constant":
        return optimizers[0] if groups is None else optimizers
    total = module.trainer.estimated_stepping_batches if module._trainer is not None else math.inf
    schedulers = [{"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: config.lr_factor(step, total)),
                   "interval": "step"} for optimizer in optimizers]
    if groups is None:
        return {"optimizer": optimizers[0], "lr_scheduler": schedulers[0]}
    return optimizers, schedulers

