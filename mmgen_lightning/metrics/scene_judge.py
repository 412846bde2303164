"""The scenes judge: reads the objects of a 64 px scene image, each as shape, colour, size and centroid.

Written, and trained, from real renders only (``datamodules/scenes.py``):

1. objects are the connected regions (``scipy.ndimage.label``) of pixels whose brightest channel
   exceeds ``FOREGROUND``; specks under ``MIN_AREA`` pixels are noise. A region whose pixels split
   between two colours (each ``SPLIT_SHARE`` of it or more) is two touching objects, cut by colour;
2. colour: the palette colour (Shapes' ``COLOR_RGB``) nearest to the region's chroma (each pixel's
   RGB over its brightest channel, so brightness does not matter), weighted by brightness;
3. centroid: the brightness-weighted mean of the region's pixels, in canvas units;
4. shape and size: a small CNN reads a ``CROP`` pixel window of the region's brightness around its
   centroid (normalised by its own peak; other regions blanked). It is trained on the regions of the
   training split's renders, degraded as generated samples are soft (:func:`degrade`: blur, noise,
   colour shift), so it reads them too; ``benchmarks/scenes_judge.py`` measures both.

Like the attribute judges (``metrics/judges.py``) it is trained once per data configuration and
cached under ``$MMGEN_CACHE/judges``, keyed by the data's seed, the recipe and ``SCENE_JUDGE_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from mmgen_lightning.datamodules.scenes import IMAGE_SIZE, SceneObject, render_scene
from mmgen_lightning.datamodules.shapes import COLOR_RGB, SHAPES, SIZES
from mmgen_lightning.metrics.judges import cache_dir

#: part of the cache key: bump it whenever the reading or the network's training changes
SCENE_JUDGE_VERSION = 1
#: brightest channel, in [0, 1], above which a pixel belongs to an object: well under the dimmest
#: object's 0.8, and over the 2 px gaps between objects once blur has spread light into them
FOREGROUND = 0.45
#: pixels: a smaller region is noise (the smallest object covers about 45)
MIN_AREA = 8
#: share of a region's brightness from which a second colour makes it two objects
SPLIT_SHARE = 0.3
#: side in pixels of the window the shape network reads (a large triangle spans 22)
CROP = 28
#: each palette colour divided by its brightest channel: what chroma is compared with
PALETTE_CHROMA = COLOR_RGB / COLOR_RGB.max(axis=1, keepdims=True)
_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class SceneJudgeRecipe:
    """How the shape network is trained: ``max_items`` training renders, each chunk of
    ``chunk`` degraded with its own severity up to ``max_blur``, ``max_noise``, ``max_color_shift``."""

    max_items: int = 1000
    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    chunk: int = 50
    max_blur: float = 1.2
    max_noise: float = 0.1
    max_color_shift: float = 0.15


@dataclass(frozen=True)
class Region:
    """One object found in an image: its colour index, centroid (canvas units) and the ``CROP,CROP``
    brightness window the shape network reads."""

    color: int
    x: float
    y: float
    crop: np.ndarray


def degrade(images: Tensor, blur: float = 0.0, noise: float = 0.0, color_shift: float = 0.0,
            generator: torch.Generator | None = None) -> Tensor:
    """``images: B,3,H,W`` in [-1, 1], softened as generated samples are: a Gaussian blur of standard
    deviation ``blur`` pixels, each channel's brightness scaled by its own factor in
    ``1 +- color_shift`` per image, and Gaussian noise of standard deviation ``noise`` (in [-1, 1]
    units); clamped back to [-1, 1]."""
    out = images.float()
    if blur > 0:
        out = gaussian_blur(out, kernel_size=2 * int(np.ceil(3 * blur)) + 1, sigma=blur)
    if color_shift > 0:
        gains = 1 + color_shift * (2 * torch.rand(out.shape[0], out.shape[1], 1, 1, generator=generator) - 1)
        out = (out + 1) * gains - 1
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=generator)
    return out.clamp(-1.0, 1.0)


def find_regions(image: np.ndarray) -> list[Region]:
    """The objects of one ``3,H,W`` image in [-1, 1] (see the module docstring, steps 1-3)."""
    rgb = np.clip((image.astype(np.float32) + 1) / 2, 0.0, 1.0)
    value = rgb.max(axis=0)
    foreground = value > FOREGROUND
    chroma = rgb[:, foreground] / value[foreground]  # 3,N
    nearest = np.zeros(value.shape, dtype=np.int64)  # H,W palette index, on the foreground
    nearest[foreground] = ((chroma[None] - PALETTE_CHROMA[:, :, None]) ** 2).sum(1).argmin(0)
    labels, count = ndimage.label(foreground)
    colors = {}
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[window] == index
        weights = np.bincount(nearest[window][mask], value[window][mask], minlength=len(PALETTE_CHROMA))
        shares = weights / weights.sum()
        if np.sort(shares)[-2] < SPLIT_SHARE:
            colors[index] = int(shares.argmax())
            continue
        # touching objects of different colours: each colour's connected pieces become objects
        labels[window][mask] = 0
        for color in np.flatnonzero(shares >= SPLIT_SHARE):
            parts, part_count = ndimage.label(mask & (nearest[window] == color))
            for part in range(1, part_count + 1):
                count += 1
                labels[window][parts == part] = count
                colors[count] = int(color)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    ids = [i for i in colors if areas[i] >= MIN_AREA]
    if not ids:
        return []
    centres = ndimage.center_of_mass(value, labels, ids)  # (row, column) of each object
    # windows of the brightness around each centroid, in a map padded by half a window
    half = CROP // 2
    padded_value, padded_labels = np.pad(value, half), np.pad(labels, half)
    size = value.shape[0]
    regions = []
    for index, (row, column) in zip(ids, centres):
        top, left = int(round(row + 0.5)), int(round(column + 0.5))  # pixel centres are at +0.5
        mask = padded_labels[top:top + CROP, left:left + CROP] == index
        # the faint anti-aliased rim lies outside the thresholded mask: keep one more pixel around it
        window = ndimage.binary_dilation(mask, _CROSS) * padded_value[top:top + CROP, left:left + CROP]
        inside, rank = window[mask], int(0.9 * (mask.sum() - 1))
        peak = max(float(np.partition(inside, rank)[rank]), 1e-6)  # the 90th percentile: robust to noise
        regions.append(Region(colors[index], (column + 0.5) / size, (row + 0.5) / size,
                              (window / peak).astype(np.float32)))
    return regions


class SceneJudge(nn.Module):
    """Reads the objects of scene images: regions by brightness and colour, then a small CNN on each
    region's window for its shape and size (``len(SHAPES) + len(SIZES)`` logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.SiLU(), nn.Flatten(),
            nn.Linear(32 * (CROP // 4) ** 2, 32), nn.SiLU(), nn.Linear(32, len(SHAPES) + len(SIZES)))
        self.requires_grad_(False)  # a fixed measuring instrument outside train_scene_judge

    def forward(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        """``crops: N,CROP,CROP`` -> shape logits ``N,4`` and size logits ``N,2``."""
        logits = self.network(crops[:, None].float())
        return logits[:, :len(SHAPES)], logits[:, len(SHAPES):]

    @torch.no_grad()
    def read(self, images: Tensor) -> list[tuple[SceneObject, ...]]:
        """``images: B,3,64,64`` in [-1, 1] -> per image, the objects seen (in no particular order)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != IMAGE_SIZE:
            raise ValueError(f"images must be B,3,{IMAGE_SIZE},{IMAGE_SIZE}, got {tuple(images.shape)}")
        regions = [find_regions(image) for image in images.detach().float().cpu().numpy()]
        flat = [region for found in regions for region in found]
        if not flat:
            return [() for _ in regions]
        was_training = self.training
        self.eval()
        try:
            shape_logits, size_logits = self(torch.from_numpy(np.stack([r.crop for r in flat])))
        finally:
            self.train(was_training)
        shapes, sizes = shape_logits.argmax(1).tolist(), size_logits.argmax(1).tolist()
        out, start = [], 0
        for found in regions:
            out.append(tuple(SceneObject(shapes[start + i], r.color, sizes[start + i], r.x, r.y)
                             for i, r in enumerate(found)))
            start += len(found)
        return out


def training_regions(datamodule, recipe: SceneJudgeRecipe, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Crops ``N,CROP,CROP`` of the regions found in the first ``recipe.max_items`` training renders
    (degraded chunk by chunk), with the shape and size of the real object at each region's centroid
    (regions with none within a pixel and a half are left out)."""
    dataset = datamodule.dataset("train")
    count = min(len(dataset), recipe.max_items)
    crops, shapes, sizes = [], [], []
    for start in range(0, count, recipe.chunk):
        indices = range(start, min(start + recipe.chunk, count))
        scenes = [dataset.scene(i) for i in indices]
        images = torch.from_numpy(np.stack([render_scene(scene) for scene in scenes]))
        severity = torch.rand(3, generator=generator).tolist()
        if start % (2 * recipe.chunk):  # every other chunk as rendered, the rest degraded
            images = degrade(images, recipe.max_blur * severity[0], recipe.max_noise * severity[1],
                             recipe.max_color_shift * severity[2], generator)
        for scene, image in zip(scenes, images.numpy()):
            for region in find_regions(image):
                distances = [np.hypot(o.x - region.x, o.y - region.y) for o in scene.objects]
                nearest = int(np.argmin(distances))
                if distances[nearest] * IMAGE_SIZE <= 1.5:
                    crops.append(region.crop)
                    shapes.append(scene.objects[nearest].shape)
                    sizes.append(scene.objects[nearest].size)
    return torch.from_numpy(np.stack(crops)), torch.tensor(shapes), torch.tensor(sizes)


def train_scene_judge(datamodule, seed: int = 0, recipe: SceneJudgeRecipe | None = None) -> SceneJudge:
    """Train the shape network on the datamodule's training renders (real data only). Leaves the
    global RNG as it was."""
    recipe = recipe or SceneJudgeRecipe()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        judge = SceneJudge()
        crops, shapes, sizes = training_regions(datamodule, recipe, generator)
        judge.requires_grad_(True)
        judge.train()
        optimizer = torch.optim.AdamW(judge.parameters(), lr=recipe.lr, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr, total_steps=recipe.steps)
        for _ in range(recipe.steps):
            rows = torch.randint(0, len(crops), (recipe.batch_size,), generator=generator)
            shape_logits, size_logits = judge(crops[rows])
            loss = F.cross_entropy(shape_logits, shapes[rows]) + F.cross_entropy(size_logits, sizes[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        judge.eval()
    judge.requires_grad_(False)
    return judge


def scene_judge_path(datamodule, seed: int = 0, recipe: SceneJudgeRecipe | None = None,
                     cache: str | Path | None = None) -> Path:
    """``$MMGEN_CACHE/judges/scenes-objects-<hash>.pt``: the hash covers what the training renders
    depend on (the data seed, how many there are), the judge seed, the recipe and the version."""
    recipe = recipe or SceneJudgeRecipe()
    blob = json.dumps({"data_seed": datamodule.seed, "items": min(datamodule.split_sizes["train"], recipe.max_items),
                       "seed": seed, "recipe": asdict(recipe), "version": SCENE_JUDGE_VERSION}, sort_keys=True)
    return Path(cache or cache_dir()) / "judges" / f"scenes-objects-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.pt"


def get_scene_judge(datamodule, seed: int = 0, recipe: SceneJudgeRecipe | None = None,
                    cache: str | Path | None = None) -> SceneJudge:
    """The cached scenes judge for this data, trained if absent."""
    path = scene_judge_path(datamodule, seed, recipe, cache)
    if path.is_file():
        judge = SceneJudge()
        try:
            judge.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return judge.eval()
        except (RuntimeError, KeyError, EOFError) as error:  # written by another version of this file
            warnings.warn(f"{path}: cached scenes judge does not fit the current one ({str(error)[:200]}); "
                          "retraining it")
    judge = train_scene_judge(datamodule, seed, recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(judge.state_dict(), temporary)
    temporary.replace(path)  # atomic: a crashed or concurrent run never leaves a half-written judge
    return judge
