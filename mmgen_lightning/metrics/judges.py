"""Judges: classifiers trained once on a dataset's *real training data*, then used to read the
attributes of generated samples (conditional accuracy, cross-modal coherence) and to give
penultimate features for an offline Fréchet distance.

A judge is never trained on generated data or on evaluation splits. It is cached under
``$MMGEN_CACHE`` (default ``~/.cache/mmgen_lightning``) keyed by dataset, modality, data sizes
and seed, so it is trained once per configuration and every report uses the same judge.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mmgen_lightning.models.layers.audio import AudioEncoder, LogMel
from mmgen_lightning.models.layers.image import ImageEncoder
from mmgen_lightning.models.layers.video import VideoEncoder

#: attributes each modality makes observable, per built-in dataset
JUDGED_ATTRIBUTES: dict[tuple[str, str], tuple[str, ...]] = {
    ("digits", "image"): ("digit",),
    ("digits", "audio"): ("digit",),
    ("digits", "video"): ("digit", "direction"),
    ("shapes", "image"): ("shape", "color", "size", "position"),
    ("shapes", "audio"): ("shape", "color", "size", "position", "motion"),
    ("shapes", "video"): ("shape", "color", "size", "position", "motion"),
}
FEATURE_DIM = 128
#: part of the cache key: bump it whenever the judge architecture or its training changes
JUDGE_VERSION = 2


def cache_dir() -> Path:
    return Path(os.environ.get("MMGEN_CACHE", Path.home() / ".cache" / "mmgen_lightning"))


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
        self.columns = [names.index(a) for a in attributes]
        sizes = [spec["attribute_sizes"][c] for c in self.columns]
        channels = spec["image_channels"]
        if modality == "image":
            self.frontend: nn.Module = nn.Identity()
            self.backbone: nn.Module = ImageEncoder(channels, spec["image_size"], FEATURE_DIM, width=32)
        elif modality == "audio":
            self.frontend = LogMel(spec["sample_rate"], spec["audio_length"], n_mels=64)
            self.backbone = AudioEncoder(64, FEATURE_DIM, width=32)
        elif modality == "video":
            self.frontend = nn.Identity()
            size = spec.get("video_size", spec["image_size"])
            self.backbone = VideoEncoder(channels, spec["num_frames"], size, FEATURE_DIM, width=16)
        else:
            raise ValueError(f"judge modality: unknown {modality!r}; allowed: image, audio, video")
        self.heads = nn.ModuleList(nn.Linear(FEATURE_DIM, size) for size in sizes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``B,128`` (for Fréchet distances)."""
        return F.silu(self.backbone(self.frontend(x.float())))

    def forward(self, x: Tensor) -> list[Tensor]:
        hidden = self.features(x)
        return [head(hidden) for head in self.heads]

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """Predicted attributes ``long B,len(attributes)``."""
        self.eval()
        outs = [torch.stack([logits.argmax(-1) for logits in self(chunk)], dim=1) for chunk in x.split(batch_size)]
        return torch.cat(outs)

    def targets(self, attributes: Tensor) -> Tensor:
        return attributes[:, self.columns]


def _augment(x: Tensor, modality: str) -> Tensor:
    """Small random translations, so the judge reads content rather than exact pixel positions."""
    if modality != "image":
        return x
    shifts = torch.randint(-1, 2, (2,)).tolist()
    return torch.roll(x, shifts=shifts, dims=(-2, -1))


def train_judge(datamodule, modality: str, epochs: int = 15, lr: float = 2e-3, seed: int = 0) -> Judge:
    """Train a judge on the datamodule's training split (real data only)."""
    spec = datamodule.data_spec
    key = (spec["dataset"], modality)
    if key not in JUDGED_ATTRIBUTES:
        raise ValueError(f"no judge for {modality!r} on dataset {spec['dataset']!r}; "
                         f"known: {sorted(JUDGED_ATTRIBUTES)}")
    torch.manual_seed(seed)
    judge = Judge(modality, spec, JUDGED_ATTRIBUTES[key])
    optimizer = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    loader = DataLoader(datamodule.dataset("train"), batch_size=64, shuffle=True, drop_last=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * len(loader))
    judge.train()
    for _ in range(epochs):
        for batch in loader:
            logits = judge(_augment(batch[modality], modality))
            targets = judge.targets(batch["attributes"])
            loss = sum(F.cross_entropy(out, targets[:, i]) for i, out in enumerate(logits))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return judge.eval()


def judge_key(datamodule, modality: str, seed: int) -> str:
    spec = {k: v for k, v in datamodule.data_spec.items() if k not in ("modalities", "vocab_size", "max_text_length")}
    blob = json.dumps({"spec": spec, "modality": modality, "seed": seed, "data_seed": datamodule.seed,
                       "version": JUDGE_VERSION}, sort_keys=True)
    return f"{spec['dataset']}-{modality}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def get_judge(datamodule, modality: str, seed: int = 0, cache: Path | None = None) -> Judge:
    """The cached judge of ``modality`` for this datamodule's configuration, trained if absent."""
    path = Path(cache or cache_dir()) / "judges" / f"{judge_key(datamodule, modality, seed)}.pt"
    spec = datamodule.data_spec
    if path.is_file():
        judge = Judge(modality, spec, JUDGED_ATTRIBUTES[(spec["dataset"], modality)])
        judge.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return judge.eval()
    judge = train_judge(datamodule, modality, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(judge.state_dict(), temporary)
    temporary.replace(path)  # atomic: a crashed run never leaves a half-written judge
    return judge


@torch.no_grad()
def judge_accuracy(judge: Judge, samples: Tensor, attributes: Tensor) -> Tensor:
    """Per-attribute accuracy of the judge's reading of ``samples`` against ``attributes`` (``B,K`` full)."""
    predicted = judge.predict(samples)
    return (predicted == judge.targets(attributes)).float().mean(0)
