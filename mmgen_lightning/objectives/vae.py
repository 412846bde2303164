"""The multimodal ELBO of :class:`~mmgen_lightning.models.vae.MultimodalVAE`, and the IWAE bound it is
validated with.

Every modality ``m`` has a Gaussian posterior ``q(z|x_m)`` of the shared latent ``z`` (its *expert*) and,
when it has a private latent, ``q(w_m|x_m)``; its decoder reads ``[z, g w_m]`` (``g``: the private warm-up
gate). The fusion makes the joint posterior of ``z`` and splits the ELBO into terms, each a posterior
``q_t(z|X)`` with the modalities it reconstructs:

- ``poe`` (MVAE, Wu & Goodman 2018): ``q(z|X) ∝ p(z) prod_m q(z|x_m)``; the sub-sampled objective
  ``ELBO(X) + sum_m ELBO(x_m)``, each term reconstructing only the modalities it encodes; the terms add up.
- ``moe`` (MMVAE, Shi et al. 2019): ``q(z|X) = 1/M sum_m q(z|x_m)``, stratified: one term per expert, each
  reconstructing every modality, its KL estimated by ``log q(z|X) - log p(z)``; the terms are averaged.
- ``mopoe`` (Sutter et al. 2021): ``q(z|X) = 1/|S| sum_{s in P(M)} PoE(q(z|x_m), m in s)``; each row draws
  ``z`` from one subset (the subsets spread evenly over the batch) and reconstructs every modality; the
  mixture's KL is bounded above by the closed-form KL of the row's subset.
- ``mmvae_plus`` (MMVAE+, Palumbo et al. 2023): ``moe``'s mixture, with private latents.

Each term scores, per row, with ``z ~ q_t(z|X)``::

    ELBO_t = sum_m lambda_m log p(x_m | z, w_m) - beta (KL_t(z) + sum_{m read} KL(q(w_m|x_m) || N(0, I)))

A term that encodes ``x_m`` *reads* it: ``w_m ~ q(w_m|x_m)``, and it pays that KL; while training, a
``private_dropout`` share of those rows decode ``x_m`` with ``w_m ~ N(0, I)`` instead and pay no KL for it
(each row stays a bound), so the decoder learns to take from ``z`` all it can, as cross-modal generation
needs. A term that reconstructs ``x_m`` without encoding it draws ``w_m ~ N(0, I)``; with ``cross_samples
K > 1`` it scores ``log 1/K sum_k p(x_m | z, w^k)`` (MMVAE+'s importance-weighted cross-reconstruction, a
bound on ``log E_w p(x_m | z, w)`` that rewards samples which vary as ``x_m`` does).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mmgen_lightning.config import ConfigGroup
from mmgen_lightning.losses import (LIKELIHOODS, gaussian_log_density, kl_standard_normal, log_mean_exp,
                                    mixture_log_density, product_of_experts, reparameterize)

FUSIONS = ("poe", "moe", "mopoe", "mmvae_plus")
Gaussian = tuple[Tensor, Tensor]


@dataclasses.dataclass(frozen=True)
class VAEObjective(ConfigGroup):
    """What the VAE is trained to maximise (the ELBO) and the bound it is validated with.

    Args:
        likelihood: ``laplace`` or ``gaussian``, of image, audio (its log-mel) and video around the decoded mean.
        learn_scale: learn the scale of each continuous likelihood; else keep ``init_scale``.
        init_scale: initial (or fixed) scale of the continuous likelihoods.
        likelihood_weights: per-modality weights ``lambda_m`` of the reconstruction terms (1 each when left out).
        beta: weight of the KL terms once the warm-up ends.
        kl_warmup_steps: steps over which the KL weight rises linearly from 0 to ``beta``.
        cross_samples: draws ``K`` of ``w_m`` where a term reconstructs ``x_m`` without encoding it (1: the plain
            ELBO, which penalises every variation ``w_m`` makes).
        private_warmup_steps: ``N``: the gate ``g`` on the private latents is 0 for the first ``N / 2`` steps and
            rises linearly to 1 at step ``N``, so ``z`` learns what the modalities share (the digit, the shape)
            before a private latent can carry it (cross-modal generation draws ``w_m`` from the prior and would
            get it wrong).
        private_dropout: the share of the rows that read ``x_m`` which decode it with ``w_m ~ N(0, I)`` while training.
        iwae_samples: importance samples ``K`` of the IWAE bound (validation, and ``log_likelihood``'s default).
    """

    section = "objective"
    likelihood: str = "laplace"
    learn_scale: bool = True
    init_scale: float = 0.1
    likelihood_weights: dict[str, float] | None = None
    beta: float = 1.0
    kl_warmup_steps: int = 0
    cross_samples: int = 1
    private_warmup_steps: int = 0
    private_dropout: float = 0.0
    iwae_samples: int = 8

    def check(self) -> None:
        self.require_choice("likelihood", LIKELIHOODS)
        self.require(self.init_scale > 0, "init_scale", "must be > 0")
        self.require(all(weight >= 0 for weight in (self.likelihood_weights or {}).values()), "likelihood_weights",
                     "must hold weights >= 0")
        self.require(self.beta >= 0, "beta", "must be >= 0")
        for name in ("kl_warmup_steps", "private_warmup_steps"):
            self.require(getattr(self, name) >= 0, name, "must be >= 0")
        for name in ("cross_samples", "iwae_samples"):
            self.require(getattr(self, name) >= 1, name, "must be >= 1")
        self.require(0 <= self.private_dropout < 1, "private_dropout", "must be in [0, 1)")


class Term(NamedTuple):
    """One term of the ELBO: ``posterior`` ``q_t(z|X)`` (``B,D`` each), the modalities it ``reconstructs``, and
    ``encoded: M,B``, 1 where its posterior of row ``b`` encodes the ``m``-th modality."""

    posterior: Gaussian
    reconstructs: tuple[str, ...]
    encoded: Tensor


def private_gate(step: int, warmup_steps: int) -> float:
    """The private latents' gate at training step ``step``: closed until ``N / 2``, open from ``N`` (1 without
    a warm-up)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, max(0.0, 2 * step / warmup_steps - 1))


def multimodal_elbo(autoencoder: nn.Module, inputs: dict[str, Tensor], fusion: str,
                    objective: VAEObjective, kl_scale: float) -> dict[str, Tensor]:
    """``{"loss": -ELBO, "kl", "reconstruction": {m: mean log p(x_m | z, w_m)}}`` of one batch.

    Args:
        autoencoder: the encoders and decoders, a :class:`~mmgen_lightning.models.vae.MultimodalAutoencoder` (a
            private dropout applies while it is in training mode).
        inputs: the batch as the networks read it (``autoencoder.read(batch)``).
        fusion: one of :data:`FUSIONS`.
        kl_scale: ``beta`` of this step (the KL warm-up's, while training).
    """
    modalities = autoencoder.modalities
    experts, privates = autoencoder.encode(inputs, modalities)
    terms = elbo_terms(experts, modalities, fusion)
    dropout = objective.private_dropout if autoencoder.training and privates else 0.0
    readers = [read_private(term.encoded, dropout) for term in terms]  # M,B: rows decoding x_m with q(w_m|x_m)
    zs = [reparameterize(*term.posterior) for term in terms]
    batch_size = zs[0].shape[0]
    cross = objective.cross_samples > 1 and autoencoder.private_open  # a closed gate makes K draws of w alike
    reconstruction = torch.zeros(len(terms), batch_size, device=zs[0].device)
    per_modality = {}
    for index, name in enumerate(modalities):
        users = [i for i, term in enumerate(terms) if name in term.reconstructs]
        if name in privates and cross:
            z, read = torch.cat([zs[i] for i in users]), torch.cat([readers[i][index] for i in users]).bool()
            log_p = cross_reconstruction(autoencoder, name, inputs, z, read, privates[name], objective.cross_samples)
        else:
            codes = torch.cat([autoencoder.decoder_code(name, zs[i], privates, readers[i][index]) for i in users])
            log_p = autoencoder.log_prob(name, inputs, codes)
        log_p = log_p.view(len(users), batch_size)
        reconstruction[users] += float((objective.likelihood_weights or {}).get(name, 1.0)) * log_p
        per_modality[name] = log_p.mean()
    if shared_fusion(fusion) == "moe":  # the mixture's KL, one sample: log q(z|X) - log p(z)
        mus, logvars = (torch.stack(parts) for parts in zip(*(term.posterior for term in terms)))
        log_prior = [gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)) for z in zs]
        kl = torch.stack([mixture_log_density(z, mus, logvars) - prior for z, prior in zip(zs, log_prior)])
    else:
        kl = torch.stack([kl_standard_normal(*term.posterior) for term in terms])
    if privates:  # each row pays the KL of the private latents it read
        private_kl = torch.stack([kl_standard_normal(*privates[m]) for m in privates])  # P,B
        rows = [modalities.index(m) for m in privates]
        kl = kl + torch.stack([(reader[rows] * private_kl).sum(0) for reader in readers])
    elbo = reconstruction - kl_scale * kl  # terms,B
    elbo = elbo.sum(0) if fusion == "poe" else elbo.mean(0)
    return {"loss": -elbo.mean(), "kl": kl.mean(), "reconstruction": per_modality}


def iwae_log_weights(autoencoder: nn.Module, inputs: dict[str, Tensor], fusion: str,
                     num_samples: int) -> Tensor:
    """``log p(X, z_k) - log q(z_k | X)`` for ``K = num_samples`` draws of the joint posterior: ``K,B`` (with
    private latents ``z_k`` stands for ``(z, w_1 .. w_M)``; the likelihoods are unweighted).

    ``mean_k`` of these is the ELBO of the joint posterior; ``logsumexp_k - log K`` is the IWAE bound
    (Burda et al. 2016), which never decreases with ``K``.
    """
    modalities = autoencoder.modalities
    experts, privates = autoencoder.encode(inputs, modalities)
    mus, logvars = joint_components(experts, modalities, fusion)  # S,B,D
    components, batch_size, _ = mus.shape
    choice = torch.randint(components, (num_samples, batch_size), device=mus.device)
    rows = torch.arange(batch_size, device=mus.device)
    z = reparameterize(mus[choice, rows], logvars[choice, rows])  # K,B,D
    log_q = mixture_log_density(z, mus, logvars)
    log_prior = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
    log_p = 0
    for name in modalities:
        code = z
        if name in privates:  # the joint posterior is q(z|X) prod_m q(w_m|x_m), the prior p(z) prod_m p(w_m)
            mu, logvar = (t.expand(num_samples, *t.shape) for t in privates[name])
            w = reparameterize(mu, logvar)  # K,B,P
            log_q = log_q + gaussian_log_density(w, mu, logvar)
            log_prior = log_prior + gaussian_log_density(w, torch.zeros_like(w), torch.zeros_like(w))
            code = autoencoder.private_code(z, w)
        log_p = log_p + autoencoder.log_prob(name, inputs, code.flatten(0, 1)).view(num_samples, batch_size)
    return log_p + log_prior - log_q


# --- the joint posterior --------------------------------------------------------------------------
def shared_fusion(fusion: str) -> str:
    """How ``z`` is fused: MMVAE+ uses MMVAE's mixture."""
    return "moe" if fusion == "mmvae_plus" else fusion


def subsets(names: list[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``names``, smallest first."""
    return [s for size in range(1, len(names) + 1) for s in itertools.combinations(names, size)]


def subset_posterior(experts: dict[str, Gaussian], subset: tuple[str, ...], fusion: str) -> Gaussian:
    """``q(z|x_s)``: the expert itself for a mixture of experts, else the product with the prior expert."""
    if shared_fusion(fusion) == "moe" and len(subset) == 1:
        return experts[subset[0]]
    mus = torch.stack([experts[m][0] for m in subset])
    logvars = torch.stack([experts[m][1] for m in subset])
    return product_of_experts(mus, logvars)


def joint_components(experts: dict[str, Gaussian], names: list[str], fusion: str) -> Gaussian:
    """The components ``S,B,D`` of the joint posterior of ``names`` (one for PoE), equally weighted."""
    chosen = {"poe": [tuple(names)], "moe": [(m,) for m in names]}.get(shared_fusion(fusion)) or subsets(names)
    parts = [subset_posterior(experts, s, fusion) for s in chosen]
    return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])


def elbo_terms(experts: dict[str, Gaussian], modalities: list[str], fusion: str) -> list[Term]:
    """The terms of ``fusion``'s objective (see the module docstring)."""
    everything, count = tuple(modalities), len(modalities)
    batch_size, device = experts[modalities[0]][0].shape[0], experts[modalities[0]][0].device
    every = torch.ones(count, batch_size, device=device)
    only = [torch.eye(count, device=device)[i].unsqueeze(1).expand(count, batch_size) for i in range(count)]
    if shared_fusion(fusion) == "poe":
        singles = [Term(subset_posterior(experts, (m,), fusion), (m,), only[i]) for i, m in enumerate(modalities)]
        return [Term(subset_posterior(experts, everything, fusion), everything, every)] + (singles if count > 1 else [])
    if shared_fusion(fusion) == "moe":
        return [Term(experts[m], everything, only[i]) for i, m in enumerate(modalities)]
    # MoPoE samples the mixture by giving each row one subset, the subsets spread evenly over the batch
    # (stratified, as in Sutter et al.'s code): one decoder pass per modality, not one per subset
    every_subset = subsets(modalities)
    choice = torch.randperm(batch_size, device=device) % len(every_subset)
    membership = torch.tensor([[m in s for s in every_subset] for m in modalities], device=device)
    mask = membership[:, choice].float()  # M,B: 1 where the row's subset holds the modality
    mus = torch.stack([experts[m][0] for m in modalities])
    logvars = torch.stack([experts[m][1] for m in modalities])
    return [Term(product_of_experts(mus, logvars, mask), everything, mask)]


# --- private latents ------------------------------------------------------------------------------
def read_private(encoded: Tensor, dropout: float) -> Tensor:
    """``M,B``: the rows of a term (``encoded``, ``M,B``) that decode ``x_m`` with ``w_m ~ q(w_m|x_m)``: those
    that encode ``x_m``, less a ``dropout`` share of them."""
    if not dropout:
        return encoded
    return encoded * (torch.rand(encoded.shape, device=encoded.device) >= dropout)


def cross_reconstruction(autoencoder: nn.Module, name: str, inputs: dict[str, Tensor], z: Tensor,
                         read: Tensor, posterior: Gaussian, draws: int) -> Tensor:
    """``log p(x_name | z, w)`` per row of ``z: N,D`` (the batch's rows repeated, ``N = U*B``): one draw
    ``w ~ q(w|x_name)`` where ``read: N`` (bool) is set; elsewhere the importance-weighted score over ``K = draws``
    draws ``w^k ~ N(0, I)``: ``log 1/K sum_k p(x_name | z, w^k)``. Only those rows are decoded ``K`` times."""
    rows = torch.arange(len(z), device=z.device) % inputs[name].shape[0]  # each row's item of the batch
    log_p = z.new_empty(len(z))
    inside, cross = read.nonzero().squeeze(1), (~read).nonzero().squeeze(1)
    if len(inside):
        mu, logvar = (t[rows[inside]] for t in posterior)
        code = autoencoder.private_code(z[inside], reparameterize(mu, logvar))
        log_p[inside] = autoencoder.log_prob(name, _rows(inputs, rows[inside]), code)
    if len(cross):
        shared = z[cross].expand(draws, *z[cross].shape)
        w = torch.randn(*shared.shape[:-1], posterior[0].shape[-1], device=z.device)
        code = autoencoder.private_code(shared, w)
        scores = autoencoder.log_prob(name, _rows(inputs, rows[cross]), code.flatten(0, 1)).view(draws, -1)
        log_p[cross] = log_mean_exp(scores, 0)
    return log_p


def _rows(inputs: dict[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
    return {key: value[rows] for key, value in inputs.items()}

