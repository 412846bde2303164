"""The optimizer recipe the transformer families share: AdamW without weight decay on biases, norms
and position/embedding tables, linear warm-up, then a cosine decay to 10% of the learning rate."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch


def adamw_warmup_cosine(module: L.LightningModule, no_decay: tuple[str, ...]) -> dict[str, Any]:
    """``configure_optimizers`` output for ``module`` (hparams ``lr``, ``betas``, ``weight_decay``,
    ``warmup_steps``); matrices whose name contains any of ``no_decay`` are not decayed either."""
    hp = module.hparams
    trainable = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    decays = [p.ndim >= 2 and not any(key in name for key in no_decay) for name, p in trainable]
    decayed = [p for (_, p), decay in zip(trainable, decays) if decay]
    others = [p for (_, p), decay in zip(trainable, decays) if not decay]
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": hp.weight_decay},
                                   {"params": others, "weight_decay": 0.0}], lr=hp.lr, betas=tuple(hp.betas))
    total = module.trainer.estimated_stepping_batches if module._trainer is not None else math.inf
    warmup = hp.warmup_steps

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not math.isfinite(total) or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
