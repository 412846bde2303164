"""ConditionalGAN: a generator ``G(z, y)`` and a projection discriminator ``D(x, y)`` trained against
each other, for label/text/audio -> image and text -> video.

What each player minimises is ``objectives/gan.py`` (the adversarial loss, R1/GP, mismatched pairs,
the contrastive and frozen-aligner terms); this module builds the players and runs the game with
Lightning's manual optimization written plainly (as Lightning's GAN example): one block per player,
each with its own Adam (TTUR learning rates, Heusel et al. 2017, from one ``optimization`` group),
``toggle_optimizer`` so a player's backward reaches only its own weights. Per micro-batch:

1. discriminator: ``L_D`` on real data and detached fakes;
2. generator, after every ``n_critic`` discriminator steps: ``L_G`` against the discriminator just updated.

Gradient accumulation (``objective.accumulate_grad_batches = k``) makes ``k`` micro-batches one step of
a ``k``-times larger batch: the discriminator accumulates over the ``k`` micro-batches, steps, and only
then does the generator go over the same ``k`` micro-batches' conditions against the updated
discriminator. Under DDP each backward runs inside ``block_backward_sync`` and the gradients of the
stepping player are averaged once, in one flat all-reduce, just before its step (as StyleGAN3's
training loop does): DDP's own reducer expects every parameter in every backward, and in a GAN each
backward reaches one player, so this is what lets the game run without ``find_unused_parameters``,
and it syncs once per optimizer step rather than per micro-batch.

The averaged generator that sampling uses comes from the recipe's EMA callback (``callbacks/ema.py``,
Lightning's weight averaging, with the ``min(decay, (1 + n) / (10 + n))`` warm-up): it updates once per
training batch in which a player stepped (``trainer.global_step`` counts both players' steps), i.e. once
per generator step when ``n_critic = 1`` (with ``n_critic > 1`` also after the discriminator-only
batches, which average the unchanged generator in again), swaps the average in for validation and
writes it into the checkpoint's ``state_dict``, which :meth:`generate` samples.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn

from mmgen_lightning.config import ConfigGroup, build_groups
from mmgen_lightning.knobs import Knob, family_knobs
from mmgen_lightning.losses import discriminator_loss, generator_loss
from mmgen_lightning.modalities import get_modality
from mmgen_lightning.models.base import GenerativeModule, LegacyLayout, load_generator
from mmgen_lightning.models.layers import modality_networks
from mmgen_lightning.models.layers.conditioning import FeatureEmbedder, PretrainedTextEncoder
from mmgen_lightning.models.layers.gan_blocks import (ClipAndFramesTrunk, ImageGenerator, ProjectionDiscriminator,
                                                      VideoGenerator, WarpVideoGenerator, image_trunk, video_trunk)
from mmgen_lightning.models.optim import Optimization, configure_optimization
from mmgen_lightning.objectives.gan import GANObjective, aligner_loss, discriminator_objective, generator_objective

GAN_CONDITIONS = ("label", "text", "audio")
GAN_OUTPUTS = ("image", "video")
VIDEO_GENERATORS = ("warp", "conv")


# --- options --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GANNetwork(ConfigGroup):
    """Sizes of the two players and of their condition encoders.

    Args:
        video_generator: videos only: ``warp``: one 2-D content image moved rigidly frame by frame (cheap; for
            scenes whose objects translate); ``conv``: every frame drawn by (2+1)-D convolutions (general).
        latent_dim: size of the noise ``z ~ N(0, I)``.
        width: generator channels at full resolution (doubling per level down to 4x4, at most 8x).
        discriminator_width: discriminator channels at full resolution (``null``: ``width``).
        discriminator_frames: videos only: frames per clip that a full-size image branch of the
            discriminator also judges (content), beside the clip branch (motion); 0: clip branch only.
        discriminator_glimpses: videos only: frames per clip that a glimpse branch judges: a window centred on
            each frame's centre of brightness, for objects small on their canvas; 0: no glimpse branch.
        glimpse_size: side of those windows (``image_size``: the data's image size, e.g. the 16 px of a digit).
        condition_dim: size of each player's condition embedding.
        text_width: width of the trainable text encoders.
        text_layers: transformer layers of the trainable text encoders.
        text_encoder_path: a local ``transformers`` model folder; its frozen encoder replaces the
            trainable ones (each player then trains only an MLP on its pooled features).
        n_mels: mel bands of the audio spectrogram.
        audio_width: channels of the audio encoders.
        spectral_norm: spectral normalisation on every discriminator layer (Miyato et al. 2018).
    """

    section = "network"
    video_generator: str = "warp"
    latent_dim: int = 128
    width: int = 32
    discriminator_width: int | None = None
    discriminator_frames: int = 2
    discriminator_glimpses: int = 0
    glimpse_size: int | str = "image_size"
    condition_dim: int = 128
    text_width: int = 64
    text_layers: int = 1
    text_encoder_path: str | None = None
    n_mels: int = 64
    audio_width: int = 32
    spectral_norm: bool = True

    def check(self) -> None:
        self.require_choice("video_generator", VIDEO_GENERATORS)
        for name in ("latent_dim", "width", "condition_dim", "text_width", "text_layers", "n_mels", "audio_width"):
            self.require(getattr(self, name) >= 1, name, "must be >= 1")
        self.require(self.discriminator_width is None or self.discriminator_width >= 1, "discriminator_width",
                     "must be >= 1 or null")
        for name in ("discriminator_frames", "discriminator_glimpses"):
            self.require(getattr(self, name) >= 0, name, "must be >= 0 (0: no such branch)")
        pixels = isinstance(self.glimpse_size, int) and self.glimpse_size >= 1
        self.require(pixels or self.glimpse_size == "image_size", "glimpse_size",
                     "must be a number of pixels or 'image_size'")


@dataclasses.dataclass(frozen=True)
class GANSampling(ConfigGroup):
    """Defaults of the sampling knobs (each can be given to ``generate``/``mmgen generate``).

    Args:
        truncation: draw ``z`` from the normal truncated to ``[-truncation, truncation]`` (the truncation
            trick, Brock et al. 2019; 0 gives the mode ``z = 0``; ``null``: untruncated).
    """

    section = "sampling"
    truncation: float | None = None

    def check(self) -> None:
        self.require(self.truncation is None or self.truncation >= 0, "truncation", "must be >= 0 or null")


@dataclasses.dataclass(frozen=True)
class GANConfig:
    """The family's option groups, typed (``self.config``)."""

    network: GANNetwork
    objective: GANObjective
    optimization: Optimization
    sampling: GANSampling


def _legacy_options(flat: dict[str, Any]) -> dict[str, Any]:
    """The flat layout gave the discriminator's rate as its own option and kept an EMA copy inside the
    model (``ema_decay``); the copy's weights become the generator's (:func:`_legacy_averaged_generator`)."""
    flat = dict(flat)
    flat.pop("ema_decay", None)
    if "lr_discriminator" in flat:
        flat["group_lr"] = {"discriminator": flat.pop("lr_discriminator")}
    return flat


def _legacy_averaged_generator(state: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
    """An old checkpoint sampled its ``generator_ema``: those weights become ``generator.*``, the live ones go."""
    if not any(key.startswith("generator_ema.") for key in state):  # trained with ema_decay=0: it sampled the generator
        return state
    return {("generator." + key[len("generator_ema."):] if key.startswith("generator_ema.") else key): value
            for key, value in state.items() if not key.startswith("generator.")}


# --- the family -----------------------------------------------------------------------------------
class ConditionalGAN(GenerativeModule):
    """A generator ``G(z, y)`` and a projection discriminator ``D(x, y)`` trained against each other:
    label, text or audio (or nothing) -> image or video.

    Args:
        data_spec: sizes from the datamodule (linked by the CLI).
        condition: the modality ``y`` the generator is conditioned on: ``label``, ``text`` or ``audio``;
            ``None`` trains an unconditional GAN.
        output: what is generated: ``image`` (``B,C,H,W``) or ``video`` (``B,F,C,H,W``).
        network: sizes of the generator, the discriminator and their condition encoders (:class:`GANNetwork`).
        objective: the players' losses and the schedule of the game
            (:class:`~mmgen_lightning.objectives.gan.GANObjective`).
        optimization: one Adam per player (:class:`~mmgen_lightning.models.optim.Optimization`): ``lr`` is the
            generator's rate, ``group_lr: {discriminator: ...}`` the discriminator's (TTUR: larger), constant.
        sampling: defaults of the sampling knobs (:class:`GANSampling`).
    """

    #: the keyword arguments of :meth:`sample` and their ranges, checked by ``generate`` before sampling
    sampling_knobs = family_knobs("truncation", "seed", "interpolate",
                                  latents=Knob(None, help="explicit z, num_samples x latent_dim (overrides the "
                                                          "truncation, seed and interpolate knobs)"))
    legacy = LegacyLayout(
        groups={"network": GANNetwork, "objective": GANObjective, "optimization": Optimization,
                "sampling": GANSampling},
        renamed={"lr_generator": "optimization.lr"},
        adjust=_legacy_options, adjust_state=_legacy_averaged_generator)

    def __init__(self, data_spec: dict[str, Any] | None = None, condition: str | None = "label", output: str = "image",
                 network: GANNetwork = GANNetwork(), objective: GANObjective = GANObjective(),
                 optimization: Optimization = Optimization(optimizer="adam", lr=1e-4, betas=(0.0, 0.9),
                                                           group_lr={"discriminator": 4e-4}),
                 sampling: GANSampling = GANSampling()) -> None:
        super().__init__(data_spec)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.config = GANConfig(**build_groups(ConditionalGAN.__init__, network=network, objective=objective,
                                               optimization=optimization, sampling=sampling))
        net, objective, optimization = self.config.network, self.config.objective, self.config.optimization
        if condition is not None and condition not in GAN_CONDITIONS:
            raise ValueError(f"condition: unknown {condition!r}; allowed: {', '.join(GAN_CONDITIONS)} or null")
        if output not in GAN_OUTPUTS:
            raise ValueError(f"output: unknown {output!r}; allowed: {', '.join(GAN_OUTPUTS)}")
        if condition is None:
            for name in ("condition_mismatch", "contrastive_weight", "aligner_weight"):
                if getattr(objective, name):
                    raise ValueError(f"objective.{name} needs a condition; got condition=None")
        if objective.contrastive_weight and get_modality(output).frames:
            raise ValueError(f"objective.contrastive_weight needs output='image', got output={output!r}")
        if net.text_encoder_path is not None and condition != "text":
            raise ValueError(f"network.text_encoder_path is only used with condition='text', "
                             f"got condition={condition!r}")
        unknown = sorted(set(optimization.group_lr) - {"generator", "discriminator"})
        if unknown:
            raise ValueError(f"optimization.group_lr: unknown group(s) {', '.join(unknown)}; the GAN's groups are "
                             "generator, discriminator")
        # Lightning steps no scheduler under manual optimization, and each player's step count is half the
        # Trainer's: a schedule would be silently off, so the rates are constant (as every recipe trains)
        if optimization.warmup_steps or optimization.schedule != "constant":
            raise ValueError(f"optimization: the GAN trains at constant rates; got warmup_steps="
                             f"{optimization.warmup_steps}, schedule={optimization.schedule!r}")
        self.declare_direction(condition, output)
        self._aligner: list[nn.Module] = []  # a list, so the frozen critic is neither a submodule nor saved

        self.text_encoder = PretrainedTextEncoder(net.text_encoder_path) if net.text_encoder_path else None
        # the condition's front end (audio: its log-mel), run once per batch for every embedder; the
        # attribute keeps the name checkpoints store its buffers under
        self.log_mel = (get_modality(condition).condition_frontend(self.data_spec, n_mels=net.n_mels)
                        if condition else None)
        self.generator = self.build_generator()
        self.discriminator = self.build_discriminator()
        self.discriminator_steps = self.generator_steps = 0
        self._window: list[tuple[dict[str, Tensor], int]] = []  # (conditions, batch size) of this step's micro-batches

    # --- networks -----------------------------------------------------------------------------
    def build_embedder(self) -> nn.Module | None:
        """A fresh condition embedder (each player gets its own)."""
        net = self.config.network
        if self.condition is None:
            return None
        if self.text_encoder is not None:
            return FeatureEmbedder(self.text_encoder.hidden_size, net.condition_dim)
        return modality_networks.condition_embedder(
            get_modality(self.condition), self.data_spec, net.condition_dim, text_width=net.text_width,
            text_layers=net.text_layers, n_mels=net.n_mels, audio_width=net.audio_width)

    def build_generator(self) -> nn.Module:
        """``G(z: B,latent_dim, conditions) -> samples`` in [-1, 1]."""
        net, size = self.config.network, get_modality(self.output).size(self.data_spec)
        if not get_modality(self.output).frames:
            return ImageGenerator(net.latent_dim, self.spec("image_channels"), size, net.width, self.build_embedder(),
                                  net.condition_dim)
        if net.video_generator == "warp":  # content and motion read the condition through embedders of their own
            return WarpVideoGenerator(net.latent_dim, self.spec("image_channels"), self.spec("num_frames"), size,
                                      net.width, self.build_embedder(), net.condition_dim,
                                      motion_embedder=self.build_embedder())
        return VideoGenerator(net.latent_dim, self.spec("image_channels"), self.spec("num_frames"), size, net.width,
                              self.build_embedder(), net.condition_dim)

    def build_discriminator(self) -> nn.Module:
        """A network with ``features(x)``, ``embed(conditions)`` and ``score(features, embedding)``: logits ``B``,
        or ``B,K`` for a video discriminator with frame or glimpse branches (each branch scored apart)."""
        net, size = self.config.network, get_modality(self.output).size(self.data_spec)
        width, branches, embedder = net.discriminator_width or net.width, None, self.build_embedder()
        if not get_modality(self.output).frames:
            trunk, features = image_trunk(self.spec("image_channels"), size, width, net.spectral_norm)
            if self.config.objective.contrastive_weight:
                return ProjectionDiscriminator(trunk, features, embedder, net.condition_dim, net.spectral_norm,
                                               contrastive_dim=net.condition_dim)
        elif net.discriminator_frames or net.discriminator_glimpses:
            glimpse_size = self.spec("image_size") if net.glimpse_size == "image_size" else net.glimpse_size
            trunk = ClipAndFramesTrunk(self.spec("image_channels"), self.spec("num_frames"), size, width,
                                       net.discriminator_frames, net.spectral_norm, net.discriminator_glimpses,
                                       glimpse_size if net.discriminator_glimpses else 16)
            features, branches = trunk.num_features, trunk.branch_features
            if embedder is not None:  # each branch reads the condition through an embedder of its own
                embedder = [embedder] + [self.build_embedder() for _ in branches[1:]]
        else:
            trunk, features = video_trunk(self.spec("image_channels"), self.spec("num_frames"), size, width,
                                          net.spectral_norm)
        return ProjectionDiscriminator(trunk, features, embedder, net.condition_dim, net.spectral_norm, branches)

    def condition_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """What the condition embedders read: the condition's batch entries, plus features computed once here
        for both players (the log-mel spectrogram of audio, a frozen text encoder's features)."""
        if self.condition is None:
            return {}
        inputs = get_modality(self.condition).condition_inputs(batch, self.log_mel)
        if self.text_encoder is not None:  # condition text (checked in __init__)
            inputs["text_features"] = self.text_encoder(self.caption_strings(batch["text"]))
        return inputs

    def latents(self, num_samples: int, truncation: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """``z ~ N(0, I)``: ``B,latent_dim``; with ``truncation`` drawn from the normal truncated to
        ``[-truncation, truncation]`` (the truncation trick, Brock et al. 2019; 0 gives the mode ``z = 0``)."""
        shape = (num_samples, self.config.network.latent_dim)
        if truncation is None:
            return torch.randn(shape, device=self.device, generator=generator)
        if truncation <= 0:
            return torch.zeros(shape, device=self.device)
        z = torch.empty(shape, device=self.device)
        return nn.init.trunc_normal_(z, 0.0, 1.0, -truncation, truncation, generator=generator)

    def aligner_term(self, fake: Tensor, conditions: dict[str, Tensor]) -> Tensor:
        """The frozen aligner's InfoNCE of fakes and their conditions (``objectives.gan.aligner_loss``)."""
        return aligner_loss(self._aligner[0], fake, conditions, self.condition, self.output, self.tokenizer)

    # --- the game -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        optimizer_g, optimizer_d = self.optimizers()
        objective, real = self.config.objective, batch[self.output]
        conditions = self.condition_inputs(batch)
        self._window.append((conditions, real.shape[0]))
        step_now, log_now = len(self._window) == objective.accumulate_grad_batches, self._logging_step()
        metrics: dict[str, Tensor | None] = {}

        # discriminator: real vs detached fakes (+ penalties); steps once the window's micro-batches are in
        self.toggle_optimizer(optimizer_d)
        d_terms = discriminator_objective(self.generator, self.discriminator, real, self.latents(real.shape[0]),
                                          conditions, objective, step=self.discriminator_steps)
        self._backward(d_terms["loss"] / objective.accumulate_grad_batches)
        if step_now:
            metrics["grad_norm_discriminator"] = self._step(optimizer_d, self.discriminator, measure=log_now)
            self.discriminator_steps += 1
        self.untoggle_optimizer(optimizer_d)

        # generator: every n_critic discriminator steps, over the window's conditions, against the new D
        if step_now and self.discriminator_steps % objective.n_critic == 0:
            self.toggle_optimizer(optimizer_g)
            aligner = self.aligner_term if self._aligner else None
            for window_conditions, batch_size in self._window:
                g_terms = generator_objective(self.generator, self.discriminator, self.latents(batch_size),
                                              window_conditions, objective, aligner)
                self._backward(g_terms["loss"] / objective.accumulate_grad_batches)
            metrics["grad_norm_generator"] = self._step(optimizer_g, self.generator, measure=log_now)
            self.untoggle_optimizer(optimizer_g)
            self.generator_steps += 1
            metrics.update({f"{name}_generator": g_terms[name].detach() for name in ("loss", "contrastive", "aligner")
                            if name in g_terms})
        if step_now:
            self._window = []

        if log_now:
            metrics.update({"loss_discriminator": d_terms["adversarial"], "d_real": d_terms["d_real"],
                            "d_fake": d_terms["d_fake"]})
            metrics.update({name: d_terms[name].detach() for name in ("r1", "gp") if name in d_terms})
            if "contrastive" in d_terms:
                metrics["contrastive_discriminator"] = d_terms["contrastive"].detach()
            self.log_dict({f"train/{name}": value for name, value in metrics.items() if value is not None})

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        conditions, real, loss = self.condition_inputs(batch), batch[self.output], self.config.objective.loss
        # the averaged generator (and discriminator) when the recipe's EMA callback swapped them in
        fake = self.generator(self.latents(real.shape[0]), conditions)
        real_logits, fake_logits = self.discriminator(real, conditions), self.discriminator(fake, conditions)
        self.log("val/loss_discriminator", discriminator_loss(real_logits, fake_logits, loss), sync_dist=True)
        self.log("val/loss_generator", generator_loss(fake_logits, loss), sync_dist=True)
        self.log("val/d_real", real_logits.float().mean(), sync_dist=True)
        self.log("val/d_fake", fake_logits.float().mean(), sync_dist=True)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """The generator's optimizer, then the discriminator's (``training_step`` unpacks them in this order)."""
        return configure_optimization(self, self.config.optimization,
                                      groups={"generator": self.generator, "discriminator": self.discriminator})

    # --- manual optimization helpers ----------------------------------------------------------
    def _backward(self, loss: Tensor) -> None:
        """``manual_backward`` without DDP's per-backward all-reduce (see the module docstring)."""
        block_sync = getattr(self.trainer.strategy, "block_backward_sync", nullcontext)
        with block_sync():
            self.manual_backward(loss)

    def _step(self, optimizer, network: nn.Module, measure: bool = True) -> Tensor | None:
        """Average the player's gradients over processes, step, zero them; returns their global norm
        when ``measure``."""
        parameters = [p for p in network.parameters() if p.requires_grad]
        gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        if self.trainer.world_size > 1:
            flat = self.trainer.strategy.reduce(torch.cat([g.flatten() for g in gradients]), reduce_op="mean")
            for parameter, gradient in zip(parameters, flat.split([p.numel() for p in parameters])):
                parameter.grad = gradient.view_as(parameter)
            gradients = [p.grad for p in parameters]
        norm = torch.nn.utils.get_total_norm(gradients) if measure else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1 and not isinstance(self.trainer.strategy, DDPStrategy):
            raise ValueError(f"ConditionalGAN averages each player's gradients itself under DDP; strategy "
                             f"{type(self.trainer.strategy).__name__} is not supported; use strategy='ddp' "
                             "(any start method) or a single device")
        self._window = []
        path = self.config.objective.aligner_path
        if self.config.objective.aligner_weight and not self._aligner:
            aligner = load_generator(path)
            missing = [m for m in (self.condition, self.output) if m not in getattr(aligner, "modalities", ())]
            if missing:
                raise ValueError(f"objective.aligner_path {path}: an {type(aligner).__name__} that does not align "
                                 f"the GAN's {missing[0]!r}; give an Aligner of {self.condition} and {self.output}")
            # a frozen critic outside the module tree: moved here once, as the metrics move their judges
            self._aligner.append(aligner.requires_grad_(False).eval().to(self.device))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["gan_steps"] = {"discriminator": self.discriminator_steps, "generator": self.generator_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        steps = checkpoint.get("gan_steps") or {}
        self.discriminator_steps = int(steps.get("discriminator", 0))
        self.generator_steps = int(steps.get("generator", 0))

    # --- sampling -----------------------------------------------------------------------------
    def serves(self, sources: tuple[str, ...], target: str) -> bool:
        """Exactly the trained condition (nothing, for an unconditional model) -> the trained output."""
        return set(sources) == set(self.condition_modalities) and target in self.output_modalities

    def sample(self, conditions: dict[str, Tensor], num_samples: int, targets: list[str],
               truncation: float | None = None, seed: int | None = None, interpolate: bool = False,
               latents: Tensor | None = None) -> dict[str, Tensor]:
        """Draw ``z`` and run the generator (the averaged one, in a checkpoint of a recipe with the EMA callback)
        on the conditions: ``image: B,C,H,W`` or ``video: B,F,C,H,W`` in [-1, 1].

        Args:
            truncation: draw ``z`` from the normal truncated to ``[-t, t]`` (None: untruncated; 0: ``z = 0``).
            seed: seeds ``z`` (the same seed and conditions give the same samples).
            interpolate: the ``num_samples`` latents walk a great circle (slerp) from one draw to a second,
                so one condition shows a smooth path through the generator's variety.
            latents: explicit ``z``, ``num_samples,latent_dim`` (overrides the three knobs above).
        """
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        latent_dim = self.config.network.latent_dim
        if latents is not None:
            if tuple(latents.shape) != (num_samples, latent_dim):
                raise ValueError(f"latents must have shape ({num_samples}, {latent_dim}), got {tuple(latents.shape)}")
            z = latents.to(self.device, torch.float32)
        elif interpolate:
            ends = self.latents(2, truncation, generator)
            z = slerp(ends[0], ends[1], torch.linspace(0, 1, num_samples, device=self.device))
        else:
            z = self.latents(num_samples, truncation, generator)
        return {self.output: self.generator(z, self.condition_inputs(conditions)).float().clamp(-1, 1)}

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        conditions = {key: batch[key] for name in self.condition_modalities for key in get_modality(name).keys()}
        return self.generate(conditions, len(batch[self.output]), [self.output])


def slerp(start: Tensor, end: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation ``D`` x ``D`` -> ``len(t),D`` (keeps the norm typical of Gaussian latents;
    White 2016, "Sampling generative networks")."""
    t = t.unsqueeze(1)
    if min(start.norm(), end.norm()) < 1e-8:  # z = 0 (truncation 0) has no direction
        return (1 - t) * start + t * end
    angle = torch.arccos(torch.dot(start / start.norm(), end / end.norm()).clamp(-1.0, 1.0))
    if angle.abs() < 1e-4:
        return (1 - t) * start + t * end
    return (torch.sin((1 - t) * angle) * start + torch.sin(t * angle) * end) / torch.sin(angle)
