"""ConditionalGAN: a generator ``G(z, y)`` and a projection discriminator ``D(x, y)`` trained against
each other, for label/text/audio -> image and text -> video.

The training step is the alternating game written plainly with Lightning's manual optimization
(as Lightning's GAN example): one block per player, each with its own optimizer (TTUR learning
rates, Heusel et al. 2017), ``toggle_optimizer`` so a player's backward reaches only its own
weights, and the generator's samples detached for the discriminator. Per micro-batch:

1. discriminator: ``loss(D(x, y), D(G(z, y), y))`` [+ mismatched pairs ``D(x, y')`` as fakes]
   [+ ``gamma / 2 * R1`` every ``r1_every`` steps, lazily scaled] [+ ``lambda * GP``]
   [+ ``w * InfoNCE(real images, their conditions)`` in the discriminator's own space];
2. generator, after every ``n_critic`` discriminator steps: ``loss_G(D(G(z, y), y))`` against the
   discriminator just updated [+ ``w * InfoNCE(fake images, their conditions)``];
3. the EMA copy of the generator (what :meth:`generate` samples from) moves towards ``G``.

Gradient accumulation (``accumulate_grad_batches = k``) makes ``k`` micro-batches one step of a
``k``-times larger batch: the discriminator accumulates over the ``k`` micro-batches, steps, and
only then does the generator go over the same ``k`` micro-batches' conditions against the updated
discriminator. Under DDP each backward runs inside ``block_backward_sync`` and the gradients of
the stepping player are averaged once, in one flat all-reduce, just before its step (as
StyleGAN3's training loop does): DDP's own reducer expects every parameter in every backward, and
in a GAN each backward reaches one player, so this is what lets the game run without
``find_unused_parameters``, and it syncs once per optimizer step rather than per micro-batch.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn

from mmgen_lightning.knobs import Knob, family_knobs
from mmgen_lightning.losses import (ADVERSARIAL_LOSSES, discriminator_loss, generator_loss, gradient_penalty,
                                    r1_penalty, symmetric_info_nce)
from mmgen_lightning.modalities import get_modality
from mmgen_lightning.models.base import GenerativeModule
from mmgen_lightning.models.layers import modality_networks
from mmgen_lightning.models.layers.conditioning import FeatureEmbedder, PretrainedTextEncoder
from mmgen_lightning.models.layers.gan_blocks import (ClipAndFramesTrunk, ImageGenerator, ProjectionDiscriminator,
                                                      VideoGenerator, WarpVideoGenerator, image_trunk, video_trunk)

GAN_CONDITIONS = ("label", "text", "audio")
GAN_OUTPUTS = ("image", "video")
VIDEO_GENERATORS = ("warp", "conv")


class ConditionalGAN(GenerativeModule):
    """Args:
        data_spec: sizes from the datamodule (linked by the CLI).
        condition: the modality ``y`` the generator is conditioned on: ``label``, ``text`` or ``audio``;
            ``None`` trains an unconditional GAN.
        output: what is generated: ``image`` (``B,C,H,W``) or ``video`` (``B,F,C,H,W``).
        video_generator: ``warp``: one 2-D content image moved rigidly frame by frame (cheap; for scenes
            whose objects translate); ``conv``: every frame drawn by (2+1)-D convolutions (general).
        latent_dim: size of the noise ``z ~ N(0, I)``.
        width: generator channels at full resolution (doubling per level down to 4x4, at most 8x).
        discriminator_width: discriminator channels at full resolution (default: ``width``).
        discriminator_frames: videos only: frames per clip that a full-size image branch of the
            discriminator also judges (content), beside the clip branch (motion); 0: clip branch only.
        discriminator_glimpses: videos only: frames per clip that a glimpse branch judges: a window centred on
            each frame's centre of brightness, for objects small on their canvas; 0: no glimpse branch.
        glimpse_size: side of those windows (``"image_size"``: the data's image size, e.g. the 16 px of a digit).
        condition_dim: size of each player's condition embedding.
        text_width: width of the trainable text encoders.
        text_layers: transformer layers of the trainable text encoders.
        text_encoder_path: a local ``transformers`` model folder; its frozen encoder replaces the
            trainable ones (each player then trains only an MLP on its pooled features).
        n_mels: mel bands of the audio spectrogram.
        audio_width: channels of the audio encoders.
        loss: ``non_saturating``, ``hinge``, ``wgan_gp`` or ``least_squares``.
        r1_gamma: weight ``gamma`` of the R1 penalty ``gamma / 2 * E||grad_x D(x)||^2`` on real data (0: off).
        r1_every: lazy R1 (Karras et al. 2020): apply it every this many discriminator steps, times this.
        gp_weight: weight of the WGAN-GP gradient penalty; ``None`` means 10 with ``wgan_gp``, else 0.
        spectral_norm: spectral normalisation on every discriminator layer.
        condition_mismatch: also show the discriminator real samples with shuffled conditions as fakes
            (GAN-CLS, Reed et al. 2016).
        contrastive_weight: weight ``w`` of the image-condition contrastive terms of XMC-GAN (Zhang et al.
            2021): the discriminator's features of each real image must pick its own condition among the
            batch's (symmetric InfoNCE, :func:`~mmgen_lightning.losses.symmetric_info_nce`), and the
            generator is trained so its fakes do the same. A real/fake score can be won by reading a few
            words of a caption; picking the one caption out of a batch needs every word. 0: off; images only;
            negatives come from each process's own batch.
        contrastive_temperature: the InfoNCE temperature of those terms (XMC-GAN: 0.1).
        aligner_path: an :class:`~mmgen_lightning.models.aligner.Aligner` checkpoint of the condition and the
            output, used frozen during training only (never saved with the GAN): with ``aligner_weight > 0`` the
            generator also minimises the aligner's InfoNCE between its fakes and their conditions, a critic that
            already reads every attribute of a caption (as Lafite and GALIP lean on CLIP).
        aligner_weight: weight of that term (0: off).
        n_critic: discriminator steps per generator step.
        accumulate_grad_batches: micro-batches per optimizer step of each player (the Trainer's own
            option does not apply to manual optimization).
        lr_generator: Adam learning rate of the generator.
        lr_discriminator: Adam learning rate of the discriminator (TTUR: larger than the generator's).
        betas: Adam betas of both players.
        ema_decay: decay of the generator's exponential moving average, which :meth:`generate` uses
            (0 samples from the raw generator); warmed up as ``min(decay, (1 + n) / (10 + n))``.
    """

    #: the keyword arguments of :meth:`sample` and their ranges, checked by ``generate`` before sampling
    sampling_knobs = family_knobs("truncation", "seed", "interpolate", "use_ema",
                                  latents=Knob(None, help="explicit z, num_samples x latent_dim (overrides the "
                                                          "truncation, seed and interpolate knobs)"))

    def __init__(self, data_spec: dict[str, Any] | None = None, condition: str | None = "label",
                 output: str = "image", video_generator: str = "warp", latent_dim: int = 128, width: int = 32,
                 discriminator_width: int | None = None, discriminator_frames: int = 2, discriminator_glimpses: int = 0,
                 glimpse_size: int | str = "image_size", condition_dim: int = 128, text_width: int = 64,
                 text_layers: int = 1, text_encoder_path: str | None = None, n_mels: int = 64, audio_width: int = 32,
                 loss: str = "hinge", r1_gamma: float = 0.0, r1_every: int = 1, gp_weight: float | None = None,
                 spectral_norm: bool = True, condition_mismatch: bool = False, contrastive_weight: float = 0.0,
                 contrastive_temperature: float = 0.1, n_critic: int = 1,
                 accumulate_grad_batches: int = 1, lr_generator: float = 1e-4, lr_discriminator: float = 4e-4,
                 betas: tuple[float, float] = (0.0, 0.9), ema_decay: float = 0.999, aligner_path: str | None = None,
                 aligner_weight: float = 0.0) -> None:
        super().__init__(data_spec)
        self.save_hyperparameters()
        self.automatic_optimization = False
        if condition is not None and condition not in GAN_CONDITIONS:
            raise ValueError(f"condition: unknown {condition!r}; allowed: {', '.join(GAN_CONDITIONS)} or null")
        if output not in GAN_OUTPUTS:
            raise ValueError(f"output: unknown {output!r}; allowed: {', '.join(GAN_OUTPUTS)}")
        if video_generator not in VIDEO_GENERATORS:
            raise ValueError(f"video_generator: unknown {video_generator!r}; allowed: {', '.join(VIDEO_GENERATORS)}")
        if loss not in ADVERSARIAL_LOSSES:
            raise ValueError(f"loss: unknown {loss!r}; allowed: {', '.join(ADVERSARIAL_LOSSES)}")
        for name, value in (("n_critic", n_critic), ("r1_every", r1_every),
                            ("accumulate_grad_batches", accumulate_grad_batches)):
            if value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if condition_mismatch and condition is None:
            raise ValueError("condition_mismatch needs a condition; got condition=None")
        if contrastive_weight < 0 or contrastive_temperature <= 0:
            raise ValueError(f"contrastive_weight must be >= 0 and contrastive_temperature > 0, got "
                             f"{contrastive_weight} and {contrastive_temperature}")
        if contrastive_weight and (condition is None or get_modality(output).frames):
            raise ValueError(f"contrastive_weight needs a condition and output='image', got condition={condition!r}, "
                             f"output={output!r}")
        if text_encoder_path is not None and condition != "text":
            raise ValueError(f"text_encoder_path is only used with condition='text', got condition={condition!r}")
        self.declare_direction(condition, output)
        self.gp_weight = (10.0 if loss == "wgan_gp" else 0.0) if gp_weight is None else float(gp_weight)
        if aligner_weight < 0 or (aligner_weight > 0 and (not aligner_path or condition is None)):
            raise ValueError(f"aligner_weight must be >= 0, and > 0 needs aligner_path and a condition; got "
                             f"aligner_weight={aligner_weight}, aligner_path={aligner_path!r}, condition={condition!r}")
        self._aligner: list[nn.Module] = []  # a list, so the frozen critic is neither a submodule nor saved

        self.text_encoder = PretrainedTextEncoder(text_encoder_path) if text_encoder_path else None
        # the condition's front end (audio: its log-mel), run once per batch for every embedder; the
        # attribute keeps the name checkpoints store its buffers under
        self.log_mel = get_modality(condition).condition_frontend(self.data_spec, n_mels=n_mels) if condition else None
        self.generator = self.build_generator()
        self.discriminator = self.build_discriminator()
        # the averaged generator lives in the state_dict, so checkpoints rebuild it with weights_only=True
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False) if ema_decay > 0 else None
        self.discriminator_steps = self.generator_steps = 0
        self._window: list[tuple[dict[str, Tensor], int]] = []  # (conditions, batch size) of this step's micro-batches

    # --- networks -----------------------------------------------------------------------------
    def build_embedder(self) -> nn.Module | None:
        """A fresh condition embedder (each player gets its own)."""
        hp = self.hparams
        if self.condition is None:
            return None
        if self.text_encoder is not None:
            return FeatureEmbedder(self.text_encoder.hidden_size, hp.condition_dim)
        return modality_networks.condition_embedder(
            get_modality(self.condition), self.data_spec, hp.condition_dim, text_width=hp.text_width,
            text_layers=hp.text_layers, n_mels=hp.n_mels, audio_width=hp.audio_width)

    def build_generator(self) -> nn.Module:
        """``G(z: B,latent_dim, conditions) -> samples`` in [-1, 1]."""
        hp, size = self.hparams, get_modality(self.output).size(self.data_spec)
        if not get_modality(self.output).frames:
            return ImageGenerator(hp.latent_dim, self.spec("image_channels"), size, hp.width, self.build_embedder(),
                                  hp.condition_dim)
        if hp.video_generator == "warp":  # content and motion read the condition through embedders of their own
            return WarpVideoGenerator(hp.latent_dim, self.spec("image_channels"), self.spec("num_frames"), size,
                                      hp.width, self.build_embedder(), hp.condition_dim,
                                      motion_embedder=self.build_embedder())
        return VideoGenerator(hp.latent_dim, self.spec("image_channels"), self.spec("num_frames"), size, hp.width,
                              self.build_embedder(), hp.condition_dim)

    def build_discriminator(self) -> nn.Module:
        """A network with ``features(x)``, ``embed(conditions)`` and ``score(features, embedding)``: logits ``B``,
        or ``B,2`` for a video discriminator with a frame branch (clip and frames scored apart)."""
        hp, size = self.hparams, get_modality(self.output).size(self.data_spec)
        width, branches, embedder = hp.discriminator_width or hp.width, None, self.build_embedder()
        if not get_modality(self.output).frames:
            trunk, features = image_trunk(self.spec("image_channels"), size, width, hp.spectral_norm)
            if hp.contrastive_weight:
                return ProjectionDiscriminator(trunk, features, embedder, hp.condition_dim, hp.spectral_norm,
                                               contrastive_dim=hp.condition_dim)
        elif hp.discriminator_frames or hp.discriminator_glimpses:
            trunk = ClipAndFramesTrunk(self.spec("image_channels"), self.spec("num_frames"), size, width,
                                       hp.discriminator_frames, hp.spectral_norm, hp.discriminator_glimpses,
                                       self._glimpse_size() if hp.discriminator_glimpses else 16)
            features, branches = trunk.num_features, trunk.branch_features
            if embedder is not None:  # each branch reads the condition through an embedder of its own
                embedder = [embedder] + [self.build_embedder() for _ in branches[1:]]
        else:
            trunk, features = video_trunk(self.spec("image_channels"), self.spec("num_frames"), size, width,
                                          hp.spectral_norm)
        return ProjectionDiscriminator(trunk, features, embedder, hp.condition_dim, hp.spectral_norm, branches)

    def _glimpse_size(self) -> int:
        size = self.hparams.glimpse_size
        if size == "image_size":
            return self.spec("image_size")
        if not isinstance(size, int):
            raise ValueError(f"glimpse_size must be a number of pixels or 'image_size', got {size!r}")
        return size

    def condition_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """What the condition embedders read: the condition's batch entries, plus features computed once here
        for both players (the log-mel spectrogram of audio, a frozen text encoder's features)."""
        if self.condition is None:
            return {}
        inputs = get_modality(self.condition).condition_inputs(batch, self.log_mel)
        if self.text_encoder is not None:  # condition text (checked in __init__)
            if self.tokenizer is None:
                raise ValueError("text_encoder_path needs the datamodule's tokenizer to turn token ids back into "
                                 "captions; fit with a datamodule or load a checkpoint that carries one")
            inputs["text_features"] = self.text_encoder(self.tokenizer.decode(batch["text"].cpu()))
        return inputs

    def latents(self, num_samples: int, truncation: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """``z ~ N(0, I)``: ``B,latent_dim``; with ``truncation`` drawn from the normal truncated to
        ``[-truncation, truncation]`` (the truncation trick, Brock et al. 2019; 0 gives the mode ``z = 0``)."""
        shape = (num_samples, self.hparams.latent_dim)
        if truncation is None:
            return torch.randn(shape, device=self.device, generator=generator)
        if truncation <= 0:
            return torch.zeros(shape, device=self.device)
        z = torch.empty(shape, device=self.device)
        return nn.init.trunc_normal_(z, 0.0, 1.0, -truncation, truncation, generator=generator)

    # --- the game -----------------------------------------------------------------------------
    def discriminator_terms(self, real: Tensor, conditions: dict[str, Tensor]) -> dict[str, Tensor]:
        """The discriminator's loss on one micro-batch, with the parts that are logged."""
        hp, discriminator = self.hparams, self.discriminator
        with torch.no_grad():  # the generator's output is detached: this step trains D only
            fake = self.generator(self.latents(real.shape[0]), conditions)
        use_r1 = hp.r1_gamma > 0 and self.discriminator_steps % hp.r1_every == 0
        real = real.detach().requires_grad_(use_r1)
        embedding = discriminator.embed(conditions)
        features = discriminator.features(torch.cat([real, fake.to(real.dtype)]))
        real_features, fake_features = features.chunk(2)
        real_logits = discriminator.score(real_features, embedding)
        fake_logits = discriminator.score(fake_features, embedding)
        negatives = fake_logits
        if hp.condition_mismatch:  # real samples under another sample's condition are fakes too
            negatives = torch.cat([fake_logits, discriminator.score(real_features, embedding.roll(1, dims=0))])
        terms = {"loss": discriminator_loss(real_logits, negatives, hp.loss),
                 "d_real": real_logits.detach().float().mean(), "d_fake": fake_logits.detach().float().mean()}
        terms["adversarial"] = terms["loss"].detach()
        if hp.contrastive_weight:  # real images must pick their own caption out of the batch
            terms["contrastive"] = symmetric_info_nce(*discriminator.contrast(real_features, embedding),
                                                      1.0 / hp.contrastive_temperature)
            terms["loss"] = terms["loss"] + hp.contrastive_weight * terms["contrastive"]
        if use_r1:
            terms["r1"] = r1_penalty(real_logits, real)
            terms["loss"] = terms["loss"] + 0.5 * hp.r1_gamma * hp.r1_every * terms["r1"]
        if self.gp_weight > 0:
            terms["gp"] = gradient_penalty(lambda x: discriminator.score(discriminator.features(x), embedding),
                                           real, fake)
            terms["loss"] = terms["loss"] + self.gp_weight * terms["gp"]
        return terms

    def generator_terms(self, conditions: dict[str, Tensor], batch_size: int) -> dict[str, Tensor]:
        """The generator's loss on one micro-batch of conditions."""
        hp, discriminator = self.hparams, self.discriminator
        fake = self.generator(self.latents(batch_size), conditions)
        features, embedding = discriminator.features(fake), discriminator.embed(conditions)
        terms = {"loss": generator_loss(discriminator.score(features, embedding), hp.loss)}
        if hp.contrastive_weight:  # and so must the fakes
            terms["contrastive"] = symmetric_info_nce(*discriminator.contrast(features, embedding),
                                                      1.0 / hp.contrastive_temperature)
            terms["loss"] = terms["loss"] + hp.contrastive_weight * terms["contrastive"]
        if hp.aligner_weight:
            terms["aligner"] = self.aligner_term(fake, conditions)
            terms["loss"] = terms["loss"] + hp.aligner_weight * terms["aligner"]
        return terms

    def aligner_term(self, fake: Tensor, conditions: dict[str, Tensor]) -> Tensor:
        """The frozen aligner's symmetric InfoNCE of fakes ``B,C,H,W`` (resized to its image size) and their
        conditions, at its own learned temperature; gradients reach the generator through the fakes only."""
        aligner = self._aligner[0]
        fake = get_modality(self.output).conform({self.output: fake}, aligner.data_spec, antialias=False)
        with torch.no_grad():  # captions re-tokenised by the aligner's tokenizer when both models carry one
            condition = get_modality(self.condition).conform(conditions, aligner.data_spec, self.tokenizer,
                                                             aligner.tokenizer)
            condition = aligner.embed({k: v.to(aligner.device) for k, v in condition.items()}, self.condition)
        return symmetric_info_nce(aligner.embed(fake, self.output), condition, aligner.logit_scale_value().detach())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        optimizer_g, optimizer_d = self.optimizers()
        accumulate, real = self.hparams.accumulate_grad_batches, batch[self.output]
        conditions = self.condition_inputs(batch)
        self._window.append((conditions, real.shape[0]))
        step_now, log_now = len(self._window) == accumulate, self._logging_step()
        metrics: dict[str, Tensor] = {}

        # discriminator: real vs detached fakes (+ penalties); steps once the window's micro-batches are in
        self.toggle_optimizer(optimizer_d)
        d_terms = self.discriminator_terms(real, conditions)
        self._backward(d_terms["loss"] / accumulate)
        if step_now:
            metrics["grad_norm_discriminator"] = self._step(optimizer_d, self.discriminator, measure=log_now)
            self.discriminator_steps += 1
        self.untoggle_optimizer(optimizer_d)

        # generator: every n_critic discriminator steps, over the window's conditions, against the new D
        if step_now and self.discriminator_steps % self.hparams.n_critic == 0:
            self.toggle_optimizer(optimizer_g)
            for window_conditions, batch_size in self._window:
                g_terms = self.generator_terms(window_conditions, batch_size)
                self._backward(g_terms["loss"] / accumulate)
            metrics["grad_norm_generator"] = self._step(optimizer_g, self.generator, measure=log_now)
            self.untoggle_optimizer(optimizer_g)
            self.generator_steps += 1
            self.update_ema()
            metrics["loss_generator"] = g_terms["loss"].detach()
            if "contrastive" in g_terms:
                metrics["contrastive_generator"] = g_terms["contrastive"].detach()
            if "aligner" in g_terms:
                metrics["aligner_generator"] = g_terms["aligner"].detach()
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
        conditions = self.condition_inputs(batch)
        real = batch[self.output]
        generator = self.generator_ema or self.generator
        fake = generator(self.latents(real.shape[0]), conditions)
        real_logits, fake_logits = self.discriminator(real, conditions), self.discriminator(fake, conditions)
        self.log("val/loss_discriminator", discriminator_loss(real_logits, fake_logits, self.hparams.loss),
                 sync_dist=True)
        self.log("val/loss_generator", generator_loss(fake_logits, self.hparams.loss), sync_dist=True)
        self.log("val/d_real", real_logits.float().mean(), sync_dist=True)
        self.log("val/d_fake", fake_logits.float().mean(), sync_dist=True)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        betas = tuple(float(beta) for beta in hp.betas)
        return [torch.optim.Adam(self.generator.parameters(), lr=hp.lr_generator, betas=betas),
                torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr_discriminator, betas=betas)]

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

    @torch.no_grad()
    def update_ema(self) -> None:
        """``ema <- decay * ema + (1 - decay) * G`` with the warm-up ``decay = min(ema_decay, (1 + n) / (10 + n))``."""
        if self.generator_ema is None:
            return
        n = self.generator_steps
        decay = min(self.hparams.ema_decay, (1 + n) / (10 + n))
        for averaged, live in zip(self.generator_ema.parameters(), self.generator.parameters()):
            averaged.lerp_(live.detach(), 1.0 - decay)
        for averaged, live in zip(self.generator_ema.buffers(), self.generator.buffers()):
            averaged.copy_(live)

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1 and not isinstance(self.trainer.strategy, DDPStrategy):
            raise ValueError(f"ConditionalGAN averages each player's gradients itself under DDP; strategy "
                             f"{type(self.trainer.strategy).__name__} is not supported; use strategy='ddp' "
                             "(any start method) or a single device")
        self._window = []
        if self.hparams.aligner_weight and not self._aligner:
            from mmgen_lightning.models.base import load_generator

            aligner = load_generator(self.hparams.aligner_path)
            missing = [m for m in (self.condition, self.output) if m not in getattr(aligner, "modalities", ())]
            if missing:
                raise ValueError(f"aligner_path {self.hparams.aligner_path}: an {type(aligner).__name__} that does not "
                                 f"align the GAN's {missing[0]!r}; give an Aligner of {self.condition} and {self.output}")
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
               latents: Tensor | None = None, use_ema: bool = True) -> dict[str, Tensor]:
        """Draw ``z`` and run the (EMA) generator on the conditions.

        Args:
            truncation: draw ``z`` from the normal truncated to ``[-t, t]`` (None: untruncated; 0: ``z = 0``).
            seed: seeds ``z`` (the same seed and conditions give the same samples).
            interpolate: the ``num_samples`` latents walk a great circle (slerp) from one draw to a second,
                so one condition shows a smooth path through the generator's variety.
            latents: explicit ``z``, ``num_samples,latent_dim`` (overrides the three knobs above).
            use_ema: sample from the averaged generator (when trained with ``ema_decay > 0``).
        """
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        if latents is not None:
            if tuple(latents.shape) != (num_samples, self.hparams.latent_dim):
                raise ValueError(f"latents must have shape ({num_samples}, {self.hparams.latent_dim}), "
                                 f"got {tuple(latents.shape)}")
            z = latents.to(self.device, torch.float32)
        elif interpolate:
            ends = self.latents(2, truncation, generator)
            z = slerp(ends[0], ends[1], torch.linspace(0, 1, num_samples, device=self.device))
        else:
            z = self.latents(num_samples, truncation, generator)
        network = self.generator_ema if use_ema and self.generator_ema is not None else self.generator
        return {self.output: network(z, self.condition_inputs(conditions)).float().clamp(-1, 1)}


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
