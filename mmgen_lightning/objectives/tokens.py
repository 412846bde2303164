"""The token-stream objective: next-token likelihood over one stream of caption tokens and VQ codes.

Each row of a batch is one stream ``[BOS] text [SEP-image] codes [EOS]`` (text -> image) or
``[BOS] codes [SEP-text] text [EOS]`` (image -> text, a share ``codes_first_fraction`` of the rows), laid
out by :class:`~mmgen_lightning.tokenizer.TokenLayout`. The transformer predicts every slot from the ones
before it, and the loss is the mean cross-entropy of each segment, weighted::

    loss = w_text * E_text[-log p(x_i | x_<i)] + w_codes * E_codes[-log p(x_i | x_<i)]

over the text slots up to the caption's ``[EOS]`` and the code slots. A share ``condition_dropout`` of
the rows sees ``[NULL]`` in place of its condition (the stream embedding owns that dropout, as DiT's
label embedder does) and is not scored there, which teaches the unconditional model classifier-free
guidance needs: ``logits = uncond + s * (cond - uncond)`` (Ho & Salimans 2022; Gafni et al. 2022 for
token models).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from mmgen_lightning.config import ConfigGroup
from mmgen_lightning.tokenizer import CODE, TEXT, TokenLayout

IGNORE_INDEX = -100


@dataclasses.dataclass(frozen=True)
class TokenObjective(ConfigGroup):
    """What the stream transformer is trained to minimise, and on which streams.

    Args:
        loss_weights: weight of each modality's mean NLL in the loss, e.g. ``{text: 1, image: 1}``
            (a modality left out weighs 1).
        condition_dropout: share of training rows whose condition is replaced by ``[NULL]``
            (enables classifier-free guidance and unconditional sampling; 0 turns both off).
        codes_first_fraction: share of training rows in the codes-first order (image -> text).
        shift_augment: training only, images only: shift each image by its own random offset of up to
            this many pixels in x and y (filled with the background, -1) before it is tokenized, so a
            small dataset gives many distinct code sequences; 0 turns it off.
    """

    section = "objective"
    loss_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    condition_dropout: float = 0.1
    codes_first_fraction: float = 0.5
    shift_augment: int = 0

    def check(self) -> None:
        self.require(all(weight >= 0 for weight in self.loss_weights.values()), "loss_weights",
                     "must hold weights >= 0")
        self.require(0.0 <= self.condition_dropout < 1.0, "condition_dropout", "must be in [0, 1)")
        self.require(0.0 <= self.codes_first_fraction <= 1.0, "codes_first_fraction", "must be in [0, 1]")
        self.require(self.shift_augment >= 0, "shift_augment", "must be >= 0")


def next_token_targets(layout: TokenLayout, ids: Tensor, codes_first: Tensor, dropped: Tensor) -> dict[str, Tensor]:
    """Next-token targets ``long B,S-1`` of the ``text`` and the ``codes`` slots (``IGNORE_INDEX`` elsewhere)
    of streams ``ids: long B,S``: text up to the caption's ``[EOS]``, every code; never the condition of a
    row whose condition was dropped (``dropped: bool B``)."""
    role, _ = layout.roles(codes_first)
    role = role[:, 1:]
    scored = ~(layout.condition_slots(codes_first)[:, 1:] & dropped[:, None])
    next_ids = ids[:, 1:]
    text = (role == TEXT) & scored & (next_ids != layout.pad_id)
    code = (role == CODE) & scored
    return {"text": next_ids.masked_fill(~text, IGNORE_INDEX), "codes": next_ids.masked_fill(~code, IGNORE_INDEX)}


def token_stream_objective(transformer: nn.Module, ids: Tensor, codes_first: Tensor,
                           loss_weights: Mapping[str, float]) -> dict[str, Tensor]:
    """``{"text", "codes", "loss"}``: the mean NLL (nats) per scored token of each segment and their
    weighted sum, for one batch.

    Args:
        transformer: a :class:`~mmgen_lightning.models.layers.token_stream.StreamTransformer` (its
            embedding drops conditions in training mode).
        ids: the streams ``long B,S`` (``TokenLayout.build`` of the captions and the codes).
        codes_first: ``bool B``, each row's order.
        loss_weights: the weight of ``text`` and of ``codes``.
    """
    inputs, dropped = transformer.embedding.drop_condition(ids, codes_first)
    logits, _ = transformer(inputs[:, :-1], codes_first)
    logits = logits.float()
    out = {}
    for name, target in next_token_targets(transformer.layout, ids, codes_first, dropped).items():
        valid = target != IGNORE_INDEX
        out[name] = (F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX)
                     if valid.any() else logits.sum() * 0.0)
    out["loss"] = loss_weights["text"] * out["text"] + loss_weights["codes"] * out["codes"]
    return out
