"""Captioner: an image, audio or video encoder and a causal text decoder that cross-attends to it,
trained by likelihood (teacher-forced token cross-entropy, ``objectives/captioner.py``).

The decoder is a GPT-2 block stack from ``transformers``, built from a config (random weights,
nothing downloaded) with ``add_cross_attention=True`` and fed the encoder's tokens through
``encoder_hidden_states``, plus their mean (projected, zero at initialisation) added to every
token embedding, which lets training find the condition far sooner (see
``layers/caption_decoder.py``). It is used rather than a hand-written decoder because its KV cache
(self- and cross-attention) and ``generate()`` (greedy, beam search, temperature/top-k/top-p
sampling, repetition penalty, n-gram blocking, min/max length, length penalty, batching) are
well tested; ``tests/models/test_captioner.py`` checks that the cached and uncached paths, the
masks and the beams agree with this model's own teacher-forced likelihood.

Directions: ``image->text``, ``audio->text`` or ``video->text`` (one condition modality per model).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.text import BLEUScore, CHRFScore, Perplexity
from transformers import GenerationConfig, GPT2Config

from mmgen_lightning.config import ConfigGroup, build_groups
from mmgen_lightning.knobs import KNOWN_KNOBS, family_knobs
from mmgen_lightning.modalities import get_modality
from mmgen_lightning.models.base import GenerativeModule, LegacyLayout, Likelihood, scored_dimensions
from mmgen_lightning.models.layers import modality_networks
from mmgen_lightning.models.layers.caption_decoder import ConditionedGPT2
from mmgen_lightning.models.layers.token_encoders import STEMS, PretrainedImageEncoder
from mmgen_lightning.models.optim import Optimization
from mmgen_lightning.objectives.captioner import (IGNORE_INDEX, CaptionerObjective, captioning_objective,
                                                  next_token_targets, token_statistics)
from mmgen_lightning.tokenizer import BOS_ID, EOS_ID, PAD_ID

CAPTION_MODALITIES = ("image", "audio", "video")
CaptionParser = Callable[[str], "dict[str, Any] | None"]


# --- options --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CaptionerNetwork(ConfigGroup):
    """Sizes of the encoder and the decoder.

    Args:
        width: token size of the encoder and the decoder.
        encoder_layers: transformer layers of the encoder (space-time layer pairs for video).
        decoder_layers: GPT-2 blocks (self-attention, cross-attention, MLP) of the decoder.
        num_heads: attention heads everywhere.
        patch_size: stride of the image/video conv stem: one token per ``p x p`` pixels.
        n_mels: mel bands of the audio frontend.
        audio_frames: about how many log-mel frames (audio tokens) a clip gives.
        glimpse_size: video only: tokenise a ``glimpse_size`` window of each frame centred on its
            centre of brightness, plus the window's track, instead of the whole frame (see
            ``VideoTokenEncoder``); for clips of one object moving over a larger canvas.
        dropout: dropout of encoder and decoder.
        max_positions: decoder positions (caption length, ``[BOS]`` included); default: the
            datamodule's ``max_text_length``.
        stem: image only: the first layers, ``"conv"`` (a small CNN, best for strokes at 16-32 px) or
            ``"patch"`` (a linear embedding of each patch: several times faster at 64 px).
    """

    section = "network"
    width: int = 64
    encoder_layers: int = 2
    decoder_layers: int = 2
    num_heads: int = 4
    patch_size: int = 4
    n_mels: int = 64
    audio_frames: int = 32
    glimpse_size: int | None = None
    dropout: float = 0.1
    max_positions: int | None = None
    stem: str = "conv"

    def check(self) -> None:
        for name in ("width", "decoder_layers", "num_heads", "patch_size", "n_mels", "audio_frames"):
            self.require(getattr(self, name) >= 1, name, "must be >= 1")
        self.require(self.encoder_layers >= 0, "encoder_layers", "must be >= 0")
        self.require(self.width % self.num_heads == 0, "width", f"must be divisible by num_heads ({self.num_heads})")
        self.require(self.glimpse_size is None or self.glimpse_size >= 1, "glimpse_size", "must be >= 1 or null")
        self.require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        self.require(self.stem in STEMS, "stem", f"must be one of {', '.join(STEMS)}")
        self.require(self.max_positions is None or self.max_positions >= 2, "max_positions", "must be >= 2 or null")


@dataclasses.dataclass(frozen=True)
class CaptionerSampling(ConfigGroup):
    """Defaults of the sampling knobs (each can be given to ``generate``/``mmgen generate``; see
    :meth:`Captioner.sample` for what each does). The defaults decode greedily."""

    section = "sampling"
    num_beams: int = 1
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    min_new_tokens: int = 0
    max_new_tokens: int | None = None

    def check(self) -> None:
        for name in self.field_names():  # the ranges generate() checks the knobs against
            problem = KNOWN_KNOBS[name].problem(getattr(self, name))
            self.require(problem is None, name, problem or "")
        self.require(self.max_new_tokens is None or self.min_new_tokens <= self.max_new_tokens, "min_new_tokens",
                     f"must be <= max_new_tokens ({self.max_new_tokens})")


@dataclasses.dataclass(frozen=True)
class CaptionerValidation(ConfigGroup):
    """How validation and test score the captions the model writes.

    Args:
        num_beams: beam width of the captions scored (1 = greedy).
        bleu_n_gram: longest n-gram of BLEU; BLEU is 0 for captions shorter than it, so give 2 or 3
            for captions of a few words.
        scored_attributes: attributes a caption must state right to count in ``all_attributes_correct``
            (for example without ``motion`` for still images); default: every attribute the reference
            caption states.
    """

    section = "validation"
    num_beams: int = 1
    bleu_n_gram: int = 4
    scored_attributes: tuple[str, ...] | None = None

    def check(self) -> None:
        self.require(self.num_beams >= 1, "num_beams", "must be >= 1")
        self.require(self.bleu_n_gram >= 1, "bleu_n_gram", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class PretrainedPart(ConfigGroup):
    """A pretrained ``transformers`` part from a local ``save_pretrained`` folder (never downloaded).

    Args:
        path: the local folder.
        freeze: keep its pretrained weights fixed.
        config: filled in from the folder when the model is built; lets a checkpoint rebuild the part
            without the folder. Leave unset.
    """

    path: str | None = None
    freeze: bool = True
    config: dict[str, Any] | None = None
    # that path or config is given is checked by Captioner: ConfigGroup.build lays a mapping over the
    # group's own defaults, which must therefore pass check()


@dataclasses.dataclass(frozen=True)
class PretrainedImageEncoderPart(PretrainedPart):
    """A vision backbone (ViT, DeiT, ConvNeXt, ...) used as the image encoder instead of the conv-stem
    transformer; ``freeze`` keeps the backbone fixed (its projection still trains)."""

    section = "image_encoder"


@dataclasses.dataclass(frozen=True)
class PretrainedTextDecoderPart(PretrainedPart):
    """A GPT-2 model whose vocabulary is the datamodule's tokenizer (for example a caption LM): its blocks
    initialise the decoder and new cross-attention layers are added; ``freeze`` trains only those."""

    section = "text_decoder"


@dataclasses.dataclass(frozen=True)
class CaptionerConfig:
    """The family's option groups, typed (``self.config``)."""

    network: CaptionerNetwork
    objective: CaptionerObjective
    optimization: Optimization
    sampling: CaptionerSampling
    validation: CaptionerValidation
    image_encoder: PretrainedImageEncoderPart | None
    text_decoder: PretrainedTextDecoderPart | None


def _legacy_pretrained(flat: dict[str, Any]) -> dict[str, Any]:
    """The flat layout spelt an unused pretrained part as ``<part>_path: null``; the block's absence says it now."""
    flat = dict(flat)
    for path, freeze, config in (("image_encoder_path", "freeze_image_encoder", "image_encoder_config"),
                                 ("text_decoder_path", "freeze_text_decoder", "text_decoder_config")):
        if not (flat.get(path) or flat.get(config)):
            for key in (path, freeze, config):
                flat.pop(key, None)
    return flat


# --- the family -----------------------------------------------------------------------------------
class Captioner(GenerativeModule):
    """Image, audio or video -> text: an encoder and a causal GPT-2 decoder that cross-attends to it.

    Args:
        data_spec: sizes from the datamodule (linked by the CLI).
        modality: the condition, one of ``image``, ``audio``, ``video``; default: the first of them
            the data carries.
        network: sizes of the encoder and the decoder (:class:`CaptionerNetwork`).
        objective: label smoothing and shift augmentation
            (:class:`~mmgen_lightning.objectives.captioner.CaptionerObjective`).
        optimization: AdamW without decay on biases, norms and positions, a linear warm-up, then a cosine
            to 10% of the rate over the run when the trainer knows its length
            (:class:`~mmgen_lightning.models.optim.Optimization`); a beta2 below 0.999 adapts faster early
            on, which shortens the plateau before the decoder starts to use the condition.
        sampling: defaults of the sampling knobs (:class:`CaptionerSampling`).
        validation: how validation and test score decoded captions (:class:`CaptionerValidation`).
        image_encoder: a pretrained vision backbone as the image encoder (:class:`PretrainedImageEncoderPart`);
            ``None``: the modality's conv-stem transformer.
        text_decoder: a pretrained GPT-2 as the decoder (:class:`PretrainedTextDecoderPart`); ``None``: a
            fresh one of ``network``'s sizes.
    """

    #: the keyword arguments of :meth:`sample` and their ranges, checked by ``generate`` before decoding
    sampling_knobs = family_knobs("num_beams", "temperature", "top_k", "top_p", "repetition_penalty",
                                  "no_repeat_ngram_size", "length_penalty", "min_new_tokens", "max_new_tokens",
                                  "use_cache", "seed")
    no_decay = ("position", "wpe")
    legacy = LegacyLayout(
        groups={"network": CaptionerNetwork, "objective": CaptionerObjective, "optimization": Optimization},
        renamed={"val_num_beams": "validation.num_beams", "bleu_n_gram": "validation.bleu_n_gram",
                 "scored_attributes": "validation.scored_attributes", "image_encoder_path": "image_encoder.path",
                 "freeze_image_encoder": "image_encoder.freeze", "image_encoder_config": "image_encoder.config",
                 "text_decoder_path": "text_decoder.path", "freeze_text_decoder": "text_decoder.freeze",
                 "text_decoder_config": "text_decoder.config"},
        adjust=_legacy_pretrained)

    def __init__(self, data_spec: dict[str, Any] | None = None, modality: str | None = None,
                 network: CaptionerNetwork = CaptionerNetwork(), objective: CaptionerObjective = CaptionerObjective(),
                 optimization: Optimization = Optimization(lr=1e-3, betas=(0.9, 0.98), weight_decay=0.01,
                                                           warmup_steps=100, schedule="cosine"),
                 sampling: CaptionerSampling = CaptionerSampling(),
                 validation: CaptionerValidation = CaptionerValidation(),
                 image_encoder: PretrainedImageEncoderPart | None = None,
                 text_decoder: PretrainedTextDecoderPart | None = None) -> None:
        super().__init__(data_spec)
        self.save_hyperparameters()
        self.config = CaptionerConfig(**build_groups(
            Captioner.__init__, network=network, objective=objective, optimization=optimization, sampling=sampling,
            validation=validation, image_encoder=image_encoder, text_decoder=text_decoder))
        carried = [m for m in CAPTION_MODALITIES if m in self.data_spec.get("modalities", CAPTION_MODALITIES)]
        self.modality = modality or (carried[0] if carried else "")
        if self.modality not in CAPTION_MODALITIES:
            raise ValueError(f"modality: unknown {modality!r}; allowed: {', '.join(CAPTION_MODALITIES)}")
        condition, net = get_modality(self.modality), self.config.network
        if self.config.objective.shift_augment and not condition.pixels:
            raise ValueError(f"objective.shift_augment must be 0 for {self.modality!r}, "
                             f"got {self.config.objective.shift_augment}")
        if net.glimpse_size is not None and not condition.frames:
            raise ValueError(f"network.glimpse_size is only used with modality 'video', not {self.modality!r}")
        for part in (self.config.image_encoder, self.config.text_decoder):
            if part is not None and not (part.path or part.config):
                raise ValueError(f"{part.section}.path must name a local save_pretrained folder, got {part.path!r}")
        if self.config.image_encoder is not None and self.modality != "image":
            raise ValueError(f"image_encoder is only used with modality 'image', not {self.modality!r}")
        self.declare_direction(self.modality, "text")  # the data must carry both: one line at init, not a KeyError later
        self.encoder = self.build_encoder()
        self.decoder = self.build_decoder()
        # encoder tokens enter every cross-attention at the decoder's width
        decoder_width = self.decoder.config.n_embd
        self.to_memory = nn.Identity() if decoder_width == net.width else nn.Linear(net.width, decoder_width)
        self.summarize = nn.Linear(decoder_width, decoder_width)
        nn.init.zeros_(self.summarize.weight)  # the decoder starts as plain GPT-2 with cross-attention
        nn.init.zeros_(self.summarize.bias)
        self.parse_caption: CaptionParser | None = None
        bleu_n_gram = self.config.validation.bleu_n_gram
        self.metrics = nn.ModuleDict({stage: nn.ModuleDict({
            "perplexity": Perplexity(ignore_index=IGNORE_INDEX), "bleu": BLEUScore(n_gram=bleu_n_gram, smooth=True),
            "chrf": CHRFScore(), "all_attributes_correct": MeanMetric()}) for stage in ("val", "test")})

    # --- networks -----------------------------------------------------------------------------
    def build_encoder(self) -> nn.Module:
        """The condition's token encoder, or a pretrained vision backbone (``image_encoder``)."""
        net, pretrained = self.config.network, self.config.image_encoder
        if pretrained is not None:
            encoder = PretrainedImageEncoder(pretrained.path, net.width, pretrained.freeze, pretrained.config)
            self.hparams["image_encoder"]["config"] = encoder.config_dict  # the checkpoint rebuilds it alone
            return encoder
        return modality_networks.token_encoder(
            get_modality(self.modality), self.data_spec, net.width, num_layers=net.encoder_layers,
            num_heads=net.num_heads, dropout=net.dropout, patch_size=net.patch_size, glimpse_size=net.glimpse_size,
            n_mels=net.n_mels, frames=net.audio_frames, stem=net.stem)

    def build_decoder(self) -> ConditionedGPT2:
        """A fresh GPT-2 with cross-attention, or a pretrained one (``text_decoder``) with it added."""
        net, pretrained = self.config.network, self.config.text_decoder
        vocab_size, positions = self.spec("vocab_size"), net.max_positions or self.spec("max_text_length")
        if pretrained is None:
            return ConditionedGPT2(GPT2Config(
                vocab_size=vocab_size, n_positions=positions, n_embd=net.width, n_layer=net.decoder_layers,
                n_head=net.num_heads, resid_pdrop=net.dropout, embd_pdrop=net.dropout, attn_pdrop=net.dropout,
                add_cross_attention=True, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID))
        if pretrained.config is not None:
            decoder = ConditionedGPT2(GPT2Config.from_dict(pretrained.config))
        else:
            decoder = load_local_gpt2(pretrained.path)
            self.hparams["text_decoder"]["config"] = decoder.config.to_dict()
        if decoder.config.vocab_size != vocab_size:
            raise ValueError(f"text_decoder.path: the decoder has {decoder.config.vocab_size} tokens but the "
                             f"datamodule's tokenizer has {vocab_size}; use the tokenizer the decoder was trained "
                             "with (the datamodule's tokenizer_path)")
        if decoder.config.n_positions < positions:
            raise ValueError(f"text_decoder.path: the decoder has {decoder.config.n_positions} positions, "
                             f"captions need {positions}")
        if pretrained.freeze:  # only the new cross-attention layers learn
            for name, parameter in decoder.named_parameters():
                parameter.requires_grad = "crossattention" in name or "ln_cross_attn" in name
        return decoder

    def encode(self, conditions: Mapping[str, Tensor]) -> Tensor:
        """The condition (``image: B,C,H,W`` / ``audio: B,T`` / ``video: B,F,C,H,W``, all in [-1, 1])
        -> memory tokens ``B,N,D`` for cross-attention."""
        return self.to_memory(self.encoder(conditions[self.modality]))

    def decoder_inputs(self, conditions: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """What the decoder reads of the condition: memory tokens ``B,N,D`` and their summary ``B,D``."""
        memory = self.encode(conditions)
        return {"encoder_hidden_states": memory, "condition": self.summarize(memory.mean(1))}

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Teacher-forced logits ``B,L-1,V``: row ``t`` predicts ``text[:, t+1]`` from ``text[:, :t+1]``
        (``text: long B,L``, ``text_mask: bool B,L``) and the condition."""
        return self.decoder(input_ids=batch["text"][:, :-1], attention_mask=batch["text_mask"][:, :-1].long(),
                            use_cache=False, **self.decoder_inputs(batch)).logits

    # --- objective ----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        world = self._trainer.world_size if self._trainer is not None else 1
        mean_over_processes = (lambda count: self.all_gather(count).mean()) if world > 1 else None
        terms = captioning_objective(self, batch, self.modality, self.config.objective, mean_over_processes)
        if self._logging_step():  # only the batches whose metrics Lightning writes
            nll, accuracy = token_statistics(terms["logits"].detach(), terms["targets"])
            self.log("train/loss", terms["loss"], prog_bar=True)
            self.log("train/perplexity", nll.exp())
            self.log("train/token_accuracy", accuracy)
        return terms["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluate_batch(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluate_batch(batch, "test")

    def evaluate_batch(self, batch: dict[str, Tensor], stage: str) -> None:
        """Perplexity and token accuracy under teacher forcing; BLEU, chrF and (for data with a
        caption parser) the share of captions stating every attribute right, on decoded captions."""
        metrics, options = self.metrics[stage], self.config.validation
        logits, targets = self(batch).float(), next_token_targets(batch)
        nll, accuracy = token_statistics(logits, targets)
        metrics["perplexity"].update(logits, targets)
        self.log(f"{stage}/loss", nll, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/perplexity", metrics["perplexity"])
        self.log(f"{stage}/token_accuracy", accuracy, sync_dist=True)
        if self.tokenizer is None:
            return
        generated = self.sample({self.modality: batch[self.modality]}, len(batch["text"]), ["text"],
                                num_beams=options.num_beams)["text"]
        hypotheses, references = self.tokenizer.decode(generated.cpu()), self.tokenizer.decode(batch["text"].cpu())
        metrics["bleu"].update(hypotheses, [[reference] for reference in references])
        metrics["chrf"].update(hypotheses, [[reference] for reference in references])
        self.log(f"{stage}/bleu", metrics["bleu"])
        self.log(f"{stage}/chrf", metrics["chrf"])
        if self.parse_caption is not None:
            correct = states_every_attribute(hypotheses, references, self.parse_caption, options.scored_attributes)
            if correct.numel():
                metrics["all_attributes_correct"].update(correct.float().to(self.device))
                self.log(f"{stage}/all_attributes_correct", metrics["all_attributes_correct"])

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.parse_caption is None:
            self.parse_caption = find_caption_parser(getattr(self.trainer, "datamodule", None))

    # --- sampling -----------------------------------------------------------------------------
    def serves(self, sources: tuple[str, ...], target: str) -> bool:
        return target in self.output_modalities and set(sources) == set(self.condition_modalities)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self.generate({self.modality: batch[self.modality]}, len(batch[self.modality]), ["text"])

    def sample(self, conditions: dict[str, Tensor], num_samples: int, targets: list[str], num_beams: int = 1,
               temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
               repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0, length_penalty: float = 1.0,
               min_new_tokens: int = 0, max_new_tokens: int | None = None, use_cache: bool = True,
               seed: int | None = None) -> dict[str, Tensor]:
        """Caption the condition: ``text: long B,L`` (``[BOS] ... [EOS] [PAD]...``, padded to the
        tokenizer's ``L`` or longer if ``max_new_tokens`` asks) and ``text_mask: bool B,L``.

        Args:
            num_beams: beam width (1 = no beam search).
            temperature: 0 decodes the most likely tokens (greedy, or beam search); above 0 samples.
            top_k: keep only the ``k`` most likely tokens when sampling.
            top_p: keep only the smallest set of tokens whose probability mass reaches ``p`` when sampling.
            repetition_penalty: divides the logits of tokens already generated (> 1 discourages repeats).
            no_repeat_ngram_size: forbid any n-gram of this size from occurring twice (0 = off).
            length_penalty: beam scores are divided by ``length ** length_penalty`` (> 0 favours
                longer captions).
            min_new_tokens: ``[EOS]`` is forbidden before this many tokens.
            max_new_tokens: at most this many tokens after ``[BOS]`` (``[EOS]`` included); default:
                fill the tokenizer's ``L``.
            use_cache: reuse keys/values of earlier positions (the KV cache); False recomputes them.
            seed: makes sampling reproducible without touching the global random state.
        """
        positions = self.decoder.config.n_positions
        if max_new_tokens is None:
            max_new_tokens = min(positions, self.spec("max_text_length")) - 1
        # the fixed ranges are sampling_knobs', checked by generate(); these two depend on the model
        checks = {"max_new_tokens": (max_new_tokens, 1 <= max_new_tokens <= positions - 1, f"in [1, {positions - 1}]"),
                  "min_new_tokens": (min_new_tokens, 0 <= min_new_tokens <= max_new_tokens, "in [0, max_new_tokens]")}
        for name, (value, valid, allowed) in checks.items():
            if not valid:
                raise ValueError(f"{name} must be {allowed}, got {value}")
        knobs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens,
                                 "num_beams": num_beams, "do_sample": temperature > 0, "use_cache": use_cache,
                                 "repetition_penalty": repetition_penalty,
                                 "no_repeat_ngram_size": no_repeat_ngram_size,
                                 "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
                                 "suppress_tokens": [PAD_ID, BOS_ID]}  # never inside a caption
        if num_beams > 1:
            knobs.update(length_penalty=length_penalty, early_stopping=True)
        if temperature > 0:
            knobs.update(temperature=temperature, top_k=top_k, top_p=top_p)
        inputs = self.decoder_inputs(conditions)
        start = torch.full((num_samples, 1), BOS_ID, dtype=torch.long, device=self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            ids = self.decoder.generate(input_ids=start, attention_mask=torch.ones_like(start),
                                        generation_config=GenerationConfig(**knobs), **inputs)
        length = max(self.spec("max_text_length"), ids.shape[1])
        text = F.pad(ids, (0, length - ids.shape[1]), value=PAD_ID)
        return {"text": text, "text_mask": text != PAD_ID}

    @torch.no_grad()
    def log_likelihood(self, batch: Mapping[str, Tensor]) -> Likelihood:
        """The exact ``log p(text | condition)`` per sample, summed over real tokens after ``[BOS]``."""
        logits, targets = self(batch).float(), next_token_targets(batch)
        log_probs = -F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
        return Likelihood("exact", log_probs.sum(1).double(), scored_dimensions(batch, ["text"]))

    @torch.no_grad()
    def cross_attention_maps(self, conditions: Mapping[str, Tensor], text: Tensor, layer: int | None = None) -> Tensor:
        """Where the decoder looks: ``B,L-1,N`` attention over the condition's ``N`` tokens (fold them
        with ``self.encoder.grid`` after ``self.encoder.num_prefix_tokens``) when predicting
        ``text[:, t+1]``; mean over heads, and over layers unless ``layer`` picks one. Rows sum to 1.
        """
        text_mask = text != PAD_ID
        text_mask[:, 0] = True
        implementation = self.decoder.config._attn_implementation
        # fused attention kernels never materialise the weights, so only the eager path can return them
        self.decoder.set_attn_implementation("eager")
        try:
            out = self.decoder(input_ids=text[:, :-1], attention_mask=text_mask[:, :-1].long(), output_attentions=True,
                               use_cache=False, **self.decoder_inputs(conditions))
        finally:
            self.decoder.set_attn_implementation(implementation)
        maps = torch.stack(out.cross_attentions).float()  # layers,B,heads,L-1,N
        maps = maps[layer] if layer is not None else maps.mean(0)
        return maps.mean(1)


def states_every_attribute(hypotheses: list[str], references: list[str], parse_caption: CaptionParser,
                           attributes: list[str] | None = None) -> Tensor:
    """``bool`` per scorable caption: the generated caption states every attribute the reference
    states (only ``attributes`` when given) with the same value. References the parser cannot read
    are skipped, so the result may be shorter than the batch."""
    correct = []
    for hypothesis, reference in zip(hypotheses, references):
        truth = parse_caption(reference)
        if not truth:
            continue
        said = parse_caption(hypothesis) or {}
        names = [name for name in truth if attributes is None or name in attributes]
        correct.append(all(said.get(name) == truth[name] for name in names))
    return torch.tensor(correct, dtype=torch.bool)


def find_caption_parser(datamodule: Any) -> CaptionParser | None:
    """The datamodule's ``parse_caption(text) -> dict | None`` (a method, or a function of its module)."""
    if datamodule is None:
        return None
    parser = getattr(datamodule, "parse_caption", None)
    if parser is None:
        parser = getattr(importlib.import_module(type(datamodule).__module__), "parse_caption", None)
    return parser if callable(parser) else None


def load_local_gpt2(path: str) -> ConditionedGPT2:
    """A GPT-2 decoder from a local ``save_pretrained`` folder, with cross-attention layers added."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text_decoder.path: {folder} is not a local transformers model folder "
                                "(no config.json); save one with model.save_pretrained(folder)")
    config = GPT2Config.from_pretrained(str(folder), local_files_only=True)
    if config.model_type != "gpt2":
        raise ValueError(f"text_decoder.path: {folder} holds a {config.model_type!r} model; allowed: 'gpt2'")
    config.add_cross_attention = True
    return ConditionedGPT2.from_pretrained(str(folder), config=config, local_files_only=True)
