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

from mmgen_lightning.losses import (LIKELIHOODS, continuous_log_likelihood, gaussian_log_density, kl_standard_normal,
                                    kl_weight, mixture_log_density, product_of_experts, reparameterize)
from mmgen_lightning.models.base import GenerativeModule
from mmgen_lightning.models.layers.audio import AudioEncoder, LogMel, MelDecoder
from mmgen_lightning.models.layers.image import ImageDecoder, ImageEncoder
from mmgen_lightning.models.layers.text import GRUTextDecoder, TextEncoder
from mmgen_lightning.models.layers.video import VideoDecoder, VideoEncoder

FUSIONS = ("poe", "moe", "mopoe")
VAE_MODALITIES = ("image", "text", "audio", "video", "label")
Gaussian = tuple[Tensor, Tensor]


class MultimodalVAE(GenerativeModule):
    """Args:
        data_spec: sizes from the datamodule (linked by the CLI).
        modalities: modalities the model encodes and decodes; default: all the data carries.
        fusion: joint posterior, one of ``poe`` (MVAE), ``moe`` (MMVAE), ``mopoe`` (MoPoE).
        latent_dim: size of the shared latent ``z``.
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

    def __init__(self, data_spec: dict[str, Any] | None = None, modalities: list[str] | None = None,
                 fusion: str = "mopoe", latent_dim: int = 32, width: int = 32, text_width: int = 128,
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
        self.encoders = nn.ModuleDict({m: self._build_encoder(m) for m in self.modalities})
        self.decoders = nn.ModuleDict({m: self._build_decoder(m) for m in self.modalities})
        continuous = [m for m in self.modalities if m in ("image", "audio", "video")]
        self.log_scales = nn.ParameterDict({m: nn.Parameter(torch.tensor(math.log(init_scale)),
                                                            requires_grad=learn_scale) for m in continuous})
        self.subsets = [s for r in range(1, len(self.modalities) + 1)
                        for s in itertools.combinations(self.modalities, r)]

    # --- networks -----------------------------------------------------------------------------
    def _build_encoder(self, name: str) -> nn.Module:
        out, width = 2 * self.hparams.latent_dim, self.hparams.width
        if name == "image":
            return ImageEncoder(self.spec("image_channels"), self.spec("image_size"), out, width)
        if name == "text":
            return TextEncoder(self.spec("vocab_size"), self.spec("max_text_length"), out, self.hparams.text_width // 2)
        if name == "audio":
            self.log_mel = LogMel(self.spec("sample_rate"), self.spec("audio_length"), self.hparams.n_mels)
            return AudioEncoder(self.hparams.n_mels, out, width)
        if name == "video":
            return VideoEncoder(self.spec("image_channels"), self.spec("num_frames"), self._video_size(), out, width // 2)
        return nn.Embedding(self.spec("num_classes"), out)

    def _build_decoder(self, name: str) -> nn.Module:
        latent, width = self.hparams.latent_dim, self.hparams.width
        if name == "image":
            return ImageDecoder(latent, self.spec("image_channels"), self.spec("image_size"), width)
        if name == "text":
            return GRUTextDecoder(self.spec("vocab_size"), latent, self.hparams.text_width)
        if name == "audio":
            return MelDecoder(latent, self.hparams.n_mels, self.log_mel.frames, width)
        if name == "video":
            return VideoDecoder(latent, self.spec("image_channels"), self.spec("num_frames"), self._video_size(), width // 2)
        return nn.Sequential(nn.Linear(latent, 64), nn.SiLU(), nn.Linear(64, self.spec("num_classes")))

    def _video_size(self) -> int:
        return self.data_spec.get("video_size", self.spec("image_size"))

    # --- posteriors ---------------------------------------------------------------------------
    def with_log_mel(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``batch`` plus its log-mel spectrogram under ``log_mel``, computed once per step for the audio
        encoder and the audio likelihood's target (the STFT is a tenth of a digits step on the CPU)."""
        if "audio" not in self.modalities or "audio" not in batch or "log_mel" in batch:
            return batch
        return {**batch, "log_mel": self.log_mel(batch["audio"])}

    def prepare(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """What every step computes once: the log-mel, and the text cut to the batch's longest caption.

        The text encoder masks padding and the caption likelihood skips it, so the padding columns no
        caption of the batch reaches change nothing but the cost: digits captions fill 8 of the 24
        positions, and the GRU decoder was most of an image + text step.
        """
        batch = self.with_log_mel(batch)
        if "text" in self.modalities and "text_mask" in batch:
            used = batch["text_mask"].any(0).nonzero()
            length = max(2, int(used[-1]) + 1) if len(used) else 2  # BOS and EOS at least
            if length < batch["text"].shape[1]:
                batch = {**batch, "text": batch["text"][:, :length], "text_mask": batch["text_mask"][:, :length]}
        return batch

    def encode(self, batch: dict[str, Tensor], names: list[str]) -> dict[str, Gaussian]:
        """Unimodal Gaussian posteriors ``q(z|x_m)`` for every ``m`` in ``names``."""
        batch = self.with_log_mel(batch)
        experts = {}
        for name in names:
            if name == "text":
                hidden = self.encoders["text"](batch["text"], batch["text_mask"])
            elif name == "audio":
                hidden = self.encoders["audio"](batch["log_mel"])
            else:
                hidden = self.encoders[name](batch[name])
            mu, logvar = hidden.float().chunk(2, dim=-1)
            experts[name] = (mu, logvar.clamp(-12.0, 8.0))
        return experts

    def subset_posterior(self, experts: dict[str, Gaussian], subset: tuple[str, ...]) -> Gaussian:
        """``q(z|x_s)``: the expert itself for MoE, else the product with the prior expert."""
        if self.hparams.fusion == "moe" and len(subset) == 1:
            return experts[subset[0]]
        mus = torch.stack([experts[m][0] for m in subset])
        logvars = torch.stack([experts[m][1] for m in subset])
        return product_of_experts(mus, logvars)

    def joint_components(self, experts: dict[str, Gaussian], names: list[str]) -> Gaussian:
        """Components ``S,B,D`` of the joint posterior of ``names`` (one component for PoE)."""
        if self.hparams.fusion == "poe":
            subsets = [tuple(names)]
        elif self.hparams.fusion == "moe":
            subsets = [(m,) for m in names]
        else:
            subsets = [s for r in range(1, len(names) + 1) for s in itertools.combinations(names, r)]
        parts = [self.subset_posterior(experts, s) for s in subsets]
        return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])

    # --- likelihoods --------------------------------------------------------------------------
    def decode(self, name: str, z: Tensor) -> Tensor:
        """Decoder output: the mean for continuous modalities, logits for label."""
        return self.decoders[name](z)

    def log_likelihood(self, name: str, batch: dict[str, Tensor], z: Tensor) -> Tensor:
        """``log p(x_name | z)`` per row of ``z`` (rows may repeat the batch several times)."""
        repeat = z.shape[0] // batch[name].shape[0]
        if name == "text":
            text, mask = batch["text"].repeat(repeat, 1), batch["text_mask"].repeat(repeat, 1)
            return self.decoders["text"].log_likelihood(z, text, mask)
        if name == "label":
            return -F.cross_entropy(self.decode("label", z).float(), batch["label"].repeat(repeat), reduction="none")
        target = self.with_log_mel(batch)["log_mel"] if name == "audio" else batch[name]
        target = target.repeat(repeat, *([1] * (target.ndim - 1)))
        return continuous_log_likelihood(target, self.decode(name, z).float(), self.log_scales[name],
                                         self.hparams.likelihood)

    # --- objective ----------------------------------------------------------------------------
    def term_posteriors(self, experts: dict[str, Gaussian]) -> list[tuple[Gaussian, tuple[str, ...]]]:
        """(posterior, reconstructed modalities) of each ELBO term of the chosen method."""
        everything = tuple(self.modalities)
        if self.hparams.fusion == "poe":
            singles = [(self.subset_posterior(experts, (m,)), (m,)) for m in self.modalities]
            return [(self.subset_posterior(experts, everything), everything)] + (singles if len(singles) > 1 else [])
        if self.hparams.fusion == "moe":
            return [(experts[m], everything) for m in self.modalities]
        # MoPoE samples the mixture by giving each row one subset, the subsets spread evenly over the
        # batch (stratified, as in Sutter et al.'s code): one decoder pass per modality, not one per subset
        batch_size = next(iter(experts.values()))[0].shape[0]
        device = next(iter(experts.values()))[0].device
        choice = torch.randperm(batch_size, device=device) % len(self.subsets)
        membership = torch.tensor([[m in s for s in self.subsets] for m in self.modalities], device=device)
        mask = membership[:, choice].float()  # M,B: 1 where the row's subset holds the modality
        mus = torch.stack([experts[m][0] for m in self.modalities])
        logvars = torch.stack([experts[m][1] for m in self.modalities])
        return [(product_of_experts(mus, logvars, mask), everything)]

    def elbo_terms(self, batch: dict[str, Tensor], kl_scale: float, weighted: bool = True) -> dict[str, Tensor]:
        """Per-term reconstruction and KL, batched: every term's ``z`` goes through each decoder once."""
        batch = self.prepare(batch)
        terms = self.term_posteriors(self.encode(batch, self.modalities))
        zs = [reparameterize(mu, logvar) for (mu, logvar), _ in terms]
        batch_size = zs[0].shape[0]
        reconstruction = torch.zeros(len(terms), batch_size, device=zs[0].device)
        per_modality = {}
        for name in self.modalities:
            users = [i for i, (_, targets) in enumerate(terms) if name in targets]
            log_p = self.log_likelihood(name, batch, torch.cat([zs[i] for i in users])).view(len(users), batch_size)
            weight = self.weights[name] if weighted else 1.0
            reconstruction[users] += weight * log_p
            per_modality[name] = log_p.mean()
        if self.hparams.fusion == "moe":
            mus = torch.stack([mu for (mu, _), _ in terms])
            logvars = torch.stack([logvar for (_, logvar), _ in terms])
            log_prior = [gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)) for z in zs]
            kl = torch.stack([mixture_log_density(z, mus, logvars) - prior for z, prior in zip(zs, log_prior)])
        else:
            kl = torch.stack([kl_standard_normal(mu, logvar) for (mu, logvar), _ in terms])
        elbo = reconstruction - kl_scale * kl  # terms,B
        # MVAE sums its sub-sampled ELBOs; MMVAE averages over its (stratified) components
        objective = elbo.sum(0) if self.hparams.fusion == "poe" else elbo.mean(0)
        return {"loss": -objective.mean(), "kl": kl.mean(), "reconstruction": per_modality}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        beta = kl_weight(self.global_step, self.hparams.beta, self.hparams.kl_warmup_steps)
        out = self.elbo_terms(batch, beta)
        if self._logging_step():
            self.log("train/loss", out["loss"], prog_bar=True)
            metrics = {"kl": out["kl"], "beta": beta}
            metrics.update({f"nll_{name}": -log_p for name, log_p in out["reconstruction"].items()})
            self.log_dict({f"train/{name}": value for name, value in metrics.items()})
        return out["loss"]


    def log_importance_weights(self, batch: dict[str, Tensor], num_samples: int) -> Tensor:
        """``log p(X, z_k) - log q(z_k | X)`` for ``K`` samples of the joint posterior: ``K,B``.

        ``mean_k`` of these is the ELBO of the joint posterior; ``logsumexp_k - log K`` is the
        IWAE bound (Burda et al. 2016), which never decreases with ``K``. Likelihoods are unweighted.
        """
        batch = self.prepare(batch)
        experts = self.encode(batch, self.modalities)
        mus, logvars = self.joint_components(experts, self.modalities)  # S,B,D
        components, batch_size, _ = mus.shape
        choice = torch.randint(components, (num_samples, batch_size), device=mus.device)
        rows = torch.arange(batch_size, device=mus.device)
        z = reparameterize(mus[choice, rows], logvars[choice, rows])  # K,B,D
        log_q = mixture_log_density(z, mus, logvars)
        log_prior = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
        flat = z.flatten(0, 1)
        log_p = sum(self.log_likelihood(name, batch, flat) for name in self.modalities).view(num_samples, batch_size)
        return log_p + log_prior - log_q

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
    def sample(self, conditions: dict[str, Tensor], num_samples: int, targets: list[str], truncation: float = 1.0,
               temperature: float = 0.0, top_k: int | None = None, griffin_lim_iterations: int = 32) -> dict[str, Tensor]:
        """Encode and fuse the conditions (or draw from the prior), then decode each target.

        Args:
            truncation: scale of the latent noise (0 decodes the posterior mean, 1 samples it).
            temperature: text token temperature (0 = greedy); top_k limits text sampling.
        """
        sources = [m for m in self.modalities if m in conditions]
        if sources:
            mus, logvars = self.joint_components(self.encode(conditions, sources), sources)
            choice = torch.randint(mus.shape[0], (num_samples,), device=mus.device)
            rows = torch.arange(num_samples, device=mus.device)
            z = reparameterize(mus[choice, rows], logvars[choice, rows], truncation)
        else:
            z = truncation * torch.randn(num_samples, self.hparams.latent_dim, device=self.device)
        out = {}
        for name in targets:
            if name == "text":
                tokenizer = self.tokenizer
                out["text"] = self.decoders["text"].sample(z, self.spec("max_text_length"), tokenizer.bos_id,
                                                           tokenizer.eos_id, tokenizer.pad_id, temperature, top_k)
                out["text_mask"] = out["text"] != tokenizer.pad_id
            elif name == "label":
                out["label"] = self.decode("label", z).argmax(-1)
            elif name == "audio":
                out["audio"] = self.log_mel.invert(self.decode("audio", z), griffin_lim_iterations)
            else:
                out[name] = self.decode(name, z).float().clamp(-1, 1)
        return out
