"""Cross-modal coherence: does a sample generated from a condition show the condition's attributes?

For a direction ``sources -> target`` the compared attributes are those both sides make
observable (a digit image shows the digit but not a motion; a caption states everything).
Images, audio and video are read by a :class:`~mmgen_lightning.metrics.judges.Judge`; captions by
the dataset's own ``parse_caption``. On real data against itself, coherence equals the judge's
accuracy, which is the ceiling any model can be measured at.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate

from mmgen_lightning.batch import parse_direction
from mmgen_lightning.metrics.judges import JUDGED_ATTRIBUTES, Judge


def observable(dataset: str, modality: str, attribute_names: list[str], modalities: list[str]) -> tuple[str, ...]:
    """Attributes that a sample of ``modality`` determines."""
    if modality == "text":
        names = list(attribute_names)
        if dataset == "digits" and "video" not in modalities:
            names = [n for n in names if n != "direction"]  # captions state the motion only for videos
        return tuple(names)
    if modality == "label":
        return tuple(attribute_names[:1])
    return JUDGED_ATTRIBUTES.get((dataset, modality), ())


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
    """Attributes of generated samples, ``long B,K`` in the dataset's attribute order (-1 = unread)."""
    names = list(spec["attribute_names"])
    if target == "text":
        return parse_captions(spec["dataset"], tokenizer.decode(samples["text"].cpu()), names)
    if target == "label":
        out = torch.full((samples["label"].shape[0], len(names)), -1, dtype=torch.long)
        out[:, 0] = samples["label"].cpu()
        return out
    judge = judges[target]
    out = torch.full((samples[target].shape[0], len(names)), -1, dtype=torch.long)
    out[:, judge.columns] = judge.predict(samples[target].cpu())
    return out


@torch.no_grad()
def coherence(model, datamodule, direction: str, judges: dict[str, Judge], split: str = "test",
              limit: int | None = None, batch_size: int = 256, **sampling: Any) -> dict[str, Any]:
    """Accuracy of ``direction`` on ``split``: per compared attribute and all of them at once."""
    sources, target = parse_direction(direction)
    spec = datamodule.data_spec
    names = list(spec["attribute_names"])
    compared = [n for n in observable(spec["dataset"], target, names, spec["modalities"])
                if all(n in observable(spec["dataset"], s, names, spec["modalities"]) for s in sources)]
    if not compared:
        raise ValueError(f"direction {direction!r}: no attribute is observable on both sides")
    dataset = datamodule.dataset(split)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    keys = list(sources) + (["text_mask"] if "text" in sources else []) + ["attributes"]
    read, truth = [], []
    for start in range(0, count, batch_size):
        batch = default_collate([{k: dataset[i][k] for k in keys} for i in range(start, min(start + batch_size, count))])
        truth.append(batch.pop("attributes"))
        samples = model.generate(batch, num_samples=truth[-1].shape[0], to=target, **sampling)
        read.append(read_attributes(samples, target, spec, judges, model.tokenizer))
    read_all, truth_all = torch.cat(read), torch.cat(truth)
    columns = [names.index(n) for n in compared]
    correct = read_all[:, columns] == truth_all[:, columns]
    result = {"direction": direction, "samples": count, "attributes": compared,
              "accuracy": correct.all(1).float().mean().item()}
    result.update({f"accuracy_{n}": correct[:, i].float().mean().item() for i, n in enumerate(compared)})
    return result
