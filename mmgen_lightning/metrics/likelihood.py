"""Likelihood metrics, for the families that have one.

- ``MultimodalVAE``: the IWAE bound (Burda et al. 2016) ``log p(X) >= E log 1/K sum_k w_k`` on the
  joint of every modality it models, from its ``log_importance_weights``; the NLL reported is its
  negation, an upper bound on the true NLL that tightens as ``K`` grows.
- ``Captioner`` (and any family with ``log_likelihood(batch) -> B``): the exact ``log p(text | condition)``.

Bits per dimension are ``NLL / (D ln 2)`` with ``D`` the number of scalars the likelihood scores:
pixels, log-mel bins (the VAE scores audio as a log-mel spectrogram), real tokens after ``[BOS]``,
1 for a label. For images, audio and video the density is continuous on the [-1, 1] scale, so
their bits/dim are differential (they can be negative) and not the 8-bit discrete bits/dim of
image-likelihood papers; for text they are bits per token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor
from torchmetrics import Metric


def bits_per_dim(nll_nats: Tensor | float, dims: Tensor | float) -> Tensor | float:
    """``nll / (dims * ln 2)``: nats per sample to bits per scored dimension."""
    return nll_nats / (dims * math.log(2))


def iwae_nll(log_weights: Tensor) -> Tensor:
    """``-(logsumexp_k log w_k - log K)`` per sample, from log importance weights ``K,B``."""
    return -(torch.logsumexp(log_weights.double(), 0) - math.log(log_weights.shape[0]))


def scored_dimensions(model, batch: Mapping[str, Tensor], modalities: list[str] | tuple[str, ...]) -> Tensor:
    """Scalars per sample that ``model``'s likelihood of ``modalities`` scores: ``B`` (float64)."""
    size = next(iter(batch.values())).shape[0]
    dims = torch.zeros(size, dtype=torch.float64, device=next(iter(batch.values())).device)
    for name in modalities:
        if name == "text":
            dims += batch["text_mask"][:, 1:].sum(1)
        elif name == "label":
            dims += 1
        elif name == "audio" and hasattr(model, "log_mel"):
            dims += model.log_mel.n_mels * model.log_mel.frames
        else:
            dims += batch[name][0].numel()
    return dims


def has_likelihood(model) -> bool:
    """Whether :func:`negative_log_likelihood` can score ``model``'s family."""
    return hasattr(model, "log_importance_weights") or (
        hasattr(model, "log_likelihood") and tuple(getattr(model, "output_modalities", ())) == ("text",))


@torch.no_grad()
def negative_log_likelihood(model, batch: Mapping[str, Tensor], iwae_samples: int | None = None
                            ) -> tuple[str, Tensor, Tensor] | None:
    """``(name, nll B, dims B)`` in nats for one batch, or ``None`` for a family without a likelihood."""
    if hasattr(model, "log_importance_weights"):
        samples = iwae_samples or model.hparams.iwae_samples
        nll = iwae_nll(model.log_importance_weights(dict(batch), samples))
        return f"iwae_{samples}", nll, scored_dimensions(model, batch, model.modalities)
    if hasattr(model, "log_likelihood") and tuple(getattr(model, "output_modalities", ())) == ("text",):
        nll = -model.log_likelihood(batch).double()
        return "text", nll, scored_dimensions(model, batch, ["text"])
    return None


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
