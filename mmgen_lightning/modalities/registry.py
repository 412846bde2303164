"""Every modality by batch key, and the questions asked of several at once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from mmgen_lightning.modalities.audio import AudioModality
from mmgen_lightning.modalities.base import Modality
from mmgen_lightning.modalities.image import ImageModality
from mmgen_lightning.modalities.label import LabelModality
from mmgen_lightning.modalities.text import TextModality
from mmgen_lightning.modalities.video import VideoModality

#: every modality, by batch key, in the batch contract's order
REGISTRY: dict[str, Modality] = {m.name: m for m in (ImageModality(), TextModality(), AudioModality(),
                                                      VideoModality(), LabelModality())}
#: the modalities a model can generate or condition on
MODALITIES: tuple[str, ...] = tuple(REGISTRY)
#: modalities a judge reads (images, audio, video)
JUDGEABLE: tuple[str, ...] = tuple(name for name, m in REGISTRY.items() if m.judgeable)


def get_modality(name: str) -> Modality:
    """The :class:`Modality` of a batch key, or a ``ValueError`` naming the allowed ones."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown modality {name!r}; allowed: {', '.join(REGISTRY)}") from None


def batch_keys(modalities: Iterable[str]) -> list[str]:
    """Every batch key of ``modalities``, in order: ``["image", "text", "text_mask"]`` for image and text."""
    return [key for name in modalities for key in get_modality(name).keys()]


def scored_dimensions(batch: Mapping[str, Tensor], modalities: Iterable[str], *,
                      spectrogram_dims: int | None = None) -> Tensor:
    """Scalars per sample a likelihood of ``modalities`` scores: ``B`` float64, the sum of each
    modality's count (``spectrogram_dims``: audio's, when it is scored as its log-mel spectrogram)."""
    reference = next(iter(batch.values()))
    dims = torch.zeros(reference.shape[0], dtype=torch.float64, device=reference.device)
    for name in modalities:
        dims += get_modality(name).scored_dimensions(batch, spectrogram_dims=spectrogram_dims)
    return dims
