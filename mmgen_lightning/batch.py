"""Modality names and the batch contract.

A batch is a plain ``dict[str, Tensor]``; every key is optional, batch dimension first:

=============  ====================  ==========================================
key            dtype / shape         range / meaning
=============  ====================  ==========================================
``image``      float ``B,C,H,W``     [-1, 1]
``text``       long ``B,L``          token ids from the datamodule's tokenizer, padded
``text_mask``  bool ``B,L``          True on real tokens
``audio``      float ``B,T``         waveform in [-1, 1] at the datamodule's sample rate
``video``      float ``B,F,C,H,W``   [-1, 1]
``label``      long ``B``            class index
``attributes`` long ``B,K``          ground-truth factors (synthetic data), metrics only
=============  ====================  ==========================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

#: The modalities a model can generate or condition on.
MODALITIES: tuple[str, ...] = ("image", "text", "audio", "video", "label")
#: Every key a batch may carry.
BATCH_KEYS: tuple[str, ...] = MODALITIES + ("text_mask", "attributes")

_NDIM = {"image": 4, "text": 2, "text_mask": 2, "audio": 2, "video": 5, "label": 1, "attributes": 2}
_FLOAT_KEYS = ("image", "audio", "video")


def check_modalities(names: Iterable[str], argument: str, allowed: Iterable[str] = MODALITIES) -> list[str]:
    """Return ``names`` as a list, or raise a ``ValueError`` naming ``argument`` and the allowed values."""
    names = [names] if isinstance(names, str) else list(names)
    allowed = tuple(allowed)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"{argument}: unknown modality {unknown[0]!r}; allowed: {', '.join(allowed)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{argument}: modalities must be unique, got {names}")
    return names


def check_batch(batch: Mapping[str, Tensor], where: str = "batch") -> None:
    """Validate keys, ranks and dtypes against the batch contract, naming the offending key."""
    sizes = set()
    for key, value in batch.items():
        if key not in BATCH_KEYS:
            raise ValueError(f"{where}: unknown key {key!r}; allowed: {', '.join(BATCH_KEYS)}")
        if not isinstance(value, Tensor):
            raise TypeError(f"{where}[{key!r}] must be a Tensor, got {type(value).__name__}")
        if value.ndim != _NDIM[key]:
            raise ValueError(f"{where}[{key!r}] must have {_NDIM[key]} dims, got shape {tuple(value.shape)}")
        if key in _FLOAT_KEYS and not value.is_floating_point():
            raise TypeError(f"{where}[{key!r}] must be floating point, got {value.dtype}")
        if key in ("text", "label", "attributes") and value.dtype != torch.long:
            raise TypeError(f"{where}[{key!r}] must be torch.long, got {value.dtype}")
        sizes.add(value.shape[0])
    if len(sizes) > 1:
        raise ValueError(f"{where}: every entry needs the same batch size, got {sorted(sizes)}")


def batch_size(batch: Mapping[str, Tensor]) -> int:
    return next(iter(batch.values())).shape[0]


def parse_direction(direction: str) -> tuple[tuple[str, ...], str]:
    """``"text+audio->image"`` -> ``(("text", "audio"), "image")``; ``"->image"`` is unconditional."""
    if "->" not in direction:
        raise ValueError(f"direction {direction!r} must look like 'text->image' or '->image'")
    source, target = direction.split("->")
    sources = tuple(s for s in source.split("+") if s)
    check_modalities(sources, f"direction {direction!r}")
    check_modalities([target], f"direction {direction!r}")
    return sources, target
