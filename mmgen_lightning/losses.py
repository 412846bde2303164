"""Loss functions shared by the families: pure functions, formula in each docstring.

Gaussians are given as ``(mu, logvar)`` with shapes ``B,D`` (or ``...,D``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


# --- Gaussians, KL and experts ----------------------------------------------------------------
def gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """``log N(z; mu, diag(exp(logvar)))`` summed over the last dim:
    ``-1/2 * sum(log 2pi + logvar + (z - mu)^2 / exp(logvar))``."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I)) = 1/2 * sum(exp(logvar) + mu^2 - 1 - logvar)`` per row."""
    return 0.5 * (torch.exp(logvar) + mu.pow(2) - 1.0 - logvar).sum(-1)


def product_of_experts(mus: Tensor, logvars: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Product of Gaussian experts ``E,B,D`` plus the ``N(0, I)`` prior expert (MVAE, Wu & Goodman 2018).

    Precision-weighted: ``T = 1 + sum_e m_e / var_e``, ``var = 1 / T``, ``mu = var * sum_e m_e mu_e / var_e``,
    where ``m_e`` (``mask: E,B``, 1 = present) drops missing experts per sample.
    """
    precision = torch.exp(-logvars)
    if mask is not None:
        precision = precision * mask.unsqueeze(-1).to(precision.dtype)
    joint_precision = 1.0 + precision.sum(0)
    mu = (precision * mus).sum(0) / joint_precision
    return mu, -torch.log(joint_precision)


def mixture_log_density(z: Tensor, mus: Tensor, logvars: Tensor) -> Tensor:
    """``log (1/S) sum_s N(z; mu_s, var_s)`` for components ``S,B,D`` and ``z: B,D`` (or ``K,B,D``)."""
    log_densities = gaussian_log_density(z.unsqueeze(-3), mus, logvars)  # ...,S,B
    return torch.logsumexp(log_densities, dim=-2) - math.log(mus.shape[0])


def reparameterize(mu: Tensor, logvar: Tensor, scale: float = 1.0) -> Tensor:
    """``z = mu + scale * exp(logvar / 2) * eps`` with ``eps ~ N(0, I)`` (Kingma & Welling 2014)."""
    return mu + scale * torch.exp(0.5 * logvar) * torch.randn_like(mu)


# --- likelihoods ------------------------------------------------------------------------------
LIKELIHOODS = ("laplace", "gaussian")


def continuous_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor, kind: str = "laplace") -> Tensor:
    """Per-sample log-likelihood summed over every non-batch dim.

    laplace:  ``-|x - mean| / b - log(2b)`` with ``b = exp(log_scale)``;
    gaussian: ``-(x - mean)^2 / (2 s^2) - log s - 1/2 log 2pi`` with ``s = exp(log_scale)``.
    """
    if kind == "laplace":
        log_p = -(x - mean).abs() * torch.exp(-log_scale) - log_scale - math.log(2.0)
    elif kind == "gaussian":
        log_p = -0.5 * (x - mean).pow(2) * torch.exp(-2 * log_scale) - log_scale - 0.5 * LOG_2PI
    else:
        raise ValueError(f"likelihood: unknown {kind!r}; allowed: {', '.join(LIKELIHOODS)}")
    return log_p.flatten(1).sum(1)


def kl_weight(step: int, beta: float, warmup_steps: int) -> float:
    """Linear KL warm-up: ``beta * min(1, step / warmup_steps)`` (Bowman et al. 2016)."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)
