"""The alignment objective: symmetric InfoNCE over every pair of modalities (CLIP, Radford et al. 2021,
generalised from two modalities to any number, as ImageBind pairs them).

Each modality ``m`` of an item is embedded as a unit vector ``z_m``; for a pair ``(m, n)`` every query
``z_m[i]`` must pick its own item among the candidates ``z_n`` (and the other way round), with logits
scaled by ``s``, the learned inverse temperature::

    loss = mean over pairs (m, n) of  1/(2B) sum_i [ -log softmax_j(s <z_m[i], z_n[j]>)[i]
                                                     -log softmax_j(s <z_n[i], z_m[j]>)[i] ]

``s = exp(log s)`` is learned as a log and clamped to ``[1, max_logit_scale]`` (no gradient past the
clamp), as CLIP does. Under DDP the candidates are every process's embeddings, gathered *with
gradients*, so each query is contrasted with the whole global batch and the loss and gradients are
those of one process on that batch (:func:`~mmgen_lightning.losses.symmetric_info_nce`).

With ``swap_negatives = K`` each image (audio, video) is also contrasted with ``K`` hard negatives
of its own caption: the caption with two of its words swapped (NegCLIP, Yuksekgonul et al. 2023).
In-batch negatives differ from a caption in many words, so a bag of words separates them; a caption
whose colours, shapes or objects trade places does not, and swapped words are what ARO-style tests
ask an encoder to tell apart. For a pair ``(m, text)`` the ``m -> text`` term becomes::

    -log softmax( [s <z_m[i], z_text[j]>]_j  ++  [s <z_m[i], z_swap[i, k]>]_k )[i]

and the ``text -> m`` term is unchanged (:func:`info_nce_with_negatives`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmgen_lightning.config import ConfigGroup
from mmgen_lightning.losses import symmetric_info_nce
from mmgen_lightning.tokenizer import SPECIAL_TOKENS


@dataclasses.dataclass(frozen=True)
class AlignerObjective(ConfigGroup):
    """The contrastive loss's temperature and hard negatives.

    Args:
        temperature: initial softmax temperature ``1 / s`` of the InfoNCE logits; ``s`` is learned.
        max_logit_scale: the clamp of ``s`` (CLIP: 100).
        swap_negatives: per image (audio, video), this many copies of its caption with two different
            words swapped, as extra candidates of its ``-> text`` softmax (0: in-batch negatives only).
    """

    section = "objective"
    temperature: float = 0.07
    max_logit_scale: float = 100.0
    swap_negatives: int = 0

    def check(self) -> None:
        self.require(self.max_logit_scale >= 1, "max_logit_scale", "must be >= 1")
        self.require(self.swap_negatives >= 0, "swap_negatives", "must be >= 0")
        self.require(self.temperature > 0 and 1 / self.temperature <= self.max_logit_scale, "temperature",
                     f"must be > 0 with 1/temperature <= max_logit_scale ({self.max_logit_scale})")


def clamped_logit_scale(log_scale: Tensor, objective: AlignerObjective) -> Tensor:
    """``s = exp(log s)`` clamped to ``[1, max_logit_scale]`` (no gradient past the clamp, as CLIP)."""
    return log_scale.clamp(0.0, math.log(objective.max_logit_scale)).exp()


def contrastive_objective(embed: Callable[[Mapping[str, Tensor], str], Tensor], batch: Mapping[str, Tensor],
                          modalities: Sequence[str], log_scale: Tensor, objective: AlignerObjective,
                          gather: Callable[[Tensor], Tensor] | None = None, rank: int = 0) -> dict[str, Tensor]:
    """``{"loss", "embeddings"}`` for one batch: the mean symmetric InfoNCE over every pair of ``modalities``
    and the embeddings it was computed from (modality -> ``B,embed_dim`` unit vectors).

    Args:
        embed: ``(batch, modality) -> B,embed_dim`` unit vectors (the aligner's encoders and heads).
        batch: batch-contract tensors holding at least two of ``modalities``.
        log_scale: the learned ``log s`` (a scalar).
        gather: ``B,D ->`` every process's ``B,D`` stacked (``N,D``) with gradients; ``None``: one process.
        rank: this process's place among them (its rows of the gathered candidates).
    """
    embeddings = {m: embed(batch, m) for m in modalities}
    candidates, offset = embeddings, 0
    if gather is not None:
        candidates = {m: gather(z) for m, z in embeddings.items()}
        offset = rank * next(iter(embeddings.values())).shape[0]
    scale = clamped_logit_scale(log_scale, objective)
    pairs = list(itertools.combinations(embeddings, 2))
    negatives = hard_negatives(embed, batch, objective.swap_negatives) if "text" in embeddings else None
    if negatives is None:
        loss = sum(symmetric_info_nce(embeddings[m], embeddings[n], scale, candidates[m], candidates[n], offset)
                   for m, n in pairs) / len(pairs)
        return {"loss": loss, "embeddings": embeddings}
    negatives, swapped = negatives
    loss = 0.0
    for m, n in pairs:
        if "text" in (m, n):  # the other modality's queries also meet their own caption's swaps
            other = n if m == "text" else m
            loss = loss + info_nce_with_negatives(embeddings[other], embeddings["text"], scale, candidates[other],
                                                  candidates["text"], negatives, swapped, offset)
        else:
            loss = loss + symmetric_info_nce(embeddings[m], embeddings[n], scale, candidates[m], candidates[n], offset)
    return {"loss": loss / len(pairs), "embeddings": embeddings}


def hard_negatives(embed: Callable[[Mapping[str, Tensor], str], Tensor], batch: Mapping[str, Tensor],
                   swap_negatives: int) -> tuple[Tensor, Tensor] | None:
    """Each caption's hard negatives, embedded: ``(B,K,embed_dim, kept bool B,K)``, or ``None`` when there
    are none. They are the batch's own ``text_negatives`` (``long B,K,L`` with ``text_negatives_mask``; a
    row with no real token is no negative), which a datamodule that knows its captions' meaning writes
    (``ScenesDataModule(hard_negatives=True)``: the swapped twins), then ``swap_negatives`` copies of
    the caption with two words swapped (:func:`swapped_words`). Only kept rows go through ``embed``."""
    parts = []  # (text N*K,L, text_mask N*K,L, kept N,K)
    if "text_negatives" in batch:
        given, given_mask = batch["text_negatives"], batch["text_negatives_mask"].bool()
        parts.append((given.flatten(0, 1), given_mask.flatten(0, 1), given_mask.any(-1)))
    if swap_negatives:
        text, swapped = swapped_words(batch["text"], batch["text_mask"], swap_negatives)
        parts.append((text, batch["text_mask"].repeat_interleave(swap_negatives, 0), swapped.view(-1, swap_negatives)))
    kept = torch.cat([kept for *_, kept in parts], 1) if parts else None  # B,K
    if kept is None or not kept.any():
        return None
    # one pass through the text encoder: every part's rows, caption by caption, as ``kept`` orders them
    text = torch.cat([text.unflatten(0, (len(kept), -1)) for text, *_ in parts], 1).flatten(0, 1)
    text_mask = torch.cat([mask.unflatten(0, (len(kept), -1)) for _, mask, _ in parts], 1).flatten(0, 1)
    rows = kept.flatten()
    vectors = embed({"text": text[rows], "text_mask": text_mask[rows]}, "text")
    negatives = vectors.new_zeros(len(rows), vectors.shape[-1]).index_put((rows.nonzero()[:, 0],), vectors)
    return negatives.unflatten(0, kept.shape), kept


def swapped_words(text: Tensor, text_mask: Tensor, count: int,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``count`` copies of each caption (``text: long B,L`` with ``text_mask``) with two of its words
    swapped: ``(text B*count,L, swapped bool B*count)``, the copies of caption ``i`` at rows
    ``i*count .. i*count + count - 1`` (padding and mask unchanged).

    The first position is drawn uniformly among the caption's words (special tokens and padding left
    alone), the second among those holding a different word, so a copy never equals its caption; a
    caption with fewer than two different words comes back as is, with ``swapped`` False.
    """
    text, text_mask = text.repeat_interleave(count, 0), text_mask.repeat_interleave(count, 0)
    words = text_mask & (text >= len(SPECIAL_TOKENS))  # a vocabulary's first ids are the special tokens
    first = torch.where(words, torch.rand(text.shape, generator=generator).to(text.device), -1.0).argmax(1)
    rows = torch.arange(len(text), device=text.device)
    others = words & (text != text[rows, first][:, None])
    second = torch.where(others, torch.rand(text.shape, generator=generator).to(text.device), -1.0).argmax(1)
    swapped = others.any(1)
    out = text.clone()
    out[rows[swapped], first[swapped]] = text[rows[swapped], second[swapped]]
    out[rows[swapped], second[swapped]] = text[rows[swapped], first[swapped]]
    return out, swapped


def info_nce_with_negatives(queries: Tensor, texts: Tensor, logit_scale: Tensor | float, all_queries: Tensor,
                            all_texts: Tensor, negatives: Tensor, negative_mask: Tensor, offset: int = 0) -> Tensor:
    """Symmetric InfoNCE of paired unit vectors (``queries, texts: B,D``; the candidates ``all_*: N,D`` hold
    them at rows ``offset ..``) where each query also meets its own hard negative captions
    ``negatives: B,K,D`` (those where ``negative_mask: bool B,K`` is True)::

        loss = 1/2 [ mean_i -log softmax( [s <q_i, all_texts_j>]_j ++ [s <q_i, neg_ik>]_k )[offset + i]
                   + mean_i -log softmax_j( s <t_i, all_queries_j> )[offset + i] ]
    """
    targets = torch.arange(queries.shape[0], device=queries.device) + offset
    in_batch = logit_scale * queries.float() @ all_texts.float().T  # B,N
    hard = logit_scale * torch.einsum("bd,bkd->bk", queries.float(), negatives.float())  # B,K
    hard = hard.masked_fill(~negative_mask, float("-inf"))
    to_texts = F.cross_entropy(torch.cat([in_batch, hard], 1), targets)
    to_queries = F.cross_entropy(logit_scale * texts.float() @ all_queries.float().T, targets)
    return 0.5 * (to_texts + to_queries)
