"""Cross-modal coherence: does a sample generated from a condition show the condition's attributes?

For a direction ``sources -> target`` the compared attributes are those the target makes
observable and some source states (a digit image shows the digit but not a motion; a caption
states everything). Images, audio and video are read by a :class:`~mmgen_lightning.metrics.judges.Judge`;
captions by the dataset's own ``parse_caption``. On real data against itself, coherence equals the
judge's accuracy, which is the ceiling any model can be measured at; reports show it beside each
direction as ``real_data``.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from mmgen_lightning.batch import parse_direction
from mmgen_lightning.metrics.judges import Judge, judged_attributes


def observable(dataset: str, modality: str, attribute_names: list[str], modalities: list[str],
               datamodule=None) -> tuple[str, ...]:
    """Attributes that a sample of ``modality`` determines."""
    if modality == "text":
        names = list(attribute_names)
        if dataset == "digits" and "video" not in modalities:
            names = [n for n in names if n != "direction"]  # captions state the motion only for videos
        return tuple(names)
    if modality == "label":
        return tuple(attribute_names[:1])
    return judged_attributes(datamodule if datamodule is not None else {"dataset": dataset}, modality)


def compared_attributes(datamodule, direction: str) -> list[str]:
    """Attributes that ``direction`` can be scored on: observable in the target, stated by some source."""
    sources, target = parse_direction(direction)
    spec = datamodule.data_spec
    names, dataset, modalities = list(spec["attribute_names"]), spec["dataset"], spec["modalities"]
    stated = {n for s in sources for n in observable(dataset, s, names, modalities, datamodule)}
    return [n for n in observable(dataset, target, names, modalities, datamodule) if n in stated]


def parse_captions(dataset: str, texts: list[str], attribute_names: list[str]) -> Tensor:
    """Captions -> ``long B,K`` attributes via the dataset's ``parse_caption``; -1 where unstated."""
    parse = importlib.import_module(f"mmgen_lightning.datamodules.{dataset}").parse_caption
    rows = []
    for text in texts:
        parsed = parse(text) or {}
        rows.append([int(parsed.get(name, -1)) for name in attribute_names])
    return torch.tensor(rows, dtype=torch.long).view(len(texts), len(attribute_names))


def read_attributes(samples: dict[str, Tensor], target: str, spec: dict[str, Any], judges: dict[str, Judge],
                    tokenizer) -> Tensor:
    """Attributes of generated samples, ``long B,K`` in the dataset's attribute order (-1 = unread),
    on the samples' device."""
    names = list(spec["attribute_names"])
    values = samples[target]
    if target == "text":
        return parse_captions(spec["dataset"], tokenizer.decode(values.cpu()), names).to(values.device)
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


@torch.no_grad()
def coherence(model, datamodule, direction: str, judges: dict[str, Judge], split: str = "test",
              limit: int | None = None, batch_size: int = 256, **sampling: Any) -> dict[str, Any]:
    """Accuracy of ``direction`` on ``split``: per compared attribute and all of them at once, and the
    same reading of the real data (``real_data``, the ceiling). ``model`` may be
    :class:`~mmgen_lightning.metrics.evaluator.RealData` to score the data against itself."""
    from mmgen_lightning.metrics.evaluator import Evaluator

    if not compared_attributes(datamodule, direction):
        raise ValueError(f"direction {direction!r}: no attribute is observable on both sides")
    evaluator = Evaluator(datamodule, judges, split=split, num_samples=limit, batch_size=batch_size,
                          directions=[direction], quality=False, text=False, likelihood=False, sampling=sampling)
    return evaluator.run(model)["coherence"][0]
