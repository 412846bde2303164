"""Judges: classifiers trained once on a dataset's *real training data*, then used to read the
attributes of generated samples (conditional accuracy, cross-modal coherence) and to give
penultimate features for an offline Fréchet distance.

A judge is never trained on generated data or on evaluation splits. It is cached under
``$MMGEN_CACHE`` (default ``~/.cache/mmgen_lightning``) keyed by the dataset's configuration,
the modality, the judge's seed and :data:`JUDGE_VERSION`, so it is trained once per configuration
and every report and dashboard uses the same judge.

Training renders the training split once into tensors (at most ``max_items`` items; audio goes
through the fixed log-mel frontend once), then runs a few hundred steps of AdamW with a one-cycle
schedule; images and videos are shifted by up to one (videos two) pixels per sample, so the judge
reads content rather than exact pixel positions (``benchmarks/judges.py`` measures training time
and held-out accuracy).

Which attributes a judge of each modality reads is the data's to say (``datamodules/attributes.py``);
the networks are built from layers frozen for judges (``metrics/judge_layers.py``), so a change to a
model layer never changes a cached judge.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mmgen_lightning.datamodules.attributes import describe
from mmgen_lightning.metrics.judge_layers import AudioEncoder, FrameSequenceEncoder, ImageEncoder, LogMel
from mmgen_lightning.modalities import JUDGEABLE, get_modality, random_shift

FEATURE_DIM = 128
#: part of the cache key: bump it whenever the judge architecture or its training changes
JUDGE_VERSION = 5
#: datamodule arguments that change what is loaded, not what the data is
_NOT_DATA = ("modalities", "batch_size", "num_workers", "max_text_length", "tokenizer_path")


@dataclass(frozen=True)
class Recipe:
    """How a judge of one modality is trained."""

    steps: int
    max_items: int
    lr: float = 3e-3
    batch_size: int = 64
    max_shift: int = 1  # pixels, images and videos only


RECIPES = {
    "image": Recipe(steps=450, max_items=3_000),
    "audio": Recipe(steps=300, max_items=3_000),
    "video": Recipe(steps=600, max_items=3_000, max_shift=2),
}


def cache_dir() -> Path:
    return Path(os.environ.get("MMGEN_CACHE", Path.home() / ".cache" / "mmgen_lightning"))


def judged_attributes(datamodule, modality: str) -> tuple[str, ...]:
    """Attributes a judge of ``modality`` reads on this data (the datamodule's ``AttributeReading``);
    ``()`` when there is no judge for it."""
    return tuple(describe(datamodule).judged.get(modality, ()))


def _image_network(spec: Any) -> tuple[nn.Module, nn.Module]:
    # narrower for larger images, so every judge trains in about the same time
    width = max(8, 512 // spec["image_size"])
    return nn.Identity(), ImageEncoder(spec.get("image_channels", 1), spec["image_size"], FEATURE_DIM, width=width)


def _audio_network(spec: Any) -> tuple[nn.Module, nn.Module]:
    return LogMel(spec["sample_rate"], spec["audio_length"], n_mels=64), AudioEncoder(64, FEATURE_DIM, width=32)


def _video_network(spec: Any) -> tuple[nn.Module, nn.Module]:
    size = get_modality("video").size(spec)
    return nn.Identity(), FrameSequenceEncoder(spec.get("image_channels", 1), spec["num_frames"], size, FEATURE_DIM,
                                               width=max(8, 256 // size))


#: ``(frontend, backbone)`` of a judge per modality (``JUDGEABLE``): the fixed frontend runs once
#: before training, the backbone gives the ``B,128`` features the heads read
NETWORKS = {"image": _image_network, "audio": _audio_network, "video": _video_network}


class Judge(nn.Module):
    """A classifier of one modality with one head per judged attribute.

    Args:
        modality: ``image``, ``audio`` or ``video``.
        spec: the datamodule's ``data_spec``.
        attributes: judged attribute names (columns of the batch's ``attributes``).
    """

    def __init__(self, modality: str, spec: dict[str, Any], attributes: tuple[str, ...]) -> None:
        super().__init__()
        self.modality, self.attributes = modality, tuple(attributes)
        names = list(spec["attribute_names"])
        unknown = [a for a in self.attributes if a not in names]
        if unknown or not self.attributes:
            raise ValueError(f"judge attributes {list(self.attributes)}: give some of {names}")
        self.columns = [names.index(a) for a in self.attributes]
        sizes = [spec["attribute_sizes"][c] for c in self.columns]
        if modality not in NETWORKS:
            raise ValueError(f"judge modality: unknown {modality!r}; allowed: {', '.join(NETWORKS)}")
        self.frontend, self.backbone = NETWORKS[modality](spec)
        self.heads = nn.ModuleList(nn.Linear(FEATURE_DIM, size) for size in sizes)
        # root mean square of the hidden features on the real training data, set by train_judge:
        # features() divides by it, so distances do not depend on how large a judge's activations grew
        self.register_buffer("feature_scale", torch.ones(()))
        self.requires_grad_(False)  # a judge is a fixed measuring instrument outside train_judge

    @property
    def num_features(self) -> int:
        return FEATURE_DIM

    def hidden(self, x: Tensor) -> Tensor:
        """Penultimate activations ``B,128``, what the heads read."""
        return self.hidden_of_frontend(self.frontend(x.float()))

    def hidden_of_frontend(self, inputs: Tensor) -> Tensor:
        return F.silu(self.backbone(inputs))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``B,128`` for distribution metrics, with unit root mean square on the
        real training data (so FID/KID have the same scale for every judge)."""
        return self.hidden(x) / self.feature_scale

    def forward(self, x: Tensor) -> list[Tensor]:
        """Logits ``B,size_k`` of every judged attribute ``k``."""
        hidden = self.hidden(x)
        return [head(hidden) for head in self.heads]

    @torch.no_grad()
    def features_and_logits(self, x: Tensor, batch_size: int = 256) -> tuple[Tensor, list[Tensor]]:
        """Features ``B,128`` and every head's logits, in evaluation mode, in chunks."""
        was_training = self.training
        self.eval()
        try:
            hidden = torch.cat([self.hidden(chunk.to(self.device)) for chunk in x.split(batch_size)])
            return hidden / self.feature_scale, [head(hidden) for head in self.heads]
        finally:
            self.train(was_training)

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """Predicted attributes ``long B,len(attributes)`` (on the judge's device)."""
        _, logits = self.features_and_logits(x, batch_size)
        return torch.stack([out.argmax(-1) for out in logits], dim=1)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def targets(self, attributes: Tensor) -> Tensor:
        return attributes[:, self.columns]


def training_data(datamodule, modality: str, max_items: int) -> tuple[Tensor, Tensor]:
    """The first ``max_items`` items of the training split: ``(modality tensor, attributes)``."""
    dataset = datamodule.dataset("train")
    count = min(len(dataset), max_items)
    inputs, attributes = [], []
    for batch in DataLoader(torch.utils.data.Subset(dataset, range(count)), batch_size=256):
        if modality not in batch:
            raise ValueError(f"the training split carries no {modality!r}; the judge needs real {modality} data")
        inputs.append(batch[modality])
        attributes.append(batch["attributes"])
    return torch.cat(inputs), torch.cat(attributes)


def _for_modality(datamodule, modality: str):
    """A copy of the datamodule that renders only ``modality`` (rendering the rest would be wasted)."""
    hparams = dict(getattr(datamodule, "hparams", {}) or {})
    if list(getattr(datamodule, "modalities", [])) == [modality] or "modalities" not in hparams:
        return datamodule
    try:
        return type(datamodule)(**{**{k: v for k, v in hparams.items() if not k.startswith("_")},
                                   "modalities": [modality]})
    except (TypeError, ValueError):
        return datamodule


def train_judge(datamodule, modality: str, seed: int = 0, recipe: Recipe | None = None) -> Judge:
    """Train a judge on the datamodule's training split (real data only). Leaves the global RNG as it was."""
    spec = datamodule.data_spec
    attributes = judged_attributes(datamodule, modality)
    if not attributes:
        raise ValueError(f"no judge for {modality!r} on dataset {spec['dataset']!r}: its datamodule's "
                         "attribute_reading (datamodules/attributes.py) names no attribute a judge of it reads")
    recipe = recipe or RECIPES[modality]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        judge = Judge(modality, spec, attributes)
        x, truth = training_data(_for_modality(datamodule, modality), modality, recipe.max_items)
        with torch.no_grad():  # the frontend is fixed: apply it once, not every epoch
            inputs = torch.cat([judge.frontend(chunk.float()) for chunk in x.split(512)])
        targets = judge.targets(truth)
        judge.requires_grad_(True)
        optimizer = torch.optim.AdamW(judge.parameters(), lr=recipe.lr, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr, total_steps=recipe.steps)
        judge.train()
        shift = recipe.max_shift if get_modality(modality).pixels else 0
        batch_size = min(recipe.batch_size, len(inputs))
        steps_per_epoch = len(inputs) // batch_size
        for step in range(recipe.steps):
            if step % steps_per_epoch == 0:
                order = torch.randperm(len(inputs), generator=generator)[:steps_per_epoch * batch_size]
                order = order.view(steps_per_epoch, batch_size)
            rows = order[step % steps_per_epoch]
            hidden = judge.hidden_of_frontend(random_shift(inputs[rows], shift, generator))
            loss = sum(F.cross_entropy(head(hidden), targets[rows, i]) for i, head in enumerate(judge.heads))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        judge.eval()
        with torch.no_grad():
            hidden = torch.cat([judge.hidden_of_frontend(chunk) for chunk in inputs.split(512)])
            judge.feature_scale.fill_(hidden.square().mean().sqrt().item())
    judge.requires_grad_(False)
    return judge


def judge_key(datamodule, modality: str, seed: int) -> str:
    """``<dataset>-<modality>-<hash>``: the hash covers the data's configuration, the seeds and the version."""
    spec = {k: v for k, v in datamodule.data_spec.items() if k not in ("modalities", "vocab_size", "max_text_length")}
    config = {k: v for k, v in (getattr(datamodule, "hparams", None) or {}).items()
              if k not in _NOT_DATA and not k.startswith("_")}
    blob = json.dumps({"spec": spec, "config": config, "class": type(datamodule).__qualname__, "modality": modality,
                       "seed": seed, "data_seed": getattr(datamodule, "seed", None), "version": JUDGE_VERSION},
                      sort_keys=True, default=str)
    return f"{spec['dataset']}-{modality}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def judge_path(datamodule, modality: str, seed: int = 0, cache: str | Path | None = None) -> Path:
    return Path(cache or cache_dir()) / "judges" / f"{judge_key(datamodule, modality, seed)}.pt"


def get_judge(datamodule, modality: str, seed: int = 0, cache: str | Path | None = None) -> Judge:
    """The cached judge of ``modality`` for this datamodule's configuration, trained if absent."""
    path = judge_path(datamodule, modality, seed, cache)
    if path.is_file():
        judge = Judge(modality, datamodule.data_spec, judged_attributes(datamodule, modality))
        try:
            judge.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return judge.eval()
        except (RuntimeError, KeyError, EOFError) as error:  # written by another version of this file
            warnings.warn(f"{path}: cached judge does not fit the current judge ({str(error)[:200]}); retraining it")
    judge = train_judge(datamodule, modality, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(judge.state_dict(), temporary)
    temporary.replace(path)  # atomic: a crashed or concurrent run never leaves a half-written judge
    return judge


@torch.no_grad()
def judge_accuracy(judge: Judge, samples: Tensor, attributes: Tensor) -> Tensor:
    """Per-attribute accuracy of the judge's reading of ``samples`` against ``attributes`` (``B,K`` full)."""
    predicted = judge.predict(samples).cpu()
    return (predicted == judge.targets(attributes.cpu())).float().mean(0)


def held_out_accuracy(judge: Judge, datamodule, split: str = "test") -> dict[str, float]:
    """Accuracy of each judged attribute, and of all at once, on a real split the judge never saw."""
    x, truth = split_data(datamodule, judge.modality, split)
    correct = judge.predict(x).cpu() == judge.targets(truth)
    result = {name: correct[:, i].float().mean().item() for i, name in enumerate(judge.attributes)}
    result["all"] = correct.all(1).float().mean().item()
    result["samples"] = len(truth)
    return result


def split_data(datamodule, modality: str, split: str) -> tuple[Tensor, Tensor]:
    """All of ``split`` as ``(modality tensor, attributes)``."""
    source = _for_modality(datamodule, modality)
    inputs, attributes = [], []
    for batch in DataLoader(source.dataset(split), batch_size=256):
        inputs.append(batch[modality])
        attributes.append(batch["attributes"])
    return torch.cat(inputs), torch.cat(attributes)
