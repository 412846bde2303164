"""The data spec: sizes that belong to the data, from which models and modalities are sized."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class DataSpec(Mapping):
    """Sizes that belong to the data, produced by a datamodule (``MultimodalDataModule.data_spec``)
    and stored in checkpoints as a plain ``dict`` (:meth:`to_dict`), so ``weights_only=True`` loading
    needs no class of ours. Unset fields are ``None`` and read as absent through the ``Mapping`` view
    (``"video_size" in spec``, ``spec.get(...)``, ``spec["..."]``), which keeps code written against
    the old ``dict`` working.

    Attributes:
        dataset: the source's name (``digits``, ``shapes``, ``manifest``, ...), for cache keys and reports.
        modalities: the batch keys the data carries.
        vocab_size: the tokenizer's vocabulary size.
        max_text_length: the padded caption length ``L`` of ``text: B,L``.
        image_size: side ``H == W`` of ``image: B,C,H,W``.
        image_channels: channels ``C`` of ``image: B,C,H,W``.
        video_size: side of ``video: B,F,C,H,W`` (``image_size`` if unset).
        num_frames: frame count ``F`` of ``video: B,F,C,H,W``.
        sample_rate: samples per second of ``audio: B,T``.
        audio_length: ``T`` of ``audio: B,T``.
        num_classes: label classes.
        attribute_names: the ``K`` columns of ``attributes: B,K``.
        attribute_sizes: the class count of each column.
        extra: any other key a source gives, kept as is.
    """

    dataset: str | None = None
    modalities: list[str] | None = None
    vocab_size: int | None = None
    max_text_length: int | None = None
    image_size: int | None = None
    image_channels: int | None = None
    video_size: int | None = None
    num_frames: int | None = None
    sample_rate: int | None = None
    audio_length: int | None = None
    num_classes: int | None = None
    attribute_names: list[str] | None = None
    attribute_sizes: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "DataSpec":
        if isinstance(data, DataSpec):
            return data
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        # a size given as None stays a key (in ``extra``), so the Mapping view equals the dict it came from
        known = {k: v for k, v in data.items() if k in names and v is not None}
        for key in ("modalities", "attribute_names", "attribute_sizes"):
            if key in known:
                known[key] = list(known[key])
        return cls(**known, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """The set fields and the extras as a plain ``dict`` (what checkpoints and YAML hold)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra" and getattr(self, f.name) is not None}
        out.update(self.extra)
        return out

    # the Mapping view: only set keys exist
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self.to_dict() == dict(other)

    # the dict operations code written against the plain dict uses; each returns a plain dict
    def copy(self) -> dict[str, Any]:
        return self.to_dict()

    def __or__(self, other: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.to_dict(), **other}

    def __ror__(self, other: Mapping[str, Any]) -> dict[str, Any]:
        return {**other, **self.to_dict()}

    __hash__ = None  # mutable, like the dict it replaces


def need(spec: Mapping[str, Any], key: str) -> Any:
    """``spec[key]``, or a ``ValueError`` that says where the size should have come from."""
    if spec.get(key) is None:
        raise ValueError(f"data_spec has no {key!r} (it is linked from the datamodule's data_spec; "
                         f"keys present: {sorted(spec)})")
    return spec[key]
