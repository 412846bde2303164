"""TokenTransformer: stage 2 of the two-stage (DALL-E / Chameleon) recipe. One decoder-only
transformer models a single token stream of caption tokens and the stage-1 :class:`VQVAE`'s codes,
in both orders (:class:`~mmgen_lightning.tokenizer.TokenLayout`), so the same weights do text -> image and
image -> text (or text <-> audio, with an audio VQVAE).

The objective (``objectives/tokens.py``) is next-token cross-entropy on the text and code slots, the
mean of each weighted by ``objective.loss_weights``; ``val/image_bits_per_dim`` is the NLL of the codes
given the caption in bits per code. Rows whose condition was dropped (``objective.condition_dropout``)
teach the unconditional model that classifier-free guidance needs.

The network (:class:`~mmgen_lightning.models.layers.token_stream.StreamTransformer`) is ``transformers``'
GPT-2 block stack fed ``inputs_embeds`` (token + modality + 1-D text / 2-D code positions); its KV cache
serves sampling. The sampling loop is written here and not left to ``generate()`` because each step
restricts the vocabulary to the segment being written and mixes a conditional and an unconditional
pass (guidance); the per-token warpers (temperature, top-k, top-p) are ``transformers``' own.

The stage-1 VQVAE is given by checkpoint path (``vqvae_checkpoint``), loaded with
``weights_only=True`` and frozen; its hyper-parameters are stored as ``vqvae_config`` and its
weights ride in this checkpoint's ``state_dict``, so ``load_generator(stage2.ckpt)`` rebuilds both
stages with no other file and ``generate`` decodes codes back to pixels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache
from transformers.generation import (LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                                     TopPLogitsWarper)

from mmgen_lightning.config import ConfigGroup, build_groups
from mmgen_lightning.knobs import KNOWN_KNOBS, family_knobs
from mmgen_lightning.models.base import GenerativeModule, LegacyLayout, load_generator
from mmgen_lightning.models.layers.token_stream import StreamTransformer
from mmgen_lightning.models.optim import Optimization
from mmgen_lightning.models.vqvae import VQVAE
from mmgen_lightning.modalities import get_modality, random_shift
from mmgen_lightning.objectives.tokens import TokenObjective, token_stream_objective
from mmgen_lightning.tokenizer import TokenLayout


def classifier_free_guidance(conditional: Tensor, unconditional: Tensor, scale: float) -> Tensor:
    """``uncond + scale * (cond - uncond)`` on logits: 1 gives the conditional model, 0 the
    unconditional one, above 1 sharpens towards the condition."""
    return unconditional + scale * (conditional - unconditional)


# --- options --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TokenNetwork(ConfigGroup):
    """Sizes of the stream transformer.

    Args:
        width: transformer width.
        num_layers: GPT-2 blocks.
        num_heads: attention heads.
        dropout: dropout of embeddings, attention and residuals.
    """

    section = "network"
    width: int = 128
    num_layers: int = 4
    num_heads: int = 4
    dropout: float = 0.1

    def check(self) -> None:
        for name in ("width", "num_layers", "num_heads"):
            self.require(getattr(self, name) >= 1, name, "must be >= 1")
        self.require(self.width % self.num_heads == 0, "width", f"must be divisible by num_heads ({self.num_heads})")
        self.require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TokenSampling(ConfigGroup):
    """Defaults of the sampling knobs (each can be given to ``generate``/``mmgen generate``).

    Args:
        temperature: softmax temperature; 0 picks the most likely token. ``None``: 1 for codes, 0
            (greedy) for text.
        top_k: keep only the ``k`` most likely tokens (``None``: all).
        top_p: keep the smallest set of tokens of probability mass ``p`` (``None``: all).
        guidance_scale: classifier-free guidance ``s`` (``None``: no unconditional pass).
        use_cache: reuse keys/values of earlier slots (KV cache).
    """

    section = "sampling"
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float | None = None
    use_cache: bool = True

    def check(self) -> None:
        for name in self.field_names():  # the ranges generate() checks the knobs against
            problem = KNOWN_KNOBS[name].problem(getattr(self, name))
            self.require(problem is None, name, problem or "")


@dataclasses.dataclass(frozen=True)
class TokenConfig:
    """The family's option groups, typed (``self.config``)."""

    network: TokenNetwork
    objective: TokenObjective
    optimization: Optimization
    sampling: TokenSampling


def _legacy_options(flat: dict[str, Any]) -> dict[str, Any]:
    """The flat layout kept the sampling defaults as one dict (the sampling block now), wrote ``null`` for
    the default loss weights, and stored the stage-1 VQVAE's own flat hyper-parameters."""
    flat.update(flat.pop("sampling_defaults", None) or {})
    if flat.get("loss_weights") is None:
        flat.pop("loss_weights", None)
    if flat.get("vqvae_config") is not None:
        flat["vqvae_config"] = VQVAE.legacy.hyperparameters(VQVAE, flat["vqvae_config"])
    return flat


# --- the family -----------------------------------------------------------------------------------
class TokenTransformer(GenerativeModule):
    """One decoder-only transformer over caption tokens and a stage-1 :class:`VQVAE`'s codes, in both
    orders: text -> image and image -> text (or audio) with the same weights.

    Args:
        data_spec: sizes from the datamodule (linked by the CLI).
        vqvae_checkpoint: path of the stage-1 :class:`VQVAE` checkpoint (``mmgen fit`` of a
            ``configs/vqvae`` recipe); read once, when the model is first built.
        vqvae_config: the VQVAE's hyper-parameters, filled in from the checkpoint; lets this
            model's own checkpoint rebuild the VQVAE without the file. Leave unset.
        network: sizes of the stream transformer (:class:`TokenNetwork`).
        objective: loss weights, condition dropout, stream orders, augmentation
            (:class:`~mmgen_lightning.objectives.tokens.TokenObjective`).
        optimization: AdamW (no decay on biases, norms and embeddings) after a linear warm-up, then a
            cosine to 10% when the run length is known (:class:`~mmgen_lightning.models.optim.Optimization`).
        sampling: defaults of the sampling knobs, what ``mmgen generate``/``mmgen evaluate`` use unless
            told (:class:`TokenSampling`).
    """

    #: the keyword arguments of :meth:`sample` and their ranges, checked by ``generate`` before sampling
    sampling_knobs = family_knobs("temperature", "top_k", "top_p", "guidance_scale", "use_cache", "seed")
    no_decay = ("embedding", "wpe")  # the stream's tables and GPT-2's positions
    legacy = LegacyLayout(
        groups={"network": TokenNetwork, "objective": TokenObjective, "optimization": Optimization,
                "sampling": TokenSampling},
        state_keys={"embedding.": "transformer.embedding.", "transformer.": "transformer.blocks.",
                    "head.": "transformer.head."},
        adjust=_legacy_options)

    def __init__(self, data_spec: dict[str, Any] | None = None, vqvae_checkpoint: str | None = None,
                 vqvae_config: dict[str, Any] | None = None, network: TokenNetwork = TokenNetwork(),
                 objective: TokenObjective = TokenObjective(),
                 optimization: Optimization = Optimization(lr=1e-3, betas=(0.9, 0.98), weight_decay=0.01,
                                                           warmup_steps=100, schedule="cosine"),
                 sampling: TokenSampling = TokenSampling()) -> None:
        super().__init__(data_spec)
        self.save_hyperparameters()
        self.config = TokenConfig(**build_groups(TokenTransformer.__init__, network=network, objective=objective,
                                                 optimization=optimization, sampling=sampling))
        self.vqvae = self._load_vqvae()
        self.modality = self.vqvae.modality
        self.condition_modalities = self.output_modalities = ("text", self.modality)
        options = self.config.objective
        if options.shift_augment and not get_modality(self.modality).pixels:
            raise ValueError(f"objective.shift_augment shifts images; it must be 0 for {self.modality!r}, "
                             f"got {options.shift_augment}")
        for name in options.loss_weights:
            if name not in self.output_modalities:
                raise ValueError(f"objective.loss_weights: {name!r} is not a modality of this model; allowed keys: "
                                 f"text, {self.modality}")
        #: the objective's weights of the text and the code segments
        self.loss_weights = {"text": float(options.loss_weights.get("text", 1.0)),
                             "codes": float(options.loss_weights.get(self.modality, 1.0))}
        self.layout = TokenLayout(self.spec("vocab_size"), self.vqvae.num_codes, self.spec("max_text_length"),
                                  self.vqvae.grid)
        net = self.config.network
        self.transformer = StreamTransformer(self.layout, net.width, net.num_layers, net.num_heads, net.dropout,
                                             options.condition_dropout)

    def _load_vqvae(self) -> VQVAE:
        """The frozen stage-1 model: rebuilt from ``vqvae_config`` (its weights then come with this
        model's state_dict), or loaded from ``vqvae_checkpoint``."""
        hp = self.hparams
        if hp.vqvae_config is not None:
            vqvae = VQVAE(**hp.vqvae_config)
        elif hp.vqvae_checkpoint:
            vqvae = load_generator(hp.vqvae_checkpoint)
            if not isinstance(vqvae, VQVAE):
                raise ValueError(f"vqvae_checkpoint: {hp.vqvae_checkpoint} holds a {type(vqvae).__name__}, "
                                 "not a VQVAE; train one with a configs/vqvae recipe")
            self.hparams["vqvae_config"] = {k: v for k, v in vqvae.hparams.items() if not k.startswith("_")}
        else:
            raise ValueError("vqvae_checkpoint: give the path of a stage-1 VQVAE checkpoint")
        if get_modality(vqvae.modality).pixels:  # codes of images: their size and channels must match
            for key in ("image_size", "image_channels"):
                if vqvae.spec(key) != self.spec(key):
                    raise ValueError(f"vqvae_checkpoint: the VQVAE was trained with {key}={vqvae.spec(key)}, "
                                     f"this data has {key}={self.spec(key)}")
        elif vqvae.spec("audio_length") != self.spec("audio_length"):
            raise ValueError(f"vqvae_checkpoint: the VQVAE was trained on audio_length={vqvae.spec('audio_length')}, "
                             f"this data has audio_length={self.spec('audio_length')}")
        return vqvae.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "TokenTransformer":
        super().train(mode)
        self.vqvae.eval()  # frozen: its codebook never updates and its norms stay in inference mode
        return self

    # --- objective ----------------------------------------------------------------------------
    @torch.no_grad()
    def stream(self, batch: Mapping[str, Tensor], codes_first: Tensor) -> Tensor:
        """The batch's caption and the frozen VQVAE's codes as one stream ``long B,S``."""
        return self.layout.build(batch["text"], self.vqvae.encode_codes(dict(batch)), codes_first)

    def losses(self, batch: Mapping[str, Tensor], codes_first: Tensor) -> dict[str, Tensor]:
        """Mean NLL (nats) per scored token of the ``text`` and the ``codes``, and the weighted ``loss``."""
        return token_stream_objective(self.transformer, self.stream(batch, codes_first), codes_first,
                                      self.loss_weights)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        options = self.config.objective
        codes_first = torch.rand(len(batch["text"]), device=self.device) < options.codes_first_fraction
        if options.shift_augment:
            batch = {**batch, self.modality: random_shift(batch[self.modality], options.shift_augment)}
        out = self.losses(batch, codes_first)
        if self._logging_step():  # only the batches whose metrics Lightning writes
            self.log("train/loss", out["loss"], prog_bar=True)
            self.log("train/text_nll", out["text"])
            self.log(f"train/{self.modality}_bits_per_dim", out["codes"] / math.log(2))
        return out["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluate_batch(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluate_batch(batch, "test")

    def evaluate_batch(self, batch: dict[str, Tensor], stage: str) -> None:
        """Conditional likelihoods in each direction: codes given the caption (text first) and the
        caption given the codes (codes first), with every condition kept."""
        rows = len(batch["text"])
        text_first = self.losses(batch, torch.zeros(rows, dtype=torch.bool, device=self.device))
        codes_first = self.losses(batch, torch.ones(rows, dtype=torch.bool, device=self.device))
        self.log(f"{stage}/loss", (text_first["loss"] + codes_first["loss"]) / 2, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/{self.modality}_bits_per_dim", text_first["codes"] / math.log(2), sync_dist=True)
        self.log(f"{stage}/text_nll", codes_first["text"], sync_dist=True)

    # --- sampling -----------------------------------------------------------------------------
    def serves(self, sources: tuple[str, ...], target: str) -> bool:
        if target not in self.output_modalities:
            return False
        if not sources:  # the [NULL] condition exists only if training dropped conditions
            return self.config.objective.condition_dropout > 0
        return len(sources) == 1 and sources[0] in self.condition_modalities and sources[0] != target

    def directions(self) -> list[str]:
        both = [f"text->{self.modality}", f"{self.modality}->text"]
        return both + ([f"->{self.modality}", "->text"] if self.config.objective.condition_dropout > 0 else [])

    def sample(self, conditions: dict[str, Tensor], num_samples: int, targets: list[str],
               temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
               guidance_scale: float | None = None, use_cache: bool = True,
               seed: int | None = None) -> dict[str, Tensor]:
        """Write the target segment after the condition's (or, unconditionally, after ``[NULL]`` tokens).

        Returns ``image: B,C,H,W`` in [-1, 1] (``audio: B,T``) decoded by the VQVAE from sampled codes,
        or ``text: long B,L`` (``[BOS] ... [EOS] [PAD]...``) and ``text_mask``.

        Args:
            temperature: softmax temperature; 0 picks the most likely token. Default: 1 for codes,
                0 (greedy) for text.
            top_k: keep only the ``k`` most likely tokens.
            top_p: keep only the smallest set of tokens whose probability mass reaches ``p``.
            guidance_scale: classifier-free guidance ``s``; each step also runs the model without the
                condition and samples from ``uncond + s * (cond - uncond)``. ``None``: no unconditional
                pass (plain conditional sampling, which ``s = 1`` equals at twice the cost).
            use_cache: reuse keys/values of earlier slots (KV cache); False recomputes the prefix each step.
            seed: makes sampling reproducible without touching the global random state.
        """
        codes_first = targets[0] != self.modality  # writing the caption: the codes are the prefix
        if temperature is None:
            temperature = 0.0 if codes_first else 1.0
        unconditional = self.modality not in conditions and "text" not in conditions
        if codes_first:
            condition = (self.vqvae.encode_codes(conditions) if not unconditional else
                         torch.zeros(num_samples, self.layout.num_codes_per_sample, dtype=torch.long, device=self.device))
        else:
            condition = conditions["text"] if not unconditional else torch.full(
                (num_samples, self.layout.text_length), self.layout.pad_id, dtype=torch.long, device=self.device)
        prefix = self.layout.prefix(condition, codes_first)
        order = torch.full((num_samples,), codes_first, dtype=torch.bool, device=self.device)
        if unconditional:
            prefix, _ = self.transformer.embedding.drop_condition(prefix, order, torch.ones_like(order))
        warpers = LogitsProcessorList(
            ([TemperatureLogitsWarper(temperature)] if temperature > 0 else [])
            + ([TopKLogitsWarper(top_k)] if top_k is not None and temperature > 0 else [])
            + ([TopPLogitsWarper(top_p)] if top_p is not None and temperature > 0 else []))
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        written = self.decode(prefix, order, codes_first, warpers, temperature, guidance_scale, use_cache, generator)
        if codes_first:
            bos = torch.full((num_samples, 1), self.layout.bos_id, dtype=torch.long, device=self.device)
            text = torch.cat([bos, written], dim=1)
            return {"text": text, "text_mask": text != self.layout.pad_id}
        return {self.modality: self.vqvae.decode_codes(written - self.layout.text_vocab_size)}

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """The modality drawn for each of the batch's captions, with the recipe's sampling defaults."""
        conditions = {"text": batch["text"], "text_mask": batch["text_mask"]}
        return self.generate(conditions, len(batch["text"]), [self.modality])

    def allowed_tokens(self, codes_first: bool) -> Tensor:
        """``bool vocab``: the tokens the target segment may hold (words and ``[EOS]``, or codes)."""
        allowed = torch.zeros(self.layout.vocab_size, dtype=torch.bool, device=self.device)
        if codes_first:
            allowed[: self.layout.text_vocab_size] = True
            allowed[[self.layout.pad_id, self.layout.bos_id]] = False
        else:
            allowed[self.layout.text_vocab_size: self.layout.text_vocab_size + self.layout.num_codes] = True
        return allowed

    def decode(self, prefix: Tensor, order: Tensor, codes_first: bool, warpers: LogitsProcessorList,
               temperature: float, guidance_scale: float | None, use_cache: bool,
               generator: torch.Generator | None) -> Tensor:
        """Extend ``prefix: long B,P`` by the target segment's slots; returns those ``long B,T``.
        Text rows that wrote ``[EOS]`` are filled with ``[PAD]``."""
        rows = prefix.shape[0]
        steps = self.layout.text_length - 1 if codes_first else self.layout.num_codes_per_sample
        guided = guidance_scale is not None
        ids = prefix
        if guided:  # the unconditional half: the same rows with the condition dropped
            order = torch.cat([order, order])
            dropped, _ = self.transformer.embedding.drop_condition(prefix, order[rows:], torch.ones_like(order[rows:]))
            ids = torch.cat([prefix, dropped])
        allowed = self.allowed_tokens(codes_first)
        finished = torch.zeros(rows, dtype=torch.bool, device=self.device)
        cache = DynamicCache() if use_cache else None
        logits, cache = self.transformer(ids, order, cache)
        written = []
        for step in range(steps):
            scores = logits[:, -1].float()
            if guided:
                scores = classifier_free_guidance(scores[:rows], scores[rows:], guidance_scale)
            scores = scores.masked_fill(~allowed, -math.inf)
            if temperature > 0:
                probabilities = warpers(ids[:rows], scores).softmax(-1)
                token = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
            else:
                token = scores.argmax(-1)
            if codes_first:
                token = token.masked_fill(finished, self.layout.pad_id)
                finished |= token == self.layout.eos_id
            written.append(token)
            if step == steps - 1 or (codes_first and finished.all()):
                break
            step_ids = torch.cat([token, token])[:, None] if guided else token[:, None]
            ids = torch.cat([ids, step_ids], dim=1)
            logits, cache = self.transformer(step_ids, order, cache) if use_cache else self.transformer(ids, order)
        out = torch.stack(written, dim=1)
        return F.pad(out, (0, steps - out.shape[1]), value=self.layout.pad_id)
