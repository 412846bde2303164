"""MultimodalVAE: one latent space shared by every modality, trained by an ELBO whose joint
posterior is a product of experts (MVAE), a mixture of experts (MMVAE) or a mixture of products
of experts (MoPoE).

- MVAE (Wu & Goodman 2018): ``q(z|X) ∝ p(z) prod_m q(z|x_m)``; the sub-sampled objective is
  ``ELBO(X) + sum_m ELBO(x_m)``, each term reconstructing only the modalities it encodes.
- MMVAE (Shi et al. 2019): ``q(z|X) = 1/M sum_m q(z|x_m)``; stratified: one ``z`` per expert,
  each reconstructing every modality, KL estimated by ``log q(z|X) - log p(z)``.
- MoPoE (Sutter et al. 2021): ``q(z|X) = 1/|S| sum_{s in P(M)} PoE(q(z|x_m), m in s)``; each row
  of the batch draws ``z`` from one subset (stratified over the batch) and reconstructs every
  modality; the mixture's KL is bounded above by the mean of the subsets' closed-form KLs.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgen_lightning.knobs import Knob, family_knobs
from mmgen_lightning.losses import (LIKELIHOODS, continuous_log_likelihood, gaussian_log_density, kl_standard_normal,
                                    kl_weight, log_mean_exp, mixture_log_density, product_of_experts, reparameterize)
from mmgen_lightning.modalities import MODALITIES, Modality, TextModality, get_modality
from mmgen_lightning.models.base import GenerativeModule, Likelihood, scored_dimensions
from mmgen_lightning.models.layers import modality_networks

FUSIONS = ("poe", "moe", "mopoe", "mmvae_plus")
VAE_MODALITIES = MODALITIES  # every batch key: each modality brings its own encoder and decoder
Gaussian = tuple[Tensor, Tensor]


class MultimodalVAE(GenerativeModule):
    """A multimodal VAE with a shared latent ``z`` (and optional private latents ``w_m``).

    Args:
        data_spec: sizes from the datamodule (linked by the CLI).
        modalities: modalities the model encodes and decodes; default: all the data carries.
        fusion: joint posterior of the shared ``z``, one of ``poe`` (MVAE), ``moe`` (MMVAE), ``mopoe``
            (MoPoE), ``mmvae_plus`` (MMVAE+: the ``moe`` mixture, with private latents; needs ``private_dim``).
        latent_dim: size of the shared latent ``z``.
        private_dim: size of each modality's private latent ``w_m`` (one int for all, or per modality;
            0 = none, a shared latent only).
        private_prior_scale: scale ``s`` of the auxiliary prior ``r(w_n) = N(0, s^2 I)`` that cross-modal
            reconstruction and sampling draw the target's private latent from.
        private_sample_scale: default of the ``private_scale`` sampling knob: cross-modal generation draws
            the target's private latent from ``N(0, (c s)^2 I)`` with this ``c`` (1 = ``r`` itself; above 1
            trades coherence for varied samples; ``truncation`` does not scale it), so a recipe can set it.
        private_beta: weight of the private latents' KL terms relative to ``beta`` (above 1, ``w_m`` keeps less
            of ``x_m`` and the decoders take what the modalities share from ``z``).
        sample_truncation: default of the ``truncation`` sampling knob (the shared latent's noise scale at
            generation; 1 samples the posterior or prior), so a recipe can set it beside ``private_sample_scale``.
        private_dropout: the chance that a training row whose term encodes ``x_m`` decodes it with
            ``w_m ~ r`` instead of ``q(w_m|x_m)`` (and pays no private KL there, so each row stays a bound):
            the decoder then learns to draw from ``z`` all it can, as cross-modal generation needs.
        learn_private_prior_scale: learn ``s`` (one per modality) instead of keeping it fixed.
        private_warmup_steps: ``N``: the decoders read ``g * w_m`` with a gate ``g`` that is 0 for the first
            ``N / 2`` training steps and rises linearly to 1 at step ``N``, so the shared latent learns what
            the modalities share (the digit, the shape) before a private latent can carry it; a private
            latent that carries it is drawn from ``r`` at cross-modal generation and gets it wrong.
        cross_samples: draws ``K`` of ``w_n ~ r`` where a term reconstructs ``x_n`` without encoding it; the
            term scores ``log 1/K sum_k p(x_n | z, w_n^k)``, MMVAE+'s importance-weighted cross-reconstruction
            (a bound on ``log E_r p(x_n | z, w_n)`` that rewards samples which vary as ``x_n`` does, where
            ``K = 1``, the plain ELBO, penalises every variation ``w_n`` makes).
        cross_mean_weight: ``a`` in ``(1 - a) log 1/K sum_k p_k + a 1/K sum_k log p_k``, the cross-reconstruction
            score with ``K > 1`` (both are bounds on ``log E_r p``, so is their mix): the mean of logs costs
            every draw of ``w_n`` that changes what ``x_n`` shares with the other modalities (the digit), where
            the log-mean only costs the draws that all miss.
        width: base channel width of the conv encoders/decoders.
        text_width: width of the text encoder and GRU decoder.
        likelihood: ``laplace`` or ``gaussian`` for image, audio (log-mel) and video.
        learn_scale: learn one scale per continuous modality; else keep ``init_scale``.
        init_scale: initial (or fixed) scale of the continuous likelihoods.
        likelihood_weights: per-modality weights on the reconstruction terms (default 1 each).
        beta: weight of the KL term once warm-up ends.
        kl_warmup_steps: steps over which the KL weight rises linearly from 0 to ``beta``.
        iwae_samples: importance samples ``K`` of the validation IWAE bound.
        n_mels: mel bands of the audio frontend.
        lr: AdamW learning rate.
    """

    sampling_knobs: dict[str, Knob] = family_knobs("truncation", "temperature", "top_k", "griffin_lim_iterations",
                                                   "private_scale")

    def __init__(self, data_spec: dict[str, Any] | None = None, modalities: list[str] | None = None,
                 fusion: str = "mopoe", latent_dim: int = 32, private_dim: int | dict[str, int] = 0,
                 private_prior_scale: float = 1.0, learn_private_prior_scale: bool = False, cross_samples: int = 1,
                 cross_mean_weight: float = 0.0, private_sample_scale: float = 1.0, private_warmup_steps: int = 0,
                 sample_truncation: float = 1.0, private_beta: float = 1.0, private_dropout: float = 0.0,
                 width: int = 32, text_width: int = 128,
                 likelihood: str = "laplace", learn_scale: bool = True, init_scale: float = 0.1,
                 likelihood_weights: dict[str, float] | None = None, beta: float = 1.0,
                 kl_warmup_steps: int = 0, iwae_samples: int = 8, n_mels: int = 64, lr: float = 1e-3) -> None:
        super().__init__(data_spec)
        self.save_hyperparameters()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion: unknown {fusion!r}; allowed: {', '.join(FUSIONS)}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood: unknown {likelihood!r}; allowed: {', '.join(LIKELIHOODS)}")
        available = [m for m in self.spec("modalities") if m in VAE_MODALITIES]
        self.modalities = list(modalities) if modalities is not None else available
        for name in self.modalities:
            if name not in available:
                raise ValueError(f"modalities: {name!r} is not carried by the data; allowed: {', '.join(available)}")
        if not self.modalities:
            raise ValueError("modalities: give at least one modality")
        self.condition_modalities = self.output_modalities = tuple(self.modalities)
        weights = dict(likelihood_weights or {})
        for name in weights:
            if name not in self.modalities:
                raise ValueError(f"likelihood_weights: {name!r} is not one of the modalities {self.modalities}")
        self.weights = {m: float(weights.get(m, 1.0)) for m in self.modalities}
        self.private_dims = self._private_dims(private_dim)
        if fusion == "mmvae_plus" and not any(self.private_dims.values()):
            raise ValueError("private_dim: fusion 'mmvae_plus' needs a private latent (private_dim > 0)")
        if cross_samples < 1:
            raise ValueError(f"cross_samples must be >= 1, got {cross_samples}")
        if not 0 <= cross_mean_weight <= 1:
            raise ValueError(f"cross_mean_weight must be in [0, 1], got {cross_mean_weight}")
        if not private_beta > 0:
            raise ValueError(f"private_beta must be > 0, got {private_beta}")
        if not 0 <= private_dropout < 1:
            raise ValueError(f"private_dropout must be in [0, 1), got {private_dropout}")
        if private_warmup_steps < 0:
            raise ValueError(f"private_warmup_steps must be >= 0, got {private_warmup_steps}")
        if not private_prior_scale > 0:
            raise ValueError(f"private_prior_scale must be > 0, got {private_prior_scale}")
        for option, knob, value in (("private_sample_scale", "private_scale", private_sample_scale),
                                    ("sample_truncation", "truncation", sample_truncation)):
            problem = self.sampling_knobs[knob].problem(value)
            if problem:
                raise ValueError(f"{option} {problem}, got {value!r}")
        self.private = [m for m in self.modalities if self.private_dims[m] > 0]
        if not self.private:  # private_scale only moves private latents: a shared-latent model does not take it
            self.sampling_knobs = {k: v for k, v in type(self).sampling_knobs.items() if k != "private_scale"}
        if private_warmup_steps and self.private:  # in the checkpoint, so a run stopped mid-warm-up samples as it trained
            self.register_buffer("private_gate", torch.tensor(0.0))
        self.private_prior_log_scales = nn.ParameterDict({
            m: nn.Parameter(torch.tensor(math.log(private_prior_scale)), requires_grad=learn_private_prior_scale)
            for m in self.private})
        # a modality read through a front end (audio: its log-mel spectrogram) is encoded, scored and decoded
        # in the front end's terms, computed once per step (``with_log_mel``)
        frontends = [(m, get_modality(m).condition_frontend(self.data_spec, n_mels=n_mels)) for m in self.modalities]
        frontends = [(m, frontend) for m, frontend in frontends if frontend is not None]
        self.spectrogram_source, self.log_mel = frontends[0] if frontends else (None, None)
        self.encoders = nn.ModuleDict({m: self._build_encoder(m) for m in self.modalities})
        self.decoders = nn.ModuleDict({m: self._build_decoder(m) for m in self.modalities})
        continuous = [m for m in self.modalities if get_modality(m).floating]
        self.log_scales = nn.ParameterDict({m: nn.Parameter(torch.tensor(math.log(init_scale)),
                                                            requires_grad=learn_scale) for m in continuous})
        self.subsets = [s for r in range(1, len(self.modalities) + 1)
                        for s in itertools.combinations(self.modalities, r)]

    def _private_dims(self, private_dim: int | dict[str, int]) -> dict[str, int]:
        given = private_dim if isinstance(private_dim, dict) else {m: private_dim for m in self.modalities}
        for name, size in given.items():
            if name not in self.modalities:
                raise ValueError(f"private_dim: {name!r} is not one of the modalities {self.modalities}")
            if not isinstance(size, int) or size < 0:
                raise ValueError(f"private_dim: {name!r} must be an integer >= 0, got {size!r}")
        return {m: int(given.get(m, 0)) for m in self.modalities}

    @property
    def shared_fusion(self) -> str:
        """How the shared ``z`` is fused: MMVAE+ uses MMVAE's mixture."""
        return "moe" if self.hparams.fusion == "mmvae_plus" else self.hparams.fusion

    # --- networks -----------------------------------------------------------------------------
    def _build_encoder(self, name: str) -> nn.Module:
        """The modality's default encoder -> the means and log-variances of ``[z, w_name]``."""
        out = 2 * (self.hparams.latent_dim + self.private_dims[name])
        modality = get_modality(name)
        return modality_networks.encoder(modality, self.data_spec, out, self._width(modality, decoder=False),
                                         n_mels=self.hparams.n_mels)

    def _build_decoder(self, name: str) -> nn.Module:
        """The modality's default decoder from ``[z, w_name]`` (means; log-mel for audio; logits for label)."""
        latent = self.hparams.latent_dim + self.private_dims[name]
        modality = get_modality(name)
        return modality_networks.decoder(modality, self.data_spec, latent, self._width(modality, decoder=True),
                                         n_mels=self.hparams.n_mels)

    def _width(self, modality: Modality, decoder: bool) -> int:
        """Captions run at ``text_width`` (their encoder at half of it); frame sequences at half ``width``,
        since each 3-D convolution costs ``F`` times an image's; everything else at ``width``."""
        if isinstance(modality, TextModality):
            return self.hparams.text_width if decoder else self.hparams.text_width // 2
        return self.hparams.width // 2 if modality.frames else self.hparams.width

    # --- posteriors ---------------------------------------------------------------------------
    def with_log_mel(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``batch`` plus its log-mel spectrogram under ``log_mel``, computed once per step for the audio
        encoder and the audio likelihood's target (the STFT is a sizeable part of a small CPU step)."""
        source = self.spectrogram_source
        if source is None or source not in batch or "log_mel" in batch:
            return batch
        return {**batch, "log_mel": self.log_mel(batch[source])}

    def prepare(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """What every step computes once: the log-mel, and the text cut to the batch's longest caption.

        The text encoder masks padding and the caption likelihood skips it, so the padding columns no
        caption of the batch reaches change nothing but the cost (short captions in a long context
        would otherwise make the GRU decoder most of the step).
        """
        batch = self.with_log_mel(batch)
        for name in self.modalities:
            mask_key = getattr(get_modality(name), "mask_key", None)
            if mask_key is None or mask_key not in batch:
                continue
            used = batch[mask_key].any(0).nonzero()
            length = max(2, int(used[-1]) + 1) if len(used) else 2  # BOS and EOS at least
            if length < batch[name].shape[1]:
                batch = {**batch, name: batch[name][:, :length], mask_key: batch[mask_key][:, :length]}
        return batch

    def encode(self, batch: dict[str, Tensor], names: list[str]) -> dict[str, Gaussian]:
        """Unimodal Gaussian posteriors ``q(z|x_m)`` of the shared latent for every ``m`` in ``names``."""
        return self.encode_with_private(batch, names)[0]

    def encode_with_private(self, batch: dict[str, Tensor],
                            names: list[str]) -> tuple[dict[str, Gaussian], dict[str, Gaussian]]:
        """``q(z|x_m)`` for every ``m`` in ``names``, and ``q(w_m|x_m)`` for those with a private latent."""
        batch = self.with_log_mel(batch)
        experts, privates = {}, {}
        latent = self.hparams.latent_dim
        for name in names:
            inputs = ([batch["log_mel"]] if name == self.spectrogram_source
                      else get_modality(name).encoder_inputs(batch))  # captions come with their mask
            hidden = self.encoders[name](*inputs)
            mu, logvar = hidden.float().chunk(2, dim=-1)
            logvar = logvar.clamp(-12.0, 8.0)
            experts[name] = (mu[:, :latent], logvar[:, :latent])
            if self.private_dims[name]:
                privates[name] = (mu[:, latent:], logvar[:, latent:])
        return experts, privates

    def subset_posterior(self, experts: dict[str, Gaussian], subset: tuple[str, ...]) -> Gaussian:
        """``q(z|x_s)``: the expert itself for MoE, else the product with the prior expert."""
        if self.shared_fusion == "moe" and len(subset) == 1:
            return experts[subset[0]]
        mus = torch.stack([experts[m][0] for m in subset])
        logvars = torch.stack([experts[m][1] for m in subset])
        return product_of_experts(mus, logvars)

    def joint_components(self, experts: dict[str, Gaussian], names: list[str]) -> Gaussian:
        """Components ``S,B,D`` of the joint posterior of ``names`` (one component for PoE)."""
        if self.shared_fusion == "poe":
            subsets = [tuple(names)]
        elif self.shared_fusion == "moe":
            subsets = [(m,) for m in names]
        else:
            subsets = [s for r in range(1, len(names) + 1) for s in itertools.combinations(names, r)]
        parts = [self.subset_posterior(experts, s) for s in subsets]
        return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])

    # --- private latents ----------------------------------------------------------------------
    def private_prior_sample(self, name: str, shape: tuple[int, ...], device: torch.device,
                             scale: float = 1.0) -> Tensor:
        """``w ~ r(w_name) = N(0, s^2 I)``: ``*shape,private_dim``, the noise scaled by ``scale`` as well."""
        noise = torch.randn(*shape, self.private_dims[name], device=device)
        return scale * torch.exp(self.private_prior_log_scales[name]) * noise

    def private_code(self, z: Tensor, w: Tensor) -> Tensor:
        """The decoder's input ``[z, g * w]`` (``g``: the private warm-up gate, 1 without warm-up)."""
        gate = getattr(self, "private_gate", None)
        return torch.cat([z, w if gate is None else gate * w], dim=-1)

    def decoder_code(self, name: str, z: Tensor, privates: dict[str, Gaussian], encoded: Tensor | None,
                     scale: float = 1.0, prior_scale: float | None = None) -> Tensor:
        """The decoder's input ``[z, w_name]``: ``...,latent_dim + private_dim`` (``z`` itself without one);
        ``z`` may carry leading sample dims ``K,B,D`` (one posterior draw of ``w`` serves them all).

        ``w_name`` comes from the posterior ``q(w_name|x_name)`` in the rows where ``encoded`` (``...``,
        bool or 0/1) is set, from the auxiliary prior ``r`` elsewhere (everywhere when ``encoded`` is None).
        ``scale`` multiplies the posterior's noise, ``prior_scale`` (default ``scale``) the prior draws'.
        """
        if not self.private_dims[name]:
            return z
        prior_scale = scale if prior_scale is None else prior_scale
        w = self.private_prior_sample(name, tuple(z.shape[:-1]), z.device, prior_scale)
        if encoded is not None and name in privates:
            mu, logvar = privates[name]
            w = torch.where(encoded.bool().unsqueeze(-1), reparameterize(mu, logvar, scale), w)
        return self.private_code(z, w)

    # --- likelihoods --------------------------------------------------------------------------
    def decode(self, name: str, z: Tensor) -> Tensor:
        """Decoder output from ``z: B,latent_dim (+ private_dim)``: the mean for continuous modalities,
        logits for label."""
        return self.decoders[name](z)

    def reconstruction_log_prob(self, name: str, batch: dict[str, Tensor], z: Tensor) -> Tensor:
        """``log p(x_name | z)`` per row of the decoder code ``z`` (``[z, w_name]`` with a private latent;
        rows may repeat the batch several times)."""
        repeat = z.shape[0] // batch[name].shape[0]
        modality, decoder = get_modality(name), self.decoders[name]
        keys = ["log_mel"] if name == self.spectrogram_source else modality.keys()
        batch = self.with_log_mel(batch)
        targets = [batch[key].repeat(repeat, *([1] * (batch[key].ndim - 1))) for key in keys]
        if modality.floating:  # pixels, or the log-mel: Laplace or Gaussian around the decoded mean
            return continuous_log_likelihood(targets[0], decoder(z).float(), self.log_scales[name],
                                             self.hparams.likelihood)
        if hasattr(decoder, "log_likelihood"):  # a caption: the teacher-forced token log-likelihood
            return decoder.log_likelihood(z, *targets)
        return -F.cross_entropy(decoder(z).float(), targets[0], reduction="none")  # a class

    def cross_log_prob(self, name: str, batch: dict[str, Tensor], z: Tensor, encoded: Tensor,
                       privates: dict[str, Gaussian]) -> Tensor:
        """``log p(x_name | z, w_name)`` per row of ``z: N,D`` (the batch's rows repeated, ``N = U*B``), with
        ``w_name ~ q(w_name|x_name)`` where ``encoded: N`` (bool) is set; elsewhere MMVAE+'s importance-weighted
        cross-reconstruction over ``K = cross_samples`` draws ``w_name ~ r``:
        ``(1 - a) log 1/K sum_k p(x_name | z, w^k) + a 1/K sum_k log p(x_name | z, w^k)``, ``a = cross_mean_weight``.

        Only the cross rows are decoded ``K`` times: an encoded row has one posterior draw, for which both
        estimators are ``log p`` itself.
        """
        rows = torch.arange(len(z), device=z.device) % batch[name].shape[0]  # each row's item of the batch
        log_p = z.new_empty(len(z))
        inside, cross = encoded.nonzero().squeeze(1), (~encoded).nonzero().squeeze(1)
        if len(inside):
            mu, logvar = (t[rows[inside]] for t in privates[name])
            code = self.private_code(z[inside], reparameterize(mu, logvar))
            log_p[inside] = self.reconstruction_log_prob(name, _rows(batch, rows[inside]), code)
        if len(cross):
            draws = self.hparams.cross_samples
            shared = z[cross].expand(draws, *z[cross].shape)
            code = self.private_code(shared, self.private_prior_sample(name, tuple(shared.shape[:-1]), z.device))
            scores = self.reconstruction_log_prob(name, _rows(batch, rows[cross]), code.flatten(0, 1)).view(draws, -1)
            mean_weight = self.hparams.cross_mean_weight
            log_p[cross] = (1 - mean_weight) * log_mean_exp(scores, 0) + mean_weight * scores.mean(0)
        return log_p

    # --- objective ----------------------------------------------------------------------------
    def term_posteriors(self, experts: dict[str, Gaussian]) -> list[tuple[Gaussian, tuple[str, ...], Tensor]]:
        """(posterior of ``z``, reconstructed modalities, ``encoded: M,B``) of each ELBO term of the chosen
        method; ``encoded[m, b]`` is 1 where the term's posterior for row ``b`` encodes modality ``m``."""
        everything = tuple(self.modalities)
        mu = next(iter(experts.values()))[0]
        batch_size, device = mu.shape[0], mu.device
        count = len(self.modalities)
        every = torch.ones(count, batch_size, device=device)
        only = [torch.eye(count, device=device)[i].unsqueeze(1).expand(count, batch_size) for i in range(count)]
        if self.shared_fusion == "poe":
            singles = [(self.subset_posterior(experts, (m,)), (m,), only[i]) for i, m in enumerate(self.modalities)]
            return [(self.subset_posterior(experts, everything), everything, every)] + (singles if count > 1 else [])
        if self.shared_fusion == "moe":
            return [(experts[m], everything, only[i]) for i, m in enumerate(self.modalities)]
        # MoPoE samples the mixture by giving each row one subset, the subsets spread evenly over the
        # batch (stratified, as in Sutter et al.'s code): one decoder pass per modality, not one per subset
        choice = torch.randperm(batch_size, device=device) % len(self.subsets)
        membership = torch.tensor([[m in s for s in self.subsets] for m in self.modalities], device=device)
        mask = membership[:, choice].float()  # M,B: 1 where the row's subset holds the modality
        mus = torch.stack([experts[m][0] for m in self.modalities])
        logvars = torch.stack([experts[m][1] for m in self.modalities])
        return [(product_of_experts(mus, logvars, mask), everything, mask)]

    def elbo_terms(self, batch: dict[str, Tensor], kl_scale: float, weighted: bool = True) -> dict[str, Tensor]:
        """Per-term reconstruction and KL, batched: every term's ``z`` goes through each decoder once."""
        batch = self.prepare(batch)
        experts, privates = self.encode_with_private(batch, self.modalities)
        terms = self.term_posteriors(experts)
        readers = [self._private_readers(encoded) for _, _, encoded in terms]  # M,B: rows decoding q(w_m|x_m)
        zs = [reparameterize(mu, logvar) for (mu, logvar), _, _ in terms]
        batch_size = zs[0].shape[0]
        reconstruction = torch.zeros(len(terms), batch_size, device=zs[0].device)
        per_modality = {}
        for index, name in enumerate(self.modalities):
            users = [i for i, (_, targets, _) in enumerate(terms) if name in targets]
            # a term that does not encode x_name reconstructs it with w_name ~ r (MMVAE+'s cross terms)
            if name in privates and self.hparams.cross_samples > 1 and self._private_open():
                z = torch.cat([zs[i] for i in users])  # U*B,D
                encoded = torch.cat([readers[i][index] for i in users]).bool()
                log_p = self.cross_log_prob(name, batch, z, encoded, privates).view(len(users), batch_size)
            else:
                codes = torch.cat([self.decoder_code(name, zs[i], privates, readers[i][index]) for i in users])
                log_p = self.reconstruction_log_prob(name, batch, codes).view(len(users), batch_size)
            weight = self.weights[name] if weighted else 1.0
            reconstruction[users] += weight * log_p
            per_modality[name] = log_p.mean()
        if self.shared_fusion == "moe":
            mus = torch.stack([mu for (mu, _), _, _ in terms])
            logvars = torch.stack([logvar for (_, logvar), _, _ in terms])
            log_prior = [gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)) for z in zs]
            kl = torch.stack([mixture_log_density(z, mus, logvars) - prior for z, prior in zip(zs, log_prior)])
        else:
            kl = torch.stack([kl_standard_normal(mu, logvar) for (mu, logvar), _, _ in terms])
        if self.private:
            private_kl = torch.stack([kl_standard_normal(*privates[m]) for m in self.private])  # P,B
            private_kl = self.hparams.private_beta * private_kl
            rows = [self.modalities.index(m) for m in self.private]
            kl = kl + torch.stack([(reader[rows] * private_kl).sum(0) for reader in readers])
        elbo = reconstruction - kl_scale * kl  # terms,B
        # MVAE sums its sub-sampled ELBOs; MMVAE averages over its (stratified) components
        objective = elbo.sum(0) if self.hparams.fusion == "poe" else elbo.mean(0)
        return {"loss": -objective.mean(), "kl": kl.mean(), "reconstruction": per_modality}

    def _private_readers(self, encoded: Tensor) -> Tensor:
        """``M,B``: the rows of a term (``encoded``, ``M,B``) that decode ``x_m`` with ``w_m ~ q(w_m|x_m)``:
        those that encode ``x_m``, less a ``private_dropout`` share of them while training."""
        dropout = self.hparams.get("private_dropout", 0.0)
        if not (dropout and self.training and self.private):
            return encoded
        return encoded * (torch.rand(encoded.shape, device=encoded.device) >= dropout)

    def _private_open(self) -> bool:
        """Whether the decoders read the private latents at all (a closed gate makes K draws of ``w`` alike)."""
        gate = getattr(self, "private_gate", None)
        return gate is None or bool(gate > 0)

    def open_private_gate(self, step: int) -> None:
        """Set the private warm-up gate for training step ``step`` (closed until ``N / 2``, open from ``N``)."""
        if hasattr(self, "private_gate"):
            self.private_gate.fill_(min(1.0, max(0.0, 2 * step / self.hparams.private_warmup_steps - 1)))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self.open_private_gate(self.global_step)
        beta = kl_weight(self.global_step, self.hparams.beta, self.hparams.kl_warmup_steps)
        out = self.elbo_terms(batch, beta)
        if self._logging_step():
            self.log("train/loss", out["loss"], prog_bar=True)
            metrics = {"kl": out["kl"], "beta": beta}
            metrics.update({f"nll_{name}": -log_p for name, log_p in out["reconstruction"].items()})
            self.log_dict({f"train/{name}": value for name, value in metrics.items()})
        return out["loss"]


    def log_importance_weights(self, batch: dict[str, Tensor], num_samples: int) -> Tensor:
        """``log p(X, z_k) - log q(z_k | X)`` for ``K`` samples of the joint posterior: ``K,B`` (with private
        latents, ``z_k`` stands for ``(z, w_1 .. w_M)``).

        ``mean_k`` of these is the ELBO of the joint posterior; ``logsumexp_k - log K`` is the
        IWAE bound (Burda et al. 2016), which never decreases with ``K``. Likelihoods are unweighted.
        """
        batch = self.prepare(batch)
        experts, privates = self.encode_with_private(batch, self.modalities)
        mus, logvars = self.joint_components(experts, self.modalities)  # S,B,D
        components, batch_size, _ = mus.shape
        choice = torch.randint(components, (num_samples, batch_size), device=mus.device)
        rows = torch.arange(batch_size, device=mus.device)
        z = reparameterize(mus[choice, rows], logvars[choice, rows])  # K,B,D
        log_q = mixture_log_density(z, mus, logvars)
        log_prior = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
        log_p = 0
        for name in self.modalities:
            code = z
            if name in privates:  # the joint posterior is q(z|X) prod_m q(w_m|x_m), the prior p(z) prod_m p(w_m)
                mu, logvar = (t.expand(num_samples, *t.shape) for t in privates[name])
                w = reparameterize(mu, logvar)  # K,B,P
                log_q = log_q + gaussian_log_density(w, mu, logvar)
                log_prior = log_prior + gaussian_log_density(w, torch.zeros_like(w), torch.zeros_like(w))
                code = self.private_code(z, w)
            log_p = log_p + self.reconstruction_log_prob(name, batch, code.flatten(0, 1)).view(num_samples, batch_size)
        return log_p + log_prior - log_q

    likelihood_options = ("iwae_samples",)

    @torch.no_grad()
    def log_likelihood(self, batch: dict[str, Tensor], iwae_samples: int | None = None) -> Likelihood:
        """The IWAE lower bound ``logsumexp_k log w_k - log K`` on ``log p(X)`` of every modality the
        model encodes (audio scored as its log-mel spectrogram); ``K`` defaults to ``iwae_samples``."""
        samples = iwae_samples or self.hparams.iwae_samples
        log_w = self.log_importance_weights(batch, samples).double()
        bound = torch.logsumexp(log_w, 0) - math.log(samples)
        audio_dims = self.log_mel.n_mels * self.log_mel.frames if self.log_mel is not None else None
        return Likelihood(f"iwae_{samples}", bound, scored_dimensions(batch, self.modalities, audio_dims))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self.elbo_terms(batch, kl_scale=self.hparams.beta)
        log_w = self.log_importance_weights(batch, self.hparams.iwae_samples)
        iwae = torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
        self.log("val/loss", out["loss"], prog_bar=True, sync_dist=True)
        self.log("val/elbo", log_w.mean(), sync_dist=True)
        self.log(f"val/iwae_{self.hparams.iwae_samples}", iwae.mean(), sync_dist=True)
        for name, log_p in out["reconstruction"].items():
            self.log(f"val/nll_{name}", -log_p, sync_dist=True)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        log_w = self.log_importance_weights(batch, self.hparams.iwae_samples)
        self.log("test/elbo", log_w.mean(), sync_dist=True)
        self.log(f"test/iwae_{self.hparams.iwae_samples}", (torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])).mean(),
                 sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)

    # --- sampling -----------------------------------------------------------------------------
    def sample(self, conditions: dict[str, Tensor], num_samples: int, targets: list[str], truncation: float | None = None,
               temperature: float = 0.0, top_k: int | None = None, griffin_lim_iterations: int = 32,
               private_scale: float | None = None) -> dict[str, Tensor]:
        """Encode and fuse the conditions (or draw from the prior), then decode each target.

        A target's private latent comes from its posterior when the target is also a condition, else
        from the auxiliary prior ``r`` (cross-modal), or from ``p(w) = N(0, I)`` when nothing is given.

        Args:
            truncation: scale of the shared latent's noise and of the private posteriors' and ``p(w)``'s
                draws (0 decodes the posterior or prior mean, 1 samples it); default: the ``sample_truncation``
                hparam.
            temperature: text token temperature (0 = greedy); top_k limits text sampling.
            private_scale: ``c`` of the cross-modal private draws ``w ~ N(0, (c s)^2 I)``, apart from
                ``truncation``, so the shared latent's noise can be cut while ``w`` still varies the samples
                (0 decodes ``r``'s mean); default: the ``private_sample_scale`` hparam.
        """
        truncation = self.hparams.get("sample_truncation", 1.0) if truncation is None else truncation
        private_scale = self.hparams.get("private_sample_scale", 1.0) if private_scale is None else private_scale
        sources = [m for m in self.modalities if m in conditions]
        privates = {}
        if sources:
            experts, privates = self.encode_with_private(conditions, sources)
            mus, logvars = self.joint_components(experts, sources)
            choice = torch.randint(mus.shape[0], (num_samples,), device=mus.device)
            rows = torch.arange(num_samples, device=mus.device)
            z = reparameterize(mus[choice, rows], logvars[choice, rows], truncation)
        else:
            z = truncation * torch.randn(num_samples, self.hparams.latent_dim, device=self.device)
        out = {}
        for name in targets:
            if not sources and self.private_dims[name]:
                code = self.private_code(z, truncation * torch.randn(num_samples, self.private_dims[name], device=z.device))
            else:
                encoded = torch.full((num_samples,), name in privates, device=z.device)
                code = self.decoder_code(name, z, privates, encoded, truncation, private_scale)
            modality, decoder = get_modality(name), self.decoders[name]
            if name == self.spectrogram_source:  # decoded as a log-mel, back to a waveform by Griffin-Lim
                out[name] = self.log_mel.invert(decoder(code), griffin_lim_iterations)
            elif modality.floating:
                out[name] = decoder(code).float().clamp(-1, 1)
            elif hasattr(decoder, "sample"):  # a caption, token by token
                tokenizer = self.tokenizer
                out[name] = decoder.sample(code, self.spec("max_text_length"), tokenizer.bos_id, tokenizer.eos_id,
                                           tokenizer.pad_id, temperature, top_k)
                out[modality.mask_key] = out[name] != tokenizer.pad_id
            else:  # a class: the most likely one
                out[name] = decoder(code).argmax(-1)
        return out


def _rows(batch: dict[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
    """The batch restricted to ``rows`` (every key)."""
    return {key: value[rows] for key, value in batch.items()}
