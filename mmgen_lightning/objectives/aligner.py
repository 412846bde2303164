"""The alignment objective: symmetric InfoNCE over every pair of modalities (CLIP, Radford et al. 2021,
generalised from two modalities to any number, as ImageBind pairs them).

Each modality ``m`` of an item is embedded as a unit vector ``z_m``; for a pair ``(m, n)`` every query
``z_m[i]`` must pick its own item among the candidates ``z_n`` (and the other way round), with logits
scaled by ``s``, the learned inverse temperature::

    loss = mean over pairs (m, n) of  1/(2B) sum_i [ -log softmax_j(s <z_m[i], z_n[j]>)[i]
                                                     -log softmax_j(s <z_n[i], z_m[j]>)[i] ]

``s = exp(log s)`` is learned as a log and clamped to ``[1, max_logit_scale]`` (no gradient past the
clamp), as CLIP does. Under DDP the candidates are every process's embeddings, gathered *with
gradients*, so each query is contrasted with the whole global batch and the loss and gradients are
those of one process on that batch (:func:`~mmgen_lightning.losses.symmetric_info_nce`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence

from torch import Tensor

from mmgen_lightning.config import ConfigGroup
from mmgen_lightning.losses import symmetric_info_nce


@dataclasses.dataclass(frozen=True)
class AlignerObjective(ConfigGroup):
    """The contrastive loss's temperature.

    Args:
        temperature: initial softmax temperature ``1 / s`` of the InfoNCE logits; ``s`` is learned.
        max_logit_scale: the clamp of ``s`` (CLIP: 100).
    """

    section = "objective"
    temperature: float = 0.07
    max_logit_scale: float = 100.0

    def check(self) -> None:
        self.require(self.max_logit_scale >= 1, "max_logit_scale", "must be >= 1")
        self.require(self.temperature > 0 and 1 / self.temperature <= self.max_logit_scale, "temperature",
                     f"must be > 0 with 1/temperature <= max_logit_scale ({self.max_logit_scale})")


def clamped_logit_scale(log_scale: Tensor, objective: AlignerObjective) -> Tensor:
    """``s = exp(log s)`` clamped to ``[1, max_logit_scale]`` (no gradient past the clamp, as CLIP)."""
    return log_scale.clamp(0.0, math.log(objective.max_logit_scale)).exp()


def contrastive_objective(embed: Callable[[Mapping[str, Tensor], str], Tensor], batch: Mapping[str, Tensor],
                          modalities: Sequence[str], log_scale: Tensor, objective: AlignerObjective,
                          gather: Callable[[Tensor], Tensor] | None = None, rank: int = 0) -> dict[str, Tensor]:
    """``{"loss", "embeddings"}`` for one batch: the mean symmetric InfoNCE over every pair of ``modalities``
    and the embeddings it was computed from (modality -> ``B,embed_dim`` unit vectors).

    Args:
        embed: ``(batch, modality) -> B,embed_dim`` unit vectors (the aligner's encoders and heads).
        batch: batch-contract tensors holding at least two of ``modalities``.
        log_scale: the learned ``log s`` (a scalar).
        gather: ``B,D ->`` every process's ``B,D`` stacked (``N,D``) with gradients; ``None``: one process.
        rank: this process's place among them (its rows of the gathered candidates).
    """
    embeddings = {m: embed(batch, m) for m in modalities}
    candidates, offset = embeddings, 0
    if gather is not None:
        candidates = {m: gather(z) for m, z in embeddings.items()}
        offset = rank * next(iter(embeddings.values())).shape[0]
    scale = clamped_logit_scale(log_scale, objective)
    pairs = list(itertools.combinations(embeddings, 2))
    loss = sum(symmetric_info_nce(embeddings[m], embeddings[n], scale, candidates[m], candidates[n], offset)
               for m, n in pairs) / len(pairs)
    return {"loss": loss, "embeddings": embeddings}
