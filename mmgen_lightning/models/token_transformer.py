"""TokenTransformer: stage 2 of the two-stage (DALL-E / Chameleon) recipe. One decoder-only
transformer models a single token stream of caption tokens and the stage-1 :class:`VQVAE`'s codes,
in both orders (see ``layers/token_stream.py``), so the same weights do text -> image and
image -> text (or text <-> audio, with an audio VQVAE).

Objective: next-token cross-entropy on the text and code slots, the mean of each modality weighted
by ``loss_weights``; ``val/image_bits_per_dim`` is the NLL of the codes given the caption in bits
per code. A random share of the rows (``condition_dropout``) sees ``[NULL]`` in place of its
condition and is not scored there, which teaches the unconditional model that classifier-free
guidance needs: ``logits = uncond + s * (cond - uncond)`` (Ho & Salimans 2022; Gafni et al. 2022
for token models).

The transformer is ``transformers``' GPT-2 block stack (random weights from a config, nothing
downloaded) fed ``inputs_embeds`` from :class:`StreamEmbedding` (token + modality + 1-D text / 2-D
code positions); its KV cache (``DynamicCache``) serves sampling. The sampling loop is written here
and not left to ``generate()`` because each step restricts the vocabulary to the segment being
written and mixes a conditional and an unconditional pass (guidance); the per-token warpers
(temperature, top-k, top-p) are ``transformers``' own.

The stage-1 VQVAE is given by checkpoint path (``vqvae_checkpoint``), loaded with
``weights_only=True`` and frozen; its hyper-parameters are stored as ``vqvae_config`` and its
weights ride in this checkpoint's ``state_dict``, so ``load_generator(stage2.ckpt)`` rebuilds both
stages with no other file and ``generate`` decodes codes back to pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache, GPT2Config, GPT2Model
from transformers.generation import (LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                                     TopPLogitsWarper)

from mmgen_lightning.knobs import family_knobs
from mmgen_lightning.models.base import GenerativeModule, load_generator
from mmgen_lightning.models.optim import adamw_warmup_cosine
from mmgen_lightning.models.layers.token_stream import CODE, TEXT, StreamEmbedding, TokenLayout
from mmgen_lightning.models.vqvae import VQVAE
from mmgen_lightning.modalities import get_modality, random_shift

IGNORE_INDEX = -100


def classifier_free_guidance(conditional: Tensor, unconditional: Tensor, scale: float) -> Tensor:
    """``uncond + scale * (cond - uncond)`` on logits: 1 gives the conditional model, 0 the
    unconditional one, above 1 sharpens towards the condition."""
    return unconditional + scale * (conditional - unconditional)


class TokenTransformer(GenerativeModule):
    """Args:
        data_spec: sizes from the datamodule (linked by the CLI).
        vqvae_checkpoint: path of the stage-1 :class:`VQVAE` checkpoint (``mmgen fit`` of a
            ``configs/vqvae`` recipe); read once, when the model is first built.
        vqvae_config: the VQVAE's hyper-parameters, filled in from the checkpoint; lets this
            model's own checkpoint rebuild the VQVAE without the file. Leave unset.
        width: transformer width.
        num_layers: GPT-2 blocks.
        num_heads: attention heads.
        dropout: dropout of embeddings, attention and residuals.
        loss_weights: weight of each modality's mean NLL in the loss, e.g. ``{text: 1, image: 1}``.
        condition_dropout: share of training rows whose condition is replaced by ``[NULL]``
            (enables classifier-free guidance and unconditional sampling; 0 turns both off).
        codes_first_fraction: share of training rows in the codes-first order (image -> text).
        shift_augment: training only, images only: shift each image by its own random offset of up to
            this many pixels in x and y (filled with the background, -1) before it is tokenized, so a
            small dataset gives many distinct code sequences; 0 turns it off.
        sampling_defaults: sampling knobs ``generate`` uses when the caller gives none (``mmgen
            generate``/``mmgen evaluate`` without flags), e.g. ``{guidance_scale: 3.0, top_k: 16}``; keys
            are :meth:`sample`'s arguments, and an explicit argument (``guidance_scale=None`` too) wins.
        lr: peak AdamW learning rate.
        betas: AdamW's moment decay rates.
        weight_decay: AdamW weight decay on matrices (not on biases, norms or embeddings).
        warmup_steps: linear warm-up steps; then a cosine to 10% when the run length is known.
    """

    #: the keyword arguments of :meth:`sample` and their ranges, checked by ``generate`` before sampling
    sampling_knobs = family_knobs("temperature", "top_k", "top_p", "guidance_scale", "use_cache", "seed")

    def __init__(self, data_spec: dict[str, Any] | None = None, vqvae_checkpoint: str | None = None,
                 vqvae_config: dict[str, Any] | None = None, width: int = 128, num_layers: int = 4,
                 num_heads: int = 4, dropout: float = 0.1, loss_weights: dict[str, float] | None = None,
                 condition_dropout: float = 0.1, codes_first_fraction: float = 0.5, shift_augment: int = 0,
                 sampling_defaults: dict[str, Any] | None = None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.98), weight_decay: float = 0.01,
                 warmup_steps: int = 100) -> None:
        super().__init__(data_spec)
        self.save_hyperparameters()
        if not 0.0 <= codes_first_fraction <= 1.0:
            raise ValueError(f"codes_first_fraction must be in [0, 1], got {codes_first_fraction}")
        self.vqvae = self._load_vqvae()
        self.modality = self.vqvae.modality
        defaults = [name for name in self.sampling_knobs if name != "seed"]  # a fixed seed is not a default
        unknown = set(sampling_defaults or {}) - set(defaults)
        if unknown:
            raise ValueError(f"sampling_defaults: unknown knob {sorted(unknown)[0]!r}; allowed: {', '.join(defaults)}")
        if shift_augment < 0 or (shift_augment and not get_modality(self.modality).pixels):
            raise ValueError(f"shift_augment must be >= 0, and 0 for {self.modality!r}; got {shift_augment}")
        weights = dict(loss_weights or {})
        self.condition_modalities = self.output_modalities = ("text", self.modality)
        for name, value in weights.items():
            if name not in self.output_modalities or value < 0:
                raise ValueError(f"loss_weights: {name!r}: {value}; allowed keys: text, {self.modality} "
                                 "(weights >= 0)")
        self.loss_weights = {"text": float(weights.get("text", 1.0)), self.modality: float(weights.get(self.modality, 1.0))}
        self.layout = TokenLayout(self.spec("vocab_size"), self.vqvae.num_codes, self.spec("max_text_length"),
                                  self.vqvae.grid)
        self.embedding = StreamEmbedding(self.layout, width, condition_dropout)
        self.transformer = GPT2Model(GPT2Config(
            vocab_size=1, n_positions=self.layout.length, n_embd=width, n_layer=num_layers, n_head=num_heads,
            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
            bos_token_id=None, eos_token_id=None))  # tokens come in as inputs_embeds; its 1-row wte is unused
        self.head = nn.Linear(width, self.layout.vocab_size, bias=False)

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

    # --- the network --------------------------------------------------------------------------
    def forward(self, ids: Tensor, codes_first: Tensor, cache: DynamicCache | None = None) -> tuple[Tensor, Any]:
        """Logits ``B,S',vocab`` for stream slots ``offset..offset+S'`` (``offset`` = what ``cache``
        holds) and the updated cache (``None`` when no cache was given)."""
        offset = cache.get_seq_length() if cache is not None else 0
        out = self.transformer(inputs_embeds=self.embedding(ids, codes_first, offset), cache=cache,
                               use_cache=cache is not None)
        return self.head(out.last_hidden_state), out.cache if cache is not None else None

    @torch.no_grad()
    def stream(self, batch: Mapping[str, Tensor], codes_first: Tensor) -> Tensor:
        """The batch's caption and the frozen VQVAE's codes as one stream ``long B,S``."""
        return self.layout.build(batch["text"], self.vqvae.encode_codes(dict(batch)), codes_first)

    def targets(self, ids: Tensor, codes_first: Tensor, dropped: Tensor) -> dict[str, Tensor]:
        """Next-token targets ``long B,S-1`` per modality (``IGNORE_INDEX`` elsewhere): text slots up to
        the caption's ``[EOS]``, code slots; never the condition of a row whose condition was dropped."""
        role, _ = self.layout.roles(codes_first)
        role = role[:, 1:]
        scored = ~(self.layout.condition_slots(codes_first)[:, 1:] & dropped[:, None])
        next_ids = ids[:, 1:]
        text = (role == TEXT) & scored & (next_ids != self.layout.pad_id)
        code = (role == CODE) & scored
        return {"text": next_ids.masked_fill(~text, IGNORE_INDEX), self.modality: next_ids.masked_fill(~code, IGNORE_INDEX)}

    def losses(self, batch: Mapping[str, Tensor], codes_first: Tensor) -> dict[str, Tensor]:
        """Mean NLL (nats) per scored token of each modality, and their weighted sum ``loss``."""
        ids = self.stream(batch, codes_first)
        inputs, dropped = self.embedding.drop_condition(ids, codes_first)
        logits, _ = self(inputs[:, :-1], codes_first)
        logits = logits.float()
        out = {}
        for name, target in self.targets(ids, codes_first, dropped).items():
            valid = target != IGNORE_INDEX
            out[name] = (F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX)
                         if valid.any() else logits.sum() * 0.0)
        out["loss"] = sum(self.loss_weights[name] * out[name] for name in self.loss_weights)
        return out

    # --- objective ----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        codes_first = torch.rand(len(batch["text"]), device=self.device) < self.hparams.codes_first_fraction
        if self.hparams.shift_augment:
            batch = {**batch, self.modality: random_shift(batch[self.modality], self.hparams.shift_augment)}
        out = self.losses(batch, codes_first)
        if self._logging_step():  # only the batches whose metrics Lightning writes
            self.log("train/loss", out["loss"], prog_bar=True)
            self.log("train/text_nll", out["text"])
            self.log(f"train/{self.modality}_bits_per_dim", out[self.modality] / math.log(2))
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
        self.log(f"{stage}/{self.modality}_bits_per_dim", text_first[self.modality] / math.log(2), sync_dist=True)
        self.log(f"{stage}/text_nll", codes_first["text"], sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self, no_decay=("embedding", "wpe"))

    # --- sampling -----------------------------------------------------------------------------
    def serves(self, sources: tuple[str, ...], target: str) -> bool:
        if target not in self.output_modalities:
            return False
        if not sources:  # the [NULL] condition exists only if training dropped conditions
            return self.hparams.condition_dropout > 0
        return len(sources) == 1 and sources[0] in self.condition_modalities and sources[0] != target

    def directions(self) -> list[str]:
        both = [f"text->{self.modality}", f"{self.modality}->text"]
        return both + ([f"->{self.modality}", "->text"] if self.hparams.condition_dropout > 0 else [])

    def generate(self, conditions: Mapping[str, Tensor] | None, num_samples: int, to: str | None = None,
                 **sampling: Any) -> dict[str, Tensor]:
        """:meth:`GenerativeModule.generate` with ``sampling_defaults`` filling in the knobs not given."""
        return super().generate(conditions, num_samples, to, **{**(self.hparams.sampling_defaults or {}), **sampling})

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
            top_k, top_p: keep only the ``k`` most likely tokens / the smallest set of mass ``p``.
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
            prefix, _ = self.embedding.drop_condition(prefix, order, torch.ones_like(order))
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
            ids = torch.cat([prefix, self.embedding.drop_condition(prefix, order[rows:], torch.ones_like(order[rows:]))[0]])
        allowed = self.allowed_tokens(codes_first)
        finished = torch.zeros(rows, dtype=torch.bool, device=self.device)
        cache = DynamicCache() if use_cache else None
        logits, cache = self(ids, order, cache)
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
            logits, cache = self(step_ids, order, cache) if use_cache else self(ids, order)
        out = torch.stack(written, dim=1)
        return F.pad(out, (0, steps - out.shape[1]), value=self.layout.pad_id)
