"""FlowMatching: conditional flow matching (rectified flow) with a DiT velocity network that reads its
condition through cross-attention, sampled by an ODE solver with classifier-free guidance.

Objective (Lipman et al. 2023; Liu et al. 2022): noise ``x0 ~ N(0, I)``, data ``x1``, a time ``t``
from the chosen density, the straight path ``x_t = (1 - t) x0 + t x1``, and the network regresses
its velocity: ``loss = || v(x_t, t, c) - (x1 - x0) ||^2``. The condition ``c`` is dropped (replaced
by a learned null condition) for ``cond_drop`` of the samples, so the same network also knows
``v(x_t, t, null)`` and sampling can use guidance ``v_null + w (v_c - v_null)``.

What is generated (``x1``): an image in pixels, audio as its log-mel spectrogram (one channel,
inverted to a waveform by Griffin-Lim when sampled), or, with ``space="latent"``, the frozen
pre-quantisation latents of a project :class:`VQVAE` (its weights ride in this checkpoint), which
keeps the token count of 128-256 px images small.

Its likelihood is exact: ``log p(x1 | c)`` through the probability-flow ODE with a Hutchinson
divergence (:func:`~mmgen_lightning.models.layers.flow_sampling.ode_log_likelihood`), scored on
the pixels of the output (log-mel bins for audio).

EMA weights for sampling come from Lightning's ``EMAWeightAveraging`` callback in the recipe: it
writes the averaged weights into the checkpoint's ``state_dict``, which is what ``load_generator``
rebuilds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mmgen_lightning.knobs import Knob, family_knobs
from mmgen_lightning.losses import flow_matching_loss
from mmgen_lightning.modalities import get_modality
from mmgen_lightning.models.base import GenerativeModule, Likelihood, load_generator
from mmgen_lightning.models.layers import modality_networks
from mmgen_lightning.models.layers.dit import DiT, ConditionTokens, TextTokenEncoder
from mmgen_lightning.models.layers.flow_sampling import (SAMPLERS, TIME_DENSITIES, guided,
                                                         ode_log_likelihood, sample_time, straight_path)

FLOW_CONDITIONS = ("text", "label", "audio", "image", "video")
FLOW_OUTPUTS = ("image", "audio")
SPACES = ("pixel", "latent")


class TokensOf(nn.Module):
    """Adapts a token encoder to ``conditions -> (tokens B,N,D, mask bool B,N)`` for one modality."""

    def __init__(self, modality: str, encoder: nn.Module) -> None:
        super().__init__()
        self.modality, self.encoder = modality, encoder
        self.keys = get_modality(modality).keys()  # the value, then its mask when it has one (text)

    def forward(self, conditions: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        inputs = [conditions[key] for key in self.keys]
        tokens = self.encoder(*inputs)
        if tokens.ndim == 2:  # a label: one token
            tokens = tokens.unsqueeze(1)
        mask = inputs[1] if len(inputs) > 1 else torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return tokens, mask


class FlowMatching(GenerativeModule):
    """Args:
        data_spec: sizes from the datamodule (linked by the CLI).
        condition: what the velocity network reads: ``text``, ``label``, ``audio``, ``image`` or
            ``video``; ``None`` trains an unconditional model.
        output: what is generated: ``image`` (``B,C,H,W``) or ``audio`` (as a log-mel spectrogram).
        space: ``pixel`` (the output itself) or ``latent`` (a frozen VQVAE's pre-quantisation latents).
        vqvae_checkpoint: ``space="latent"`` only: the project VQVAE checkpoint whose encoder makes the
            latents and whose decoder turns samples back into images.
        vqvae_config: filled in from ``vqvae_checkpoint`` (lets this checkpoint rebuild the VQVAE
            alone). Leave unset.
        latent_scale: standard deviation of the latents, measured on training data when fit starts
            (latents are divided by it, so the flow sees unit scale). Leave unset.
        width: token size of the DiT and of the condition encoder.
        depth: DiT blocks.
        num_heads: attention heads.
        patch_size: one DiT token per ``p x p`` pixels (latent cells).
        mlp_ratio: MLP hidden size over ``width``.
        stem_channels: channels of a 3x3 convolution before the patch embedding (0: DiT's linear patches).
        head_channels: channels per pixel the output layer unpatchifies, turned into the output by a 3x3
            convolution (0: DiT's linear output).
        condition_layers: transformer layers of the condition encoder (text, audio, image, video).
        condition_patch_size: stride of the image/video condition encoders' conv stem.
        n_mels: mel bands of an audio condition or an audio output.
        audio_frames: about how many log-mel frames an audio condition or output has.
        cond_drop: share of training samples whose condition is replaced by the null condition;
            above 0 is what makes ``guidance_scale`` available when sampling.
        time_density: how training draws ``t``: ``uniform`` or ``logit_normal``.
        logit_normal_mean: location of the logit-normal density.
        logit_normal_std: scale of the logit-normal density.
        lr: AdamW learning rate (after a linear warm-up, constant).
        betas: AdamW's moment decay rates.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps of the learning rate.
        sampler: default ODE solver: ``euler`` or ``heun``.
        steps: default solver steps (Heun uses two network evaluations per step).
        guidance_scale: default classifier-free guidance scale (1 = none).
        guidance_start: default start of the guidance interval, a time in [0, 1] (0 = noise): before it
            the sampler uses the plain conditional velocity.
        guidance_stop: default end of the guidance interval (1 = data): after it the plain conditional
            velocity again.
        likelihood_steps: Heun steps of the likelihood ODE.
        hutchinson_samples: probe vectors of the divergence estimate.
    """

    likelihood_options = ("likelihood_steps", "hutchinson_samples")
    sampling_knobs = family_knobs(
        "steps", "guidance_scale", "guidance_start", "guidance_stop", "seed",
        sampler=Knob(None, help="ODE solver: euler or heun"),
        return_target=Knob(bool, help="also return what the flow generated (pixels, log-mel or latents)"))

    def __init__(self, data_spec: dict[str, Any] | None = None, condition: str | None = "text", output: str = "image",
                 space: str = "pixel", vqvae_checkpoint: str | None = None, vqvae_config: dict[str, Any] | None = None,
                 latent_scale: float | None = None, width: int = 128, depth: int = 4, num_heads: int = 4,
                 patch_size: int = 4, mlp_ratio: float = 4.0, stem_channels: int = 0, head_channels: int = 0,
                 condition_layers: int = 2, condition_patch_size: int = 4,
                 n_mels: int = 32, audio_frames: int = 32, cond_drop: float = 0.1, time_density: str = "logit_normal",
                 logit_normal_mean: float = 0.0, logit_normal_std: float = 1.0, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0, warmup_steps: int = 100,
                 sampler: str = "euler", steps: int = 16, guidance_scale: float = 1.0, guidance_start: float = 0.0,
                 guidance_stop: float = 1.0, likelihood_steps: int = 16,
                 hutchinson_samples: int = 1) -> None:
        super().__init__(data_spec)
        self.save_hyperparameters()
        if condition is not None and condition not in FLOW_CONDITIONS:
            raise ValueError(f"condition: unknown modality {condition!r}; allowed: {', '.join(FLOW_CONDITIONS)} or null")
        if output not in FLOW_OUTPUTS:
            raise ValueError(f"output: unknown modality {output!r}; allowed: {', '.join(FLOW_OUTPUTS)}")
        if space not in SPACES:
            raise ValueError(f"space: unknown {space!r}; allowed: {', '.join(SPACES)}")
        if space == "latent" and not get_modality(output).pixels:
            raise ValueError(f"space: 'latent' is for image outputs, got output={output!r}")
        if space == "latent" and not (vqvae_checkpoint or vqvae_config):
            raise ValueError("vqvae_checkpoint: space 'latent' needs the path of a project VQVAE checkpoint "
                             "(train one with mmgen fit --config configs/vqvae/<data>.yaml)")
        if time_density not in TIME_DENSITIES:
            raise ValueError(f"time_density: unknown {time_density!r}; allowed: {', '.join(TIME_DENSITIES)}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler: unknown {sampler!r}; allowed: {', '.join(SAMPLERS)}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if condition is None and cond_drop:
            cond_drop = 0.0  # nothing to drop
        self.declare_direction(condition, output)
        self.cond_drop = cond_drop

        # a non-pixel output (audio) is generated as its log-mel spectrogram
        self.log_mel = (None if get_modality(output).pixels else
                        get_modality(output).log_mel(self.data_spec, n_mels, frames=audio_frames))
        self.vqvae = self._load_vqvae() if space == "latent" else None
        self.register_buffer("latent_std", torch.tensor(float(latent_scale or 1.0)))
        channels, size = self.target_shape()
        self.network = DiT(channels, size, patch_size, width, depth, num_heads, mlp_ratio,
                           cross_attention=condition is not None, stem_channels=stem_channels,
                           head_channels=head_channels)
        self.embedder = ConditionTokens(self._condition_encoder(), width, cond_drop) if condition else None

    # --- networks -----------------------------------------------------------------------------
    def _condition_encoder(self) -> nn.Module:
        hp, name = self.hparams, self.condition
        shared = {"num_layers": hp.condition_layers, "num_heads": hp.num_heads}
        modality = get_modality(name)
        if modality_networks.has_token_encoder(modality):  # audio frames, image or video patches
            encoder: nn.Module = modality_networks.token_encoder(
                modality, self.data_spec, hp.width, patch_size=hp.condition_patch_size, n_mels=hp.n_mels,
                frames=hp.audio_frames, **shared)
        elif name == "text":  # DiT's own caption encoder (the modality's is the Aligner's pooled one)
            encoder = TextTokenEncoder(self.spec("vocab_size"), self.spec("max_text_length"), hp.width, **shared)
        else:  # a label: one learned token per class
            encoder = nn.Embedding(self.spec("num_classes"), hp.width)
        return TokensOf(name, encoder)

    def _load_vqvae(self) -> nn.Module:
        """The frozen autoencoder: rebuilt from ``vqvae_config`` (weights from this model's
        state_dict), or loaded from ``vqvae_checkpoint`` (as the TokenTransformer loads its stage 1)."""
        from mmgen_lightning.models.vqvae import VQVAE

        hp = self.hparams
        if hp.vqvae_config is not None:
            vqvae = VQVAE(**hp.vqvae_config)
        else:
            vqvae = load_generator(hp.vqvae_checkpoint)
            if not isinstance(vqvae, VQVAE) or vqvae.modality != self.output:
                raise ValueError(f"vqvae_checkpoint: {hp.vqvae_checkpoint} holds a {type(vqvae).__name__} "
                                 "that is not an image VQVAE; train one with a configs/vqvae recipe")
            self.hparams["vqvae_config"] = {k: v for k, v in vqvae.hparams.items() if not k.startswith("_")}
        for key in ("image_size", "image_channels"):
            if vqvae.spec(key) != self.spec(key):
                raise ValueError(f"vqvae_checkpoint: the VQVAE was trained with {key}={vqvae.spec(key)}, "
                                 f"this data has {key}={self.spec(key)}")
        return vqvae.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "FlowMatching":
        super().train(mode)
        if self.vqvae is not None:
            self.vqvae.eval()  # frozen: its norms stay in inference mode
        return self

    def target_shape(self) -> tuple[int, tuple[int, int]]:
        """Channels and ``(H, W)`` of what the flow generates (``x1``)."""
        if self.log_mel is not None:
            return 1, (self.log_mel.n_mels, self.log_mel.frames)
        if self.vqvae is not None:
            side = self.spec("image_size") // self.vqvae.hparams.downsample
            return self.vqvae.quantizer.dim, (side, side)
        return self.spec("image_channels"), (self.spec("image_size"),) * 2

    # --- what the flow sees -------------------------------------------------------------------
    def to_target(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The output modality -> ``x1``: the image ``B,C,H,W`` in [-1, 1], the scaled log-mel
        ``B,1,n_mels,frames``, or VQVAE latents ``B,D,h,w`` divided by ``latent_std``."""
        if self.log_mel is not None:
            return self.log_mel(batch[self.output]).unsqueeze(1)
        if self.vqvae is not None:
            with torch.no_grad():
                return self.vqvae.encoder(batch[self.output]) / self.latent_std
        return batch[self.output]

    def from_target(self, x1: Tensor) -> Tensor:
        """``x1`` -> the output modality: ``image: B,C,H,W`` in [-1, 1] or ``audio: B,T`` in [-1, 1]."""
        if self.log_mel is not None:
            return self.log_mel.invert(x1.squeeze(1).float())
        if self.vqvae is not None:
            quantized = self.vqvae.quantizer(x1 * self.latent_std).quantized
            return self.vqvae.decoder(quantized).float().clamp(-1, 1)
        return x1.float().clamp(-1, 1)

    def velocity(self, x: Tensor, t: Tensor, conditions: Mapping[str, Tensor],
                 force_drop: Tensor | None = None) -> Tensor:
        """``v(x_t, t, c)``: ``x: B,C,H,W`` (``x1``'s shape), ``t: B`` in [0, 1]; ``force_drop: bool B``
        asks for the null condition (training drops at random by itself)."""
        if self.embedder is None:
            return self.network(x, t)
        if force_drop is not None and force_drop.shape[0] != x.shape[0]:
            raise ValueError("force_drop must have one entry per sample")
        context, mask, pooled = self.embedder(conditions, force_drop)
        return self.network(x, t, pooled, context, mask)

    def condition_inputs(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {key: batch[key] for name in self.condition_modalities for key in get_modality(name).keys()}

    # --- objective ----------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        x1 = self.to_target(batch)
        x0 = torch.randn(x1.shape, device=x1.device, dtype=x1.dtype, generator=generator)
        hp = self.hparams
        t = sample_time(x1.shape[0], hp.time_density, hp.logit_normal_mean, hp.logit_normal_std, x1.device, generator)
        x_t, _ = straight_path(x0, x1, t)
        return flow_matching_loss(self.velocity(x_t, t, self.condition_inputs(batch)), x0, x1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        if self._logging_step():
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # the same noise and times every epoch, so the curve shows learning rather than draws
        generator = torch.Generator(self.device).manual_seed(batch_idx)
        self.log("val/loss", self.loss(batch, generator), prog_bar=True, sync_dist=True)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        generator = torch.Generator(self.device).manual_seed(batch_idx)
        self.log("test/loss", self.loss(batch, generator), sync_dist=True)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.vqvae is not None and self.hparams.latent_scale is None:
            self.measure_latent_scale()

    @torch.no_grad()
    def measure_latent_scale(self, items: int = 256) -> None:
        """Set ``latent_std`` from the first ``items`` training images (the same on every rank: the
        data is deterministic), and store it in the hyper-parameters for the checkpoint."""
        dataset = self.trainer.datamodule.dataset("train")
        images = torch.stack([dataset[i]["image"] for i in range(min(items, len(dataset)))]).to(self.device)
        scale = float(self.vqvae.encoder(images).float().std().clamp_min(1e-6))
        self.latent_std.fill_(scale)
        self.hparams["latent_scale"] = scale

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        warmup = max(1, hp.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- sampling -----------------------------------------------------------------------------
    def serves(self, sources: tuple[str, ...], target: str) -> bool:
        return target == self.output and set(sources) == set(self.condition_modalities)

    def check_guidance(self, guidance_scale: float) -> None:
        if guidance_scale != 1.0 and self.embedder is None:
            raise ValueError(f"guidance_scale: {guidance_scale} needs a condition; this model is unconditional "
                             "(use --guidance_scale 1)")
        if guidance_scale != 1.0 and self.embedder.drop_prob == 0:
            raise ValueError(f"guidance_scale: {guidance_scale} needs a trained null condition, but this model was "
                             "trained with cond_drop=0; use --guidance_scale 1 or train with cond_drop > 0")

    def sample(self, conditions: dict[str, Tensor], num_samples: int, targets: list[str], steps: int | None = None,
               guidance_scale: float | None = None, guidance_start: float | None = None,
               guidance_stop: float | None = None, sampler: str | None = None, seed: int | None = None,
               return_target: bool = False) -> dict[str, Tensor]:
        """Integrate the ODE from noise: ``image: B,C,H,W`` in [-1, 1] or ``audio: B,T``.

        Args:
            steps: solver steps (default: the ``steps`` the model was built with).
            guidance_scale: classifier-free guidance ``w`` (1 = the conditional velocity alone).
            guidance_start, guidance_stop: the times ``t`` (0 = noise, 1 = data) between which guidance
                applies; the conditional velocity alone outside them.
            sampler: ``euler`` or ``heun``.
            seed: makes the noise reproducible without touching the global random state.
            return_target: also return what the flow generated (pixels, log-mel or latents) as ``"target"``.
        """
        hp = self.hparams
        steps = hp.steps if steps is None else steps
        guidance_scale = hp.guidance_scale if guidance_scale is None else guidance_scale
        sampler = sampler or hp.sampler
        interval = (hp.guidance_start if guidance_start is None else guidance_start,
                    hp.guidance_stop if guidance_stop is None else guidance_stop)
        if not 0.0 <= interval[0] <= interval[1] <= 1.0:
            raise ValueError(f"guidance_start/guidance_stop: need 0 <= start <= stop <= 1, got {interval}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1 (--steps), got {steps}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler: unknown {sampler!r}; allowed: {', '.join(SAMPLERS)}")
        self.check_guidance(guidance_scale)
        channels, size = self.target_shape()
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        x0 = torch.randn(num_samples, channels, *size, device=self.device, generator=generator)
        velocity = guided(lambda x, t, drop: self.velocity(x, t, conditions if drop is None else
                                                           {k: torch.cat([v, v]) for k, v in conditions.items()},
                                                           drop), guidance_scale, interval)
        x1 = SAMPLERS[sampler](velocity, x0, steps)
        out = {self.output: self.from_target(x1)}
        if return_target:
            out["target"] = x1
        return out

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        conditions = self.condition_inputs(batch)
        return self.sample(conditions, len(batch[self.output]), [self.output])

    # --- likelihood ---------------------------------------------------------------------------
    def log_likelihood(self, batch: Mapping[str, Tensor], likelihood_steps: int | None = None,
                       hutchinson_samples: int | None = None, seed: int = 0) -> Likelihood | None:
        """``log p(x1 | c)`` per sample (``B`` float64 nats) through the probability-flow ODE, with
        ``dims`` the pixels of the output (log-mel bins for audio). ``None`` in latent space: the
        density of latents is not one of the pixels."""
        if self.vqvae is not None:
            return None
        steps = likelihood_steps or self.hparams.likelihood_steps
        probes = hutchinson_samples or self.hparams.hutchinson_samples
        x1 = self.to_target(batch).float()
        conditions = self.condition_inputs(batch)
        generator = torch.Generator(self.device).manual_seed(seed)
        was_training = self.training
        self.eval()
        try:
            log_prob = ode_log_likelihood(lambda x, t: self.velocity(x, t, conditions), x1, steps, probes, generator)
        finally:
            self.train(was_training)
        dims = torch.full_like(log_prob, float(x1[0].numel()))
        return Likelihood("ode", log_prob, dims)

    # --- attention ----------------------------------------------------------------------------
    @torch.no_grad()
    def cross_attention_maps(self, conditions: Mapping[str, Tensor], x: Tensor, t: float = 0.5,
                             layer: int | None = None) -> Tensor:
        """Where each output patch looks in the condition: ``B,h*w,N`` (rows sum to 1; mean over heads,
        and over blocks unless ``layer`` picks one) for ``x: B,C,H,W`` (``x1``'s shape, e.g. a sample)
        taken to time ``t`` of the path with fresh noise."""
        if self.embedder is None:
            raise ValueError("cross_attention_maps: this model is unconditional")
        noise = torch.randn_like(x)
        x_t, _ = straight_path(noise, x, torch.full((x.shape[0],), t, device=x.device))
        self.network.keep_cross_attention(True)
        try:
            self.velocity(x_t, torch.full((x.shape[0],), t, device=x.device), conditions)
            maps = torch.stack([block.cross_attention.weights for block in self.network.blocks])  # layers,B,H,N,M
        finally:
            self.network.keep_cross_attention(False)
        maps = maps[layer] if layer is not None else maps.mean(0)
        return maps.mean(1)
