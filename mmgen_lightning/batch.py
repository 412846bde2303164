"""Modality names and the batch contract.

A batch is a plain ``dict[str, Tensor]``; every key is optional, batch dimension first:

| key | dtype / shape | range / meaning |
|---|---|---|
| ``image`` | float ``B,C,H,W`` | [-1, 1] |
| ``text`` | long ``B,L`` | token ids from the datamodule's tokenizer, padded |
| ``text_mask`` | bool ``B,L`` | True on real tokens |
| ``audio`` | float ``B,T`` | waveform in [-1, 1] at the datamodule's sample rate |
| ``video`` | float ``B,F,C,H,W`` | [-1, 1] |
| ``label`` | long ``B`` | class index |
| ``attributes`` | long ``B,K`` | ground-truth factors (synthetic data), metrics only |

A source that knows what its captions mean may add hard negatives for contrastive training:
``text_negatives`` (long ``B,K,L``, ``K`` false captions per item, padded) with
``text_negatives_mask`` (bool ``B,K,L``; a row with no True is no caption), as
``ScenesDataModule(hard_negatives=True)`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from mmgen_lightning.modalities import MODALITIES, REGISTRY

#: Every key a batch may carry: the modalities, then the keys that ride beside them.
BATCH_KEYS: tuple[str, ...] = MODALITIES + ("text_mask", "attributes", "text_negatives", "text_negatives_mask")
#: the keys that are not modalities: ``(rank, dtype)``
_COMPANIONS = {"text_mask": (2, torch.bool), "attributes": (2, torch.long), "text_negatives": (3, torch.long),
               "text_negatives_mask": (3, torch.bool)}


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
    """Validate keys, ranks and dtypes against the batch contract, naming the offending key (each
    modality checks its own tensor: ``Modality.check``)."""
    sizes = set()
    for key, value in batch.items():
        if key in REGISTRY:
            REGISTRY[key].check(value, where)
        elif key in _COMPANIONS:
            ndim, dtype = _COMPANIONS[key]
            if not isinstance(value, Tensor):
                raise TypeError(f"{where}[{key!r}] must be a Tensor, got {type(value).__name__}")
            if value.ndim != ndim:
                raise ValueError(f"{where}[{key!r}] must have {ndim} dims, got shape {tuple(value.shape)}")
            if not key.endswith("_mask") and value.dtype != dtype:  # masks may come as bool or 0/1 integers
                raise TypeError(f"{where}[{key!r}] must be {dtype}, got {value.dtype}")
        else:
            raise ValueError(f"{where}: unknown key {key!r}; allowed: {', '.join(BATCH_KEYS)}")
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
