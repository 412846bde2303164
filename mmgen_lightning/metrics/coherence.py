"""Cross-modal coherence: does a sample generated from a condition show the condition's attributes?

For a direction ``sources -> target`` the compared attributes are those the target makes
observable and some source states (a digit image shows the digit but not a motion; a caption
states everything). Images, audio and video are read by a :class:`~mmgen_lightning.metrics.judges.Judge`;
captions by the data's caption parser (``datamodules/attributes.py``). On real data against itself,
coherence equals the judge's accuracy, which is the ceiling any model can be measured at; reports
show it beside each direction as ``real_data``. ``coherence()`` itself lives in ``evaluator.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from mmgen_lightning.batch import parse_direction
from mmgen_lightning.datamodules.attributes import AttributeReading, describe
from mmgen_lightning.metrics.judges import Judge


def compared_attributes(datamodule, direction: str) -> list[str]:
    """Attributes that ``direction`` can be scored on: observable in the target, stated by some source
    (what each modality shows is the datamodule's ``AttributeReading``)."""
    sources, target = parse_direction(direction)
    spec, reading = datamodule.data_spec, describe(datamodule)
    names, modalities = list(spec["attribute_names"]), spec["modalities"]
    stated = {n for s in sources for n in reading.observable(s, names, modalities)}
    return [n for n in reading.observable(target, names, modalities) if n in stated]


def read_attributes(samples: dict[str, Tensor], target: str, spec: Any, judges: dict[str, Judge], tokenizer,
                    reading: AttributeReading) -> Tensor:
    """Attributes of generated samples, ``long B,K`` in the dataset's attribute order (-1 = unread),
    on the samples' device: captions through ``reading``'s parser, a label as the first attribute,
    everything else through its judge."""
    names = list(spec["attribute_names"])
    values = samples[target]
    if target == "text":
        return reading.read_captions(tokenizer.decode(values.cpu()), names).to(values.device)
    out = torch.full((values.shape[0], len(names)), -1, dtype=torch.long, device=values.device)
    if target == "label":
        out[:, 0] = values
        return out
    judge = judges[target]
    out[:, judge.columns] = judge.predict(values).to(values.device)
    return out


class AttributeAgreement(Metric):
    """Share of samples whose read attributes equal the conditioning ones, per attribute and all at
    once (sums as states, so DDP processes add up their shares)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_attributes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.zeros(num_attributes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("all_correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, read: Tensor, truth: Tensor) -> None:
        """``read, truth: long B,K`` over the compared attributes."""
        correct = read == truth
        self.correct += correct.sum(0)
        self.all_correct += correct.all(1).sum()
        self.total += correct.shape[0]

    def compute(self) -> dict[str, Tensor]:
        total = self.total.clamp_min(1).double()
        return {"accuracy": self.all_correct / total, "per_attribute": self.correct / total, "samples": self.total}
