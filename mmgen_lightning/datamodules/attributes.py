"""How a data source's ground-truth attributes are read from its modalities.

Synthetic and labelled sources carry ``attributes: long B,K`` (the columns named by the data spec's
``attribute_names``). Metrics score a generated sample by reading the same attributes back from it:
a judge (a classifier, ``metrics/judges.py``) reads images, audio and video, the source's own caption
parser reads captions, and a label is the first attribute. What each modality makes observable is a
property of the data, so the datamodule describes it with an :class:`AttributeReading` (its
``attribute_reading``); ``metrics/`` asks :func:`describe` and never names a dataset.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

CaptionParser = Callable[[str], "dict[str, int] | None"]


@dataclass(frozen=True)
class AttributeReading:
    """What each modality of a source shows of its attributes, and how captions are read.

    Args:
        judged: per modality (``image``, ``audio``, ``video``), the attributes a judge trained on the
            real data reads; a modality left out has no judge.
        parse_caption: caption -> ``{attribute: value}`` of what it states, or ``None`` when it is
            unreadable; ``None`` when the source has no captions to read.
        caption_states: the attributes a caption states given the modalities a batch carries
            (captions may mention motion only when there is video); default: every attribute.
        label_states: the attributes a ``label`` determines; default: the first attribute.
    """

    judged: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    parse_caption: CaptionParser | None = None
    caption_states: Callable[[Sequence[str]], Sequence[str]] | None = None
    label_states: tuple[str, ...] | None = None

    def observable(self, modality: str, attribute_names: Sequence[str], modalities: Sequence[str]) -> tuple[str, ...]:
        """Attributes that a sample of ``modality`` determines, in ``attribute_names`` order."""
        if modality == "text":
            stated = self.caption_states(modalities) if self.caption_states is not None else attribute_names
            return tuple(n for n in attribute_names if n in stated)
        if modality == "label":
            return tuple(self.label_states) if self.label_states is not None else tuple(attribute_names[:1])
        return tuple(self.judged.get(modality, ()))

    def read_captions(self, texts: Sequence[str], attribute_names: Sequence[str]) -> Tensor:
        """Captions -> ``long B,K`` attributes (``K = len(attribute_names)``); -1 where unstated."""
        if self.parse_caption is None:
            raise ValueError("this data source has no caption parser: captions cannot be scored")
        rows = []
        for text in texts:
            parsed = self.parse_caption(text) or {}
            rows.append([int(parsed.get(name, -1)) for name in attribute_names])
        return torch.tensor(rows, dtype=torch.long).view(len(texts), len(attribute_names))


def describe(datamodule: Any) -> AttributeReading:
    """The datamodule's :class:`AttributeReading`: its own ``attribute_reading``; else one built from
    a ``judged_attributes`` dict and a ``parse_caption`` (method, or function of its module) it
    declares; else an empty one (nothing judged, no caption parser)."""
    declared = getattr(datamodule, "attribute_reading", None)
    if isinstance(declared, AttributeReading):
        return declared
    judged = getattr(datamodule, "judged_attributes", None)
    parser = getattr(datamodule, "parse_caption", None)
    if parser is None and datamodule is not None:
        parser = getattr(importlib.import_module(type(datamodule).__module__), "parse_caption", None)
    return AttributeReading(judged={m: tuple(a) for m, a in (judged or {}).items()},
                            parse_caption=parser if callable(parser) else None)
