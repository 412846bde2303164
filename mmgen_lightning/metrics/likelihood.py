"""Likelihood metrics, for the families that have one.

Every family answers the same call, ``model.log_likelihood(batch, **options) -> Likelihood | None``
(``models/base.py``); this module only turns its answers into NLL and bits/dim. For example:

- ``MultimodalVAE``: the IWAE bound (Burda et al. 2016) ``log p(X) >= E log 1/K sum_k w_k`` on the
  joint of every modality it models; the NLL reported is its negation, an upper bound on the true
  NLL that tightens as ``K`` (``iwae_samples``) grows.
- ``Captioner``: the exact ``log p(text | condition)``.

Bits per dimension are ``NLL / (D ln 2)`` with ``D`` the number of scalars the likelihood scores:
pixels, log-mel bins (the VAE scores audio as a log-mel spectrogram), real tokens after ``[BOS]``,
1 for a label. For images, audio and video the density is continuous on the [-1, 1] scale, so
their bits/dim are differential (they can be negative) and not the 8-bit discrete bits/dim of
image-likelihood papers; for text they are bits per token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


def bits_per_dim(nll_nats: Tensor | float, dims: Tensor | float) -> Tensor | float:
    """``nll / (dims * ln 2)``: nats per sample to bits per scored dimension."""
    return nll_nats / (dims * math.log(2))


def iwae_nll(log_weights: Tensor) -> Tensor:
    """``-(logsumexp_k log w_k - log K)`` per sample, from log importance weights ``K,B``."""
    return -(torch.logsumexp(log_weights.double(), 0) - math.log(log_weights.shape[0]))


def has_likelihood(model) -> bool:
    """Whether ``model``'s family implements the ``log_likelihood`` contract of ``GenerativeModule``."""
    return bool(getattr(model, "has_likelihood", False))


@torch.no_grad()
def negative_log_likelihood(model, batch: Mapping[str, Tensor], **options: Any) -> tuple[str, Tensor, Tensor] | None:
    """``(name, nll B, dims B)`` in nats for one batch through ``model.log_likelihood``, or ``None`` for
    a family without a likelihood. Of ``options`` only those the family declares in
    ``likelihood_options`` are passed (``iwae_samples`` reaches the VAE, not the Captioner); ``None``
    values mean "the model's default"."""
    if not has_likelihood(model):
        return None
    accepted = {k: v for k, v in options.items() if k in model.likelihood_options and v is not None}
    result = model.log_likelihood(dict(batch), **accepted)
    return result.name, -result.log_prob.double(), result.dims.double()


class LikelihoodMetric(Metric):
    """Mean NLL per sample and bits per scored dimension over everything it was updated with."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nll", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("dims", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll: Tensor, dims: Tensor) -> None:
        self.nll += nll.double().sum()
        self.dims += dims.double().sum()
        self.count += nll.numel()

    def compute(self) -> dict[str, Tensor]:
        return {"nll_nats_per_sample": self.nll / self.count, "bits_per_dim": bits_per_dim(self.nll, self.dims),
                "samples": self.count}
