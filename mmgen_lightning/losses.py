"""Loss functions shared by the families: pure functions, formula in each docstring.

Gaussians are given as ``(mu, logvar)`` with shapes ``B,D`` (or ``...,D``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
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


def log_mean_exp(log_p: Tensor, dim: int = 0) -> Tensor:
    """``log (1/K) sum_k exp(log_p_k)`` over ``dim`` (size ``K``), computed stably: with ``log_p_k =
    log p(x | w_k)``, ``w_k ~ r``, it is the ``K``-sample importance bound on ``log E_r p(x | w)`` (Burda et
    al. 2016), which never decreases with ``K``, where the plain mean is Jensen's bound, the ``K = 1`` case."""
    return torch.logsumexp(log_p, dim) - math.log(log_p.shape[dim])


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


# --- adversarial losses and regularisers (ConditionalGAN) -------------------------------------
# Discriminator outputs are raw logits (real-valued scores, no sigmoid); every loss below is a
# mean over the batch. The probabilistic losses go through ``binary_cross_entropy_with_logits``,
# which is exact where ``log(sigmoid(x))`` computed in two steps would underflow.
ADVERSARIAL_LOSSES = ("non_saturating", "hinge", "wgan_gp", "least_squares")


def _check_adversarial(kind: str) -> None:
    if kind not in ADVERSARIAL_LOSSES:
        raise ValueError(f"loss: unknown {kind!r}; allowed: {', '.join(ADVERSARIAL_LOSSES)}")


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "non_saturating") -> Tensor:
    """The discriminator's loss on real and (detached) fake logits, each term a batch mean.

    non_saturating: ``BCE(D(x), 1) + BCE(D(G(z)), 0) = softplus(-D(x)) + softplus(D(G(z)))`` (Goodfellow et al. 2014);
    hinge:          ``relu(1 - D(x)) + relu(1 + D(G(z)))`` (Lim & Ye 2017; Miyato et al. 2018);
    wgan_gp:        ``D(G(z)) - D(x)``, the critic side of the Wasserstein loss; add :func:`gradient_penalty`
                    (Gulrajani et al. 2017);
    least_squares:  ``1/2 (D(x) - 1)^2 + 1/2 D(G(z))^2`` (Mao et al. 2017, targets a=0, b=1).
    """
    _check_adversarial(kind)
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "non_saturating":
        return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if kind == "wgan_gp":
        return fake_logits.mean() - real_logits.mean()
    return 0.5 * (real_logits - 1.0).pow(2).mean() + 0.5 * fake_logits.pow(2).mean()


def generator_loss(fake_logits: Tensor, kind: str = "non_saturating") -> Tensor:
    """The generator's loss on the logits of its samples (gradients flow through ``D`` into ``G``).

    non_saturating: ``BCE(D(G(z)), 1) = softplus(-D(G(z)))``, which keeps gradients alive where ``D`` wins;
    hinge, wgan_gp: ``-D(G(z))``;
    least_squares:  ``1/2 (D(G(z)) - 1)^2`` (Mao et al. 2017, c=1).
    """
    _check_adversarial(kind)
    fake_logits = fake_logits.float()
    if kind == "non_saturating":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if kind in ("hinge", "wgan_gp"):
        return -fake_logits.mean()
    return 0.5 * (fake_logits - 1.0).pow(2).mean()


def input_gradient_norms(outputs: Tensor, inputs: Tensor) -> Tensor:
    """``||d outputs_i / d inputs_i||_2`` per sample ``B``, with the graph kept so a penalty on it trains ``D``.

    ``outputs`` (``B`` or ``B,1``) must come from ``inputs`` (``B,...``, ``requires_grad``), one row each."""
    (gradients,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=True)
    gradients = gradients.flatten(1)
    return gradients.to(torch.promote_types(gradients.dtype, torch.float32)).norm(2, dim=1)


def r1_penalty(real_logits: Tensor, real_inputs: Tensor) -> Tensor:
    """``E_x ||grad_x D(x)||^2`` on real data (Mescheder et al. 2018); the loss adds ``gamma / 2`` times it.

    ``real_inputs`` must have ``requires_grad`` set before ``real_logits = D(real_inputs)`` was computed."""
    return input_gradient_norms(real_logits, real_inputs).pow(2).mean()


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
    """``E_xhat (||grad_xhat D(xhat)||_2 - 1)^2`` on ``xhat = e x + (1 - e) G(z)``, ``e ~ U[0, 1]`` per sample
    (WGAN-GP, Gulrajani et al. 2017); the loss adds ``lambda`` (10 in the paper) times it.

    ``critic`` maps a batch like ``real`` to logits ``B``; ``fake`` should be detached."""
    mix = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), device=real.device, dtype=real.dtype)
    interpolates = (mix * real.detach() + (1 - mix) * fake.detach()).requires_grad_(True)
    return (input_gradient_norms(critic(interpolates), interpolates) - 1.0).pow(2).mean()


# --- vector quantisation (VQVAE) --------------------------------------------------------------
def commitment_loss(inputs: Tensor, quantized: Tensor) -> Tensor:
    """VQ-VAE commitment term (van den Oord et al. 2017, eq. 3): ``mean((z_e - sg(e))^2)``; pulls the
    encoder outputs ``z_e`` towards their (fixed) codes ``e``. Shapes of the two must match."""
    return F.mse_loss(inputs.float(), quantized.detach().float())


def codebook_perplexity(counts: Tensor) -> Tensor:
    """``exp(H(p))`` of the code histogram ``counts: K`` with ``p = counts / sum(counts)``: the effective
    number of codes in use (1 when one code takes everything, ``K`` when all are used equally)."""
    p = counts.double() / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()).float()


# --- contrastive alignment (Aligner, ConditionalGAN's matching-aware term) ---------------------
def symmetric_info_nce(a: Tensor, b: Tensor, logit_scale: Tensor | float, all_a: Tensor | None = None,
                       all_b: Tensor | None = None, offset: int = 0) -> Tensor:
    """Symmetric InfoNCE of paired embeddings (CLIP, Radford et al. 2021; van den Oord et al. 2018).

    ``a, b: B,D`` (rows L2-normalised; row ``i`` of ``a`` pairs with row ``i`` of ``b``) are the queries;
    ``all_a, all_b: N,D`` are the candidates (default ``a``, ``b``), holding ``a``, ``b`` at rows
    ``offset .. offset + B - 1`` (under DDP: the batches of every process, gathered). With ``s`` the
    logit scale (inverse temperature):

        loss = 1/(2B) * sum_i [ -log softmax_j(s <a_i, all_b_j>)[offset + i]
                                -log softmax_j(s <b_i, all_a_j>)[offset + i] ]

    Each process's loss is the mean over its own queries, so the mean over processes (what DDP's
    gradient averaging gives) is the loss of one process on the gathered batch.
    """
    all_a = a if all_a is None else all_a
    all_b = b if all_b is None else all_b
    targets = torch.arange(a.shape[0], device=a.device) + offset
    logits_ab = logit_scale * a.float() @ all_b.float().T  # B,N
    logits_ba = logit_scale * b.float() @ all_a.float().T
    return 0.5 * (F.cross_entropy(logits_ab, targets) + F.cross_entropy(logits_ba, targets))


def flow_matching_loss(predicted: Tensor, x0: Tensor, x1: Tensor) -> Tensor:
    """Conditional flow matching loss ``E || v(x_t, t) - (x1 - x0) ||^2``, the mean over every
    scalar (so its scale does not depend on the image size)."""
    return (predicted.float() - (x1 - x0).float()).pow(2).mean()
